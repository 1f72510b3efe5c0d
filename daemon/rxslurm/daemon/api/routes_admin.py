"""Admin routes: partition quotas, every container at a glance, stopping one that misbehaves."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from rxslurm.daemon.api.app import json_response, read_json
from rxslurm.daemon.api.context import Daemon, daemon_of
from rxslurm.daemon.api.request_actor import admin_actor
from rxslurm.daemon.containers import service as containers
from rxslurm.daemon.errors import BadRequest
from rxslurm.daemon.identity.actors import record_actor_event
from rxslurm.daemon.quotas import leases as quotas
from rxslurm.protocol import routes as route

routes = web.RouteTableDef()


@routes.get(route.ADMIN_QUOTAS)
async def list_quotas(request: web.Request) -> web.Response:
    await admin_actor(request)
    daemon = daemon_of(request)

    def read() -> list[dict[str, Any]]:
        with daemon.ledger.read() as db:
            rows = db["quotas"].rows_where(order_by="partition, scope, subject")
            return [quotas.quota_view(db, row) for row in rows]

    return json_response({"quotas": await asyncio.to_thread(read)})


QUOTA_FIELDS = ("partition", "scope", "subject", "max_gpus", "max_cpus", "max_mem_mb",
                "max_containers", "mirror_qos")  # fmt: skip


@routes.post(route.ADMIN_QUOTAS)
async def set_quota(request: web.Request) -> web.Response:
    actor = await admin_actor(request)
    daemon = daemon_of(request)
    body = await read_json(request, fields=QUOTA_FIELDS)
    partitions = set(await asyncio.to_thread(daemon.partitions.get))
    values = quotas.parse_quota(body, partitions)

    def write() -> dict[str, Any]:
        with daemon.ledger.transaction() as db:
            quota = quotas.set_quota(db, values, actor.name)
            record_actor_event(db, actor, "quota.set", "quota", str(quota["id"]), values)
            return quotas.quota_view(db, quota)

    quota = await asyncio.to_thread(write)
    mirror = await asyncio.to_thread(_mirror, daemon)
    daemon.reconciler.poke()  # a raised quota may let waiting containers start
    return json_response({**quota, "mirrored": mirror}, status=201)


@routes.delete(route.ADMIN_QUOTA)
async def remove_quota(request: web.Request) -> web.Response:
    actor = await admin_actor(request)
    daemon = daemon_of(request)
    try:
        quota_id = int(request.match_info["quota_id"])
    except ValueError:
        raise BadRequest("a quota id is a whole number (see `rxctl admin quota list`)") from None

    def write() -> dict[str, Any]:
        with daemon.ledger.transaction() as db:
            removed = quotas.remove_quota(db, quota_id)
            record_actor_event(db, actor, "quota.removed", "quota", str(quota_id), removed)
            return removed

    removed = await asyncio.to_thread(write)
    mirror = await asyncio.to_thread(_mirror, daemon)
    daemon.reconciler.poke()
    return json_response({"removed": removed, "mirrored": mirror})


def _mirror(daemon: Daemon) -> list[dict[str, Any]]:
    """Bring the Slurm QOSes in line with the quotas marked for mirroring (if the feature is on)."""
    from rxslurm.daemon.quotas import qos_mirror

    return qos_mirror.sync(daemon.ledger, daemon.slurm, tag=daemon.config.slurm.tag)


@routes.get(route.ADMIN_CONTAINERS)
async def all_containers(request: web.Request) -> web.Response:
    await admin_actor(request)
    daemon = daemon_of(request)
    return json_response(
        {"containers": await asyncio.to_thread(containers.admin_containers, daemon.runtime)}
    )


@routes.post(route.ADMIN_CONTAINER_STOP)
async def admin_stop(request: web.Request) -> web.Response:
    actor = await admin_actor(request)
    daemon = daemon_of(request)
    name = request.match_info["name"]
    result = await asyncio.to_thread(
        containers.stop, daemon.runtime, actor, name, None, f"stopped by admin {actor.name}"
    )
    return json_response(result)
