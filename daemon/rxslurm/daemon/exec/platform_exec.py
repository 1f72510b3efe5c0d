"""Exec for the research platform: a command run AS A MEMBER, its output streamed in frames.

`POST /v1/projects/NAME/exec` on the platform's door (api/platform_door.py: the token, and
X-RX-User naming the member). The member's role decides, as for `rxctl exec` (the `exec` action;
a refusal is an ordinary 4xx before anything streams). Then rxd runs the same Session as for its
exec socket and the network door (exec/server.py), its channels those of exec/door.py, and writes
what comes out as records of protocol/exec_frames.py. A timeout ends the command the way a client
that hangs up does (SIGTERM to srun, which cancels the step; SIGKILL after 30 s); the final
record then says `timed_out`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable
from typing import Any

from aiohttp import web

from rxslurm.daemon.api.app import read_json
from rxslurm.daemon.api.context import daemon_of
from rxslurm.daemon.errors import BadRequest, Forbidden
from rxslurm.daemon.exec.door import EXEC_SERVER, Channels, in_own_thread, is_final
from rxslurm.daemon.exec.server import MAX_WAKE_TIMEOUT_S, ExecRequest, Session
from rxslurm.daemon.identity.actors import Actor, record_actor_event
from rxslurm.daemon.ledger.store import Ledger
from rxslurm.protocol import routes as route
from rxslurm.protocol.exec_frames import CONTENT_TYPE, control, frame
from rxslurm.protocol.exec_wire import CONTROL, ProtocolError, decode

log = logging.getLogger("rxslurm.exec")

FIELDS = ("argv", "cwd", "wake", "timeout", "stdin")
# How soon a platform that hung up is noticed while its command writes nothing (aiohttp does not
# cancel a handler whose client left; a write to it fails, so output is noticed at once).
HANG_UP_CHECK_S = 1.0
# What the platform may feed a command's stdin in one request.
MAX_STDIN = 1024 * 1024


def check_timeout(timeout: Any) -> float | None:
    """A request's `timeout`: seconds above 0, at most a year, or None (no limit)."""
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or not 0 < timeout <= MAX_WAKE_TIMEOUT_S
    ):
        raise BadRequest(
            f"timeout must be a number of seconds above 0, at most {MAX_WAKE_TIMEOUT_S}"
        )
    return timeout


def exec_request(project: str, body: dict[str, Any]) -> tuple[ExecRequest, dict[str, Any], bytes]:
    """The session's request (the exec protocol's fields), checked as the exec socket checks
    them, and the stdin to feed; BadRequest for anything else."""
    timeout = check_timeout(body.get("timeout"))
    stdin = body.get("stdin", "")
    if not isinstance(stdin, str):
        raise BadRequest("stdin must be a string")
    try:
        data = stdin.encode()
    except UnicodeEncodeError:
        raise BadRequest("stdin must be valid Unicode (no lone surrogates)") from None
    if len(data) > MAX_STDIN:
        raise BadRequest(f"stdin is longer than {MAX_STDIN} bytes")
    wire: dict[str, Any] = {k: body[k] for k in ("argv", "cwd", "wake") if k in body}
    # The whole request's limit bounds the wake's wait too (null: as long as it takes).
    wire.update(project=project, timeout=timeout)
    return ExecRequest.parse(wire), wire, data


def record_exec(
    ledger: Ledger, actor: Actor, project: str, event: str, detail: dict[str, Any]
) -> None:
    with ledger.transaction() as db:
        record_actor_event(db, actor, event, "project", project, {"door": "platform", **detail})


