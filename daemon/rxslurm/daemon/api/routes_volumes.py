"""Named volumes and the mounts of them (docs/volumes.md)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from rxslurm.daemon.api.app import json_response, read_json
from rxslurm.daemon.api.context import daemon_of
from rxslurm.daemon.api.request_actor import actor_of
from rxslurm.daemon.projects import volumes
from rxslurm.protocol import routes as route

routes = web.RouteTableDef()


@routes.get(route.PROJECT_VOLUMES)
async def list_volumes(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    name = request.match_info["name"]
    return json_response(await asyncio.to_thread(volumes.list_volumes, daemon.ledger, actor, name))


@routes.post(route.PROJECT_VOLUMES)
async def create_volume(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    body = await read_json(request, fields=("name",))
    view = await asyncio.to_thread(
        volumes.create_volume,
        daemon.ledger,
        daemon.config,
        actor,
        request.match_info["name"],
        body.get("name"),
    )
    return json_response(view, status=201)


@routes.delete(route.PROJECT_VOLUME)
async def remove_volume(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    answer = await asyncio.to_thread(
        volumes.remove_volume,
        daemon.ledger,
        daemon.config,
        actor,
        request.match_info["name"],
        request.match_info["volume"],
    )
    return json_response(answer)


@routes.put(route.PROJECT_MOUNT)
async def set_mount(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    body = await read_json(request, fields=("target", "read_only"))
    body["volume"] = request.match_info["volume"]
    answer = await asyncio.to_thread(
        volumes.set_mount, daemon.ledger, daemon.config, actor, request.match_info["name"], body
    )
    return json_response(answer)


@routes.delete(route.PROJECT_MOUNT)
async def remove_mount(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    answer = await asyncio.to_thread(
        volumes.remove_mount,
        daemon.ledger,
        daemon.config,
        actor,
        request.match_info["name"],
        request.match_info["volume"],
    )
    return json_response(answer)
