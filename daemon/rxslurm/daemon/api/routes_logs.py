"""What a project's members may read of its past: the container's logs and the project's history."""

from __future__ import annotations

import asyncio

from aiohttp import web

from rxslurm.daemon.api.app import json_response
from rxslurm.daemon.api.context import daemon_of
from rxslurm.daemon.api.request_actor import actor_of
from rxslurm.daemon.containers.gpu_hours import project_gpu_hours
from rxslurm.daemon.containers.history import DEFAULT_LIMIT, MAX_LIMIT, project_history
from rxslurm.daemon.containers.job_logs import container_logs
from rxslurm.daemon.errors import BadRequest
from rxslurm.protocol import routes as route

routes = web.RouteTableDef()


def parse_number(label: str, text: str | None, *, least: int = 0) -> int | None:
    """A query parameter that must be a whole number of at least `least`, or absent."""
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise BadRequest(f"{label} must be a whole number")
    value = int(text)
    if value < least:
        raise BadRequest(f"{label} must be at least {least}")
    return value


def parse_flag(label: str, text: str | None) -> bool:
    """A query parameter that is 1 (true) or 0 (false), or absent (false)."""
    if text not in (None, "0", "1"):
        raise BadRequest(f"{label} must be 0 or 1")
    return text == "1"


@routes.get(route.PROJECT_LOGS)
async def logs(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    job_id = parse_number("job", request.query.get("job"), least=1)
    offset = parse_number("offset", request.query.get("offset"))
    # The read runs as the runtime user in a child process with its own deadline.
    answer = await asyncio.to_thread(
        container_logs,
        daemon.ledger,
        actor,
        request.match_info["name"],
        job_id=job_id,
        offset=offset,
        kept=daemon.config.containers.job_logs_kept,
        instance=request.query.get("instance"),
        service=parse_flag("service", request.query.get("service")),
    )
    return json_response(answer)


@routes.get(route.PROJECT_HISTORY)
async def history(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    limit = parse_number("limit", request.query.get("limit"), least=1)
    if limit is not None and limit > MAX_LIMIT:
        raise BadRequest(f"limit must be from 1 to {MAX_LIMIT}")
    events = await asyncio.to_thread(
        project_history,
        daemon.ledger,
        actor,
        request.match_info["name"],
        limit or DEFAULT_LIMIT,
    )
    # sacct through the Scheduler port; best effort, after the events' own authorization.
    used = await asyncio.to_thread(
        project_gpu_hours,
        daemon.ledger,
        daemon.containers.scheduler,
        actor,
        request.match_info["name"],
        daemon.containers.clock().timestamp(),
    )
    return json_response(
        {"project": request.match_info["name"], "events": events, "gpu_usage": used}
    )
