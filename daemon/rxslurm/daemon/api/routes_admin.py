"""Admin routes: partition quotas, every container at a glance, stopping one that misbehaves."""

from __future__ import annotations

import asyncio

from aiohttp import web

from rxslurm.daemon.api.app import json_response, read_json
from rxslurm.daemon.api.context import daemon_of
from rxslurm.daemon.api.request_actor import admin_actor
from rxslurm.daemon.errors import BadRequest
from rxslurm.daemon.quotas import leases as quotas
from rxslurm.protocol import routes as route

routes = web.RouteTableDef()


@routes.get(route.ADMIN_QUOTAS)
async def list_quotas(request: web.Request) -> web.Response:
    await admin_actor(request)
    daemon = daemon_of(request)
    return json_response({"quotas": await asyncio.to_thread(daemon.containers.quota_views)})


QUOTA_FIELDS = ("partition", "scope", "subject", "max_gpus", "max_cpus", "max_mem_mb",
                "max_containers", "mirror_qos")  # fmt: skip


@routes.post(route.ADMIN_QUOTAS)
async def set_quota(request: web.Request) -> web.Response:
    actor = await admin_actor(request)
    daemon = daemon_of(request)
    body = await read_json(request, fields=QUOTA_FIELDS)
    partitions = set(await asyncio.to_thread(daemon.partitions.get))
    values = quotas.parse_quota(body, partitions)
    quota = await asyncio.to_thread(daemon.containers.set_quota, actor, values)
    return json_response(quota, status=201)


@routes.delete(route.ADMIN_QUOTA)
async def remove_quota(request: web.Request) -> web.Response:
    actor = await admin_actor(request)
    daemon = daemon_of(request)
    try:
        quota_id = int(request.match_info["quota_id"])
    except ValueError:
        raise BadRequest("a quota id is a whole number (see `rxctl admin quota list`)") from None
    return json_response(await asyncio.to_thread(daemon.containers.remove_quota, actor, quota_id))


@routes.get(route.ADMIN_CONTAINERS)
async def all_containers(request: web.Request) -> web.Response:
    await admin_actor(request)
    daemon = daemon_of(request)
    return json_response(
        {"containers": await asyncio.to_thread(daemon.containers.admin_containers, with_usage=True)}
    )


@routes.post(route.ADMIN_CONTAINER_STOP)
async def admin_stop(request: web.Request) -> web.Response:
    actor = await admin_actor(request)
    daemon = daemon_of(request)
    name = request.match_info["name"]
    return json_response(await asyncio.to_thread(daemon.containers.admin_stop, actor, name))
