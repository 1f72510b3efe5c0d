"""What runs in a project's container: `rxctl ps`, `rxctl exec --detach`, `rxctl kill`, and a
detached command's output (`rxctl logs --exec`). All need the `exec` action."""

from __future__ import annotations

import asyncio

from aiohttp import web

from rxslurm.daemon.api.app import json_response, read_json
from rxslurm.daemon.api.context import daemon_of
from rxslurm.daemon.api.request_actor import actor_of
from rxslurm.daemon.api.routes_logs import parse_number
from rxslurm.daemon.errors import BadRequest
from rxslurm.protocol import routes as route

routes = web.RouteTableDef()


@routes.get(route.PROJECT_COMMANDS)
async def listed(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    answer = await asyncio.to_thread(daemon.commands.sessions_of, actor, request.match_info["name"])
    return json_response(answer)


@routes.post(route.PROJECT_COMMANDS)
async def start(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    body = await read_json(request, {"argv", "cwd", "env"})
    answer = await asyncio.to_thread(
        daemon.commands.start,
        actor,
        request.match_info["name"],
        body.get("argv"),
        body.get("cwd", "/workspace"),
        body.get("env"),
    )
    return json_response(answer, status=201)


@routes.post(route.PROJECT_COMMAND_SIGNAL)
async def signal(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    body = await read_json(request, {"signal"})
    name = body.get("signal", "TERM")
    if not isinstance(name, str):
        raise BadRequest("signal must be a signal's name, such as TERM")
    answer = await asyncio.to_thread(
        daemon.commands.kill,
        actor,
        request.match_info["name"],
        request.match_info["command"],
        name,
    )
    return json_response(answer)


@routes.get(route.PROJECT_COMMAND_OUTPUT)
async def output(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    offset = parse_number("offset", request.query.get("offset"))
    # The read runs as the runtime user in a child process with its own deadline.
    answer = await asyncio.to_thread(
        daemon.commands.output,
        actor,
        request.match_info["name"],
        request.match_info["command"],
        offset,
    )
    return json_response(answer)
