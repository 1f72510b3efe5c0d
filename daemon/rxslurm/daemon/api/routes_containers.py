"""A project's container: enable, start, stop, disable, retry, status; the caller's containers."""

from __future__ import annotations

import asyncio

from aiohttp import web

from rxslurm.daemon.api.app import caller_of, json_response
from rxslurm.daemon.api.context import daemon_of
from rxslurm.daemon.api.request_actor import actor_of
from rxslurm.daemon.containers import service as containers
from rxslurm.daemon.errors import Forbidden
from rxslurm.daemon.slow_work import run_slow
from rxslurm.protocol import routes as route

routes = web.RouteTableDef()

ACTIONS = {
    "enable": containers.enable,
    "start": containers.wake,
    "stop": containers.stop,
    "disable": containers.disable,
    "retry": containers.retry,
}


@routes.post(route.CONTAINER_ACTION)
async def act(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    action = ACTIONS[request.match_info["action"]]
    # Enabling may pull an image and disabling waits for the job to stop: slow work's own pool.
    result = await run_slow(action, daemon.runtime, actor, request.match_info["name"])
    return json_response(result)


@routes.get(route.CONTAINER_STATUS)
async def status(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    result = await asyncio.to_thread(
        containers.status,
        daemon.runtime,
        actor,
        request.match_info["name"],
        daemon.reconciler.slurm_reachable,
    )
    return json_response(result)


@routes.post(route.HOOK_JOB)
async def job_event(request: web.Request) -> web.Response:
    """A poke from Slurm's controller hooks: reconcile now. The body is not trusted."""
    daemon = daemon_of(request)
    caller = caller_of(request)
    if caller.user not in daemon.config.slurm.hook_users:
        raise Forbidden("only Slurm's controller hooks may send job events")
    daemon.reconciler.poke()
    return json_response({"ok": True}, status=202)


@routes.get(route.CONTAINERS)
async def mine(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    result = await asyncio.to_thread(containers.list_containers, daemon.runtime, actor)
    return json_response({"containers": result})
