"""A project's environment variables and secrets (projects/environment.py). A secret's value
arrives in a request body and never leaves rxd in an answer."""

from __future__ import annotations

import asyncio

from aiohttp import web

from rxslurm.daemon.api.app import json_response, read_json
from rxslurm.daemon.api.context import daemon_of
from rxslurm.daemon.api.request_actor import actor_of
from rxslurm.daemon.errors import BadRequest
from rxslurm.daemon.projects import environment
from rxslurm.protocol import routes as route

routes = web.RouteTableDef()


@routes.get(route.PROJECT_ENV)
async def list_env(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    answer = await asyncio.to_thread(
        environment.list_env, daemon.ledger, actor, request.match_info["name"]
    )
    return json_response(answer)


@routes.patch(route.PROJECT_ENV)
async def change_env(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    body = await read_json(request, fields=("set", "unset"))
    if ("set" in body) == ("unset" in body):
        raise BadRequest('give either "set" (an object of names to values) or "unset" (names)')
    name = request.match_info["name"]
    if "set" in body:
        answer = await asyncio.to_thread(
            environment.set_env, daemon.ledger, actor, name, body["set"]
        )
    else:
        answer = await asyncio.to_thread(
            environment.unset_env, daemon.ledger, actor, name, body["unset"]
        )
    return json_response(answer)


@routes.get(route.PROJECT_SECRETS)
async def list_secrets(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    answer = await asyncio.to_thread(
        environment.list_secrets, daemon.ledger, daemon.config, actor, request.match_info["name"]
    )
    return json_response(answer)


@routes.put(route.PROJECT_SECRET)
async def set_secret(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    body = await read_json(request, fields=("value",))
    answer = await asyncio.to_thread(
        environment.set_secret,
        daemon.ledger,
        daemon.config,
        actor,
        request.match_info["name"],
        request.match_info["secret"],
        body.get("value"),
    )
    return json_response(answer)


@routes.delete(route.PROJECT_SECRET)
async def remove_secret(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    answer = await asyncio.to_thread(
        environment.remove_secret,
        daemon.ledger,
        daemon.config,
        actor,
        request.match_info["name"],
        request.match_info["secret"],
    )
    return json_response(answer)
