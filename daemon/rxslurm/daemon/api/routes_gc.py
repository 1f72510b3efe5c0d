"""Garbage collection: in the caller's own projects, and (admin) in the whole deployment."""

from __future__ import annotations

from functools import partial
from typing import Any

from aiohttp import web

from rxslurm.daemon.api.app import json_response, read_json
from rxslurm.daemon.api.context import daemon_of
from rxslurm.daemon.api.request_actor import actor_of, admin_actor
from rxslurm.daemon.containers.gc import DEFAULT_OLDER_THAN_S
from rxslurm.daemon.errors import BadRequest
from rxslurm.daemon.slow_work import run_slow
from rxslurm.protocol import routes as route

routes = web.RouteTableDef()

FIELDS = ("dry_run", "older_than_s")
# A century: more is a typing slip, not an age.
MAX_OLDER_THAN_S = 100 * 365 * 86400


def parse_gc_body(body: dict[str, Any]) -> tuple[bool, int]:
    """(dry_run, older_than_s) from a request body; BadRequest with the reason otherwise."""
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise BadRequest("dry_run is true or false")
    older = body.get("older_than_s", DEFAULT_OLDER_THAN_S)
    if isinstance(older, bool) or not isinstance(older, int) or not 0 <= older <= MAX_OLDER_THAN_S:
        raise BadRequest(f"older_than_s is a whole number of seconds, 0 to {MAX_OLDER_THAN_S}")
    return dry_run, older


@routes.post(route.GC)
async def own_gc(request: web.Request) -> web.Response:
    actor = await actor_of(request)
    dry_run, older = parse_gc_body(await read_json(request, fields=FIELDS))
    daemon = daemon_of(request)
    # Removals may take long (a big quarantined folder, a slow user script): slow work's pool.
    collect = partial(daemon.gc.collect, deployment=False, dry_run=dry_run, older_than_s=older)
    answer = await run_slow(collect, actor)
    return json_response(answer)


@routes.post(route.ADMIN_GC)
async def deployment_gc(request: web.Request) -> web.Response:
    actor = await admin_actor(request)
    dry_run, older = parse_gc_body(await read_json(request, fields=FIELDS))
    daemon = daemon_of(request)
    # Removals may take long (a big quarantined folder, a slow user script): slow work's pool.
    collect = partial(daemon.gc.collect, deployment=True, dry_run=dry_run, older_than_s=older)
    answer = await run_slow(collect, actor)
    return json_response(answer)
