"""A project's container: enable, start, stop, disable, retry, status, the batch
plan, overlay snapshots, a reset; the caller's containers."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from aiohttp import web

from rxslurm.daemon.api.app import caller_of, json_response, read_json
from rxslurm.daemon.api.context import daemon_of
from rxslurm.daemon.api.request_actor import actor_of
from rxslurm.daemon.containers.reset import fresh_start, reset_overlay
from rxslurm.daemon.containers.service import ContainerService
from rxslurm.daemon.containers.views import ContainerView
from rxslurm.daemon.errors import BadRequest, Forbidden
from rxslurm.daemon.identity.actors import Actor
from rxslurm.daemon.projects.labels import parse_pair
from rxslurm.daemon.slow_work import run_slow
from rxslurm.protocol import routes as route

routes = web.RouteTableDef()

# The route's word for each command ("start" is the service's wake).
ACTIONS = {
    "enable": ContainerService.enable,
    "start": ContainerService.wake,
    "stop": ContainerService.stop,
    "disable": ContainerService.disable,
    "retry": ContainerService.retry,
}


@routes.post(route.CONTAINER_ACTION)
async def act(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    action: Callable[[ContainerService, Actor, str], ContainerView]
    action = ACTIONS[request.match_info["action"]]
    fresh = request.query.get("fresh", "")
    if fresh not in ("", "0", "1") or (fresh == "1" and action is not ContainerService.wake):
        raise BadRequest("fresh is 0 or 1, and only for start")
    if fresh == "1":
        action = fresh_start
    body = await read_json(request, ("force",))
    force = body.get("force", False)
    if not isinstance(force, bool) or (force and action is not ContainerService.stop):
        raise BadRequest("force is true or false, and only for stop")
    if force:
        action = functools.partial(ContainerService.stop, force=True)
    # Enabling may pull an image and disabling waits for the job to stop: slow work's own pool.
    view = await run_slow(action, daemon.containers, actor, request.match_info["name"])
    return json_response(view.to_dict())


@routes.get(route.CONTAINER_STATUS)
async def status(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    view = await asyncio.to_thread(daemon.containers.status, actor, request.match_info["name"])
    return json_response(view.to_dict())


@routes.post(route.PROJECT_SNAPSHOT)
async def snapshot(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    # A sleeping container's overlay is copied before the answer: slow work's own pool.
    answer = await run_slow(
        ContainerService.snapshot, daemon.containers, actor, request.match_info["name"]
    )
    return json_response(answer)


@routes.post(route.PROJECT_RESET)
async def reset(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    # A new overlay is made and swapped in as the runtime user: slow work's own pool.
    answer = await run_slow(reset_overlay, daemon.containers, actor, request.match_info["name"])
    return json_response(answer)


@routes.get(route.PROJECT_BATCH_PLAN)
async def batch_plan(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    plan = await asyncio.to_thread(daemon.containers.batch_plan, actor, request.match_info["name"])
    return json_response(plan.to_dict())


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
    # ?label=key=value, repeated: only projects that carry every one.
    wanted = dict(parse_pair(text) for text in request.query.getall("label", []))
    result = await asyncio.to_thread(daemon.containers.list_containers, actor, wanted)
    return json_response({"containers": result})