class FramedChannels(Channels):
    """A session's channels written as frame records into a streaming HTTP answer."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__(tty=False)
        self.response = response
        self.timed_out = False
        self.final: dict[str, Any] | None = None

    async def deliver(self, message: bytes) -> None:
        channel, payload = message[:1], message[1:]
        if channel == CONTROL:
            try:
                parsed = decode(payload)
            except ProtocolError:
                return
            if parsed.get("ready"):
                # Nothing of the platform's own needs the screen: the command may start.
                self.to_session({"go": True})
                return
            if is_final(payload):
                # The session's own wake wait shares the request's timeout: its giving up is one.
                if self.timed_out or parsed.get("code") == "timeout":
                    parsed["timed_out"] = True
                self.final = parsed
            data = control(parsed)
        else:
            data = frame(channel, payload)
        try:
            await self.response.write(data)
        except (ConnectionError, RuntimeError):
            self.hang_up()  # the platform left: the step ends as for any client that leaves
            raise

    def to_session(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            self.ctl.sendall(json.dumps(message).encode() + b"\n")

    def time_out(self) -> None:
        self.timed_out = True
        self.hang_up()

    async def feed_stdin(self, data: bytes) -> None:
        """All of `data`, then the end of stdin (the platform sends nothing after it)."""
        if data:
            await self.to_stdin(data)
            while self.stdin_buffer and not self.stdin_eof:
                ready = self.loop.create_future()
                self.loop.add_writer(self.stdin_w, ready.set_result, None)
                try:
                    await ready
                finally:
                    self.loop.remove_writer(self.stdin_w)
                await self.flush_stdin()
        await self.to_stdin(b"")


async def watch_connection(request: web.Request, hang_up: Callable[[], None]) -> None:
    """End the command when the platform's connection closes, as a client's hang-up does."""
    while True:
        await asyncio.sleep(HANG_UP_CHECK_S)
        transport = request.transport
        if transport is None or transport.is_closing():
            hang_up()
            return


async def platform_exec(request: web.Request) -> web.StreamResponse:
    actor: Actor = request["actor"]
    if actor.platform_user is None:
        raise Forbidden("the platform runs commands as a member: name one with X-RX-User")
    daemon = daemon_of(request)
    project = request.match_info["name"]
    body = await read_json(request, fields=FIELDS)
    parsed, wire, stdin = exec_request(project, body)
    # Refused here, before the answer streams: a 403 with its reason, as every route's.
    await asyncio.to_thread(daemon.containers.authorize_exec, actor, project)
    server = request.app[EXEC_SERVER]
    key = ("platform", actor.platform_user)
    if not server.cap.admit(key):
        raise web.HTTPTooManyRequests(text=server.cap.refusal())
    try:
        await asyncio.to_thread(
            record_exec,
            daemon.ledger,
            actor,
            project,
            "exec.started",
            {"argv": list(parsed.argv), "cwd": parsed.cwd, "timeout": parsed.timeout},
        )
        response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE})
        await response.prepare(request)
        channels = FramedChannels(response)
        session = Session(server, channels.session_conn)
        channels.start_reading()
        sender = asyncio.create_task(channels.send_loop())
        feeder = asyncio.create_task(channels.feed_stdin(stdin))
        watcher = asyncio.create_task(watch_connection(request, channels.hang_up))
        timer = None
        if parsed.timeout is not None:
            timer = asyncio.get_running_loop().call_later(parsed.timeout, channels.time_out)
        try:
            await in_own_thread(session.serve_for, actor, wire, channels.session_fds)
            await channels.wait_drained()
            await sender
            if channels.final is None:
                # The session ended without a word: it was waiting for the wake when the
                # timeout (or the platform's hang-up) ended its wait. The container keeps waking.
                channels.final = (
                    {
                        "error": f"the command did not start within its timeout; "
                        f"the container of {project} keeps waking",
                        "code": "timeout",
                        "timed_out": True,
                    }
                    if channels.timed_out
                    else {"error": "the platform left before the command started", "code": "gone"}
                )
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await response.write(control(channels.final))
        finally:
            if timer is not None:
                timer.cancel()
            feeder.cancel()
            watcher.cancel()
            sender.cancel()
            channels.close()
        final = channels.final
        await asyncio.to_thread(
            record_exec,
            daemon.ledger,
            actor,
            project,
            "exec.ended",
            {
                "exit": final.get("exit"),
                "error": final.get("code") if "error" in final else None,
                "timed_out": bool(final.get("timed_out")),
            },
        )
        with contextlib.suppress(ConnectionError, RuntimeError):
            await response.write_eof()
        return response
    finally:
        server.cap.release(key)


routes = [web.post(route.PROJECT_EXEC, platform_exec)]
