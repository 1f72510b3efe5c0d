"""One-shot commands (`rxctl run-once`, docs/api.md): thin handlers over ``OneShotService``
(containers/one_shots.py)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from rxslurm.daemon.api.app import json_response, read_json
from rxslurm.daemon.api.context import daemon_of
from rxslurm.daemon.api.request_actor import actor_of
from rxslurm.daemon.api.routes_logs import parse_number
from rxslurm.daemon.errors import NotFound
from rxslurm.protocol import routes as route

routes = web.RouteTableDef()
# A one-shot's id as the ledger keeps it (SQLite's integers are 64-bit).
MAX_ID_DIGITS = 18
FIELDS = ("command", "partition", "gpus", "cpus", "mem_mb", "time_limit_min")


def one_shot_id(request: web.Request) -> int:
    text = request.match_info["one_shot"]
    if len(text) > MAX_ID_DIGITS:
        raise NotFound(f"no one-shot command {text[:MAX_ID_DIGITS]}...")
    return int(text)


@routes.post(route.ONE_SHOTS)
async def run_once(request: web.Request) -> web.Response:
    daemon, actor = daemon_of(request), await actor_of(request)
    body = await read_json(request, fields=FIELDS)
    answer = await asyncio.to_thread(daemon.one_shots.run, actor, request.match_info["name"], body)
    return json_response(answer, status=201)


@routes.get(route.ONE_SHOT)
async def status(request: web.Request) -> web.Response:
    daemon, actor = daemon_of(request), await actor_of(request)
    answer = await asyncio.to_thread(
        daemon.one_shots.status,
        actor,
        request.match_info["name"],
        one_shot_id(request),
    )
    return json_response(answer)


@routes.get(route.ONE_SHOT_OUTPUT)
async def output(request: web.Request) -> web.Response:
    daemon, actor = daemon_of(request), await actor_of(request)
    offset = parse_number("offset", request.query.get("offset"))
    # The read runs as the runtime user in a child process with its own deadline.
    answer = await asyncio.to_thread(
        daemon.one_shots.output,
        actor,
        request.match_info["name"],
        one_shot_id(request),
        offset,
    )
    return json_response(answer)


@routes.post(route.ONE_SHOT_CANCEL)
async def cancel(request: web.Request) -> web.Response:
    daemon, actor = daemon_of(request), await actor_of(request)
    answer = await asyncio.to_thread(
        daemon.one_shots.cancel,
        actor,
        request.match_info["name"],
        one_shot_id(request),
    )
    return json_response(answer)
