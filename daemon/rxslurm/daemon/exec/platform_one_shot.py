"""A one-shot command (`rxctl run-once`) for the research platform, in one streaming answer.

`POST /v1/projects/NAME/run-once/stream` on the platform's door, acting as the member X-RX-User
names: the body of `POST .../run-once` (command and resources) plus an optional `timeout` in
seconds. The member's role decides as for `rxctl run-once` (the `exec` action; a refusal, a bad
command or a quota is an ordinary 4xx before anything streams). Then the answer is records of
protocol/exec_frames.py, as a platform exec's: the job's output (stdout and stderr together, as
Slurm writes them to one file) on channel 1 as it comes, then one final control record:
`{"exit": N, "one_shot": ID}` when the command exited on its own, else `{"error": ..., "code":
"failed"|"cancelled"|"timeout", "one_shot": ID}` (`"timed_out": true` when rxd cancelled it at
its timeout). A platform that hangs up cancels the one-shot, as Ctrl-C of `rxctl run-once` does.
The submission and the cancel are audited by the one-shot service, as for any caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from aiohttp import web

from rxslurm.daemon.api.app import read_json
from rxslurm.daemon.api.context import daemon_of
from rxslurm.daemon.api.routes_one_shots import FIELDS as RUN_FIELDS
from rxslurm.daemon.containers.one_shots import ACTIVE, OneShotService
from rxslurm.daemon.errors import ApiError, Forbidden
from rxslurm.daemon.exec.platform_exec import check_timeout, watch_connection
from rxslurm.daemon.identity.actors import Actor
from rxslurm.protocol import routes as route
from rxslurm.protocol.exec_frames import CONTENT_TYPE, control, frame
from rxslurm.protocol.exec_wire import STDOUT

log = logging.getLogger("rxslurm.one_shots")

FIELDS = (*RUN_FIELDS, "timeout")
# How often the job's output is looked at while nothing new came (as `rxctl run-once` does).
POLL_S = 1.0


def final_record(answer: dict[str, Any], timed_out: bool) -> dict[str, Any]:
    """The last record for an ended one-shot's last answer."""
    one_shot = answer["id"]
    if timed_out:
        return {
            "error": f"one-shot {one_shot} ran past its timeout and was cancelled",
            "code": "timeout",
            "timed_out": True,
            "one_shot": one_shot,
        }
    if answer["state"] == "exited" and isinstance(answer.get("exit_code"), int):
        return {"exit": answer["exit_code"], "one_shot": one_shot}
    reason = answer.get("reason") or f"the one-shot is {answer['state']}"
    return {"error": str(reason), "code": str(answer["state"]), "one_shot": one_shot}


async def follow(
    service: OneShotService,
    actor: Actor,
    project: str,
    one_shot: int,
    response: web.StreamResponse,
    deadline: float | None,
    gone: asyncio.Event,
) -> dict[str, Any]:
    """Write the output as it comes until the one-shot ended and all of it was written; cancel
    it at the deadline or when the platform left. The final record."""
    offset, cancelled_for = 0, None
    while True:
        answer = await asyncio.to_thread(service.output, actor, project, one_shot, offset)
        text = str(answer["text"])
        if text:
            await response.write(frame(STDOUT, text.encode()))
        offset = int(answer["end"]) if answer["job_id"] is not None else 0
        caught_up = offset >= int(answer["size"])
        if answer["state"] not in ACTIVE and caught_up:
            return final_record(answer, cancelled_for == "timeout")
        late = deadline is not None and time.monotonic() >= deadline
        if cancelled_for is None and (late or gone.is_set()):
            cancelled_for = "timeout" if late else "gone"
            with contextlib.suppress(ApiError):  # it may have ended meanwhile
                await asyncio.to_thread(service.cancel, actor, project, one_shot)
        if gone.is_set() and cancelled_for == "gone":
            return {"error": "the platform left", "code": "gone", "one_shot": one_shot}
        if caught_up:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gone.wait(), POLL_S)


async def platform_run_once(request: web.Request) -> web.StreamResponse:
    actor: Actor = request["actor"]
    if actor.platform_user is None:
        raise Forbidden("the platform runs one-shots as a member: name one with X-RX-User")
    daemon = daemon_of(request)
    project = request.match_info["name"]
    body = await read_json(request, fields=FIELDS)
    timeout = check_timeout(body.pop("timeout", None))
    # Refused here, before the answer streams: a 4xx with its reason, as every route's.
    started = await asyncio.to_thread(daemon.one_shots.run, actor, project, body)
    one_shot = int(started["id"])
    deadline = None if timeout is None else time.monotonic() + timeout
    response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE})
    gone = asyncio.Event()
    watcher = asyncio.create_task(watch_connection(request, gone.set))
    try:
        await response.prepare(request)
        await response.write(control({"one_shot": one_shot, "job_id": started.get("job_id")}))
        final = await follow(daemon.one_shots, actor, project, one_shot, response, deadline, gone)
        await response.write(control(final))
        await response.write_eof()
    except (ConnectionError, RuntimeError):
        # The platform left while output was written: the job goes, as for a hang-up.
        with contextlib.suppress(ApiError):
            await asyncio.to_thread(daemon.one_shots.cancel, actor, project, one_shot)
    finally:
        watcher.cancel()
    return response


routes = [web.post(route.ONE_SHOT_STREAM, platform_run_once)]
