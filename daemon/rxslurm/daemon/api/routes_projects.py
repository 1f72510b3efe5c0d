"""Projects, their settings, run-as mode and members."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from rxslurm.daemon.api.app import json_response, read_json
from rxslurm.daemon.api.context import Daemon, daemon_of
from rxslurm.daemon.api.request_actor import actor_of
from rxslurm.daemon.errors import BadRequest
from rxslurm.daemon.identity.bindings import binding_of_platform_user, check_platform_user_id
from rxslurm.daemon.projects import lifecycle
from rxslurm.daemon.projects import service as projects
from rxslurm.daemon.projects.label_change import change_labels
from rxslurm.protocol import routes as route

log = logging.getLogger("rxslurm.projects")
routes = web.RouteTableDef()


async def _with_workspace(
    daemon: Daemon, view: dict[str, Any], revoke: tuple[str, ...] = ()
) -> dict[str, Any]:
    warning = await asyncio.to_thread(
        lifecycle.sync_or_warn, daemon.ledger, daemon.config, view["name"], revoke
    )
    if warning:
        view["warnings"] = [warning]
    return view


@routes.get(route.PROJECTS)
async def list_projects(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    return json_response(
        {"projects": await asyncio.to_thread(projects.list_projects, daemon.ledger, actor)}
    )


@routes.post(route.PROJECTS)
async def create_project(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    body = await read_json(request, fields=("name", "settings"))
    if not isinstance(body.get("settings", {}), dict):
        raise BadRequest("settings must be a JSON object")
    view = await asyncio.to_thread(
        lifecycle.create,
        daemon.ledger,
        daemon.config,
        actor,
        name=body.get("name"),
        settings=body.get("settings"),
        validate=daemon.partitions.validate,
    )
    return json_response(view, status=201)


@routes.get(route.PROJECT)
async def show_project(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    name = request.match_info["name"]
    view = await asyncio.to_thread(projects.project_view, daemon.ledger, daemon.config, actor, name)
    return json_response(view)


@routes.delete(route.PROJECT)
async def delete_project(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    name = request.match_info["name"]
    return json_response(
        await asyncio.to_thread(lifecycle.delete, daemon.ledger, daemon.config, actor, name)
    )


@routes.patch(route.PROJECT_SETTINGS)
async def update_settings(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    body = await read_json(request)
    view = await asyncio.to_thread(
        projects.update_settings,
        daemon.ledger,
        daemon.config,
        actor,
        request.match_info["name"],
        body,
        daemon.partitions.validate,
    )
    return json_response(view)


@routes.put(route.PROJECT_RUN_AS)
async def set_run_as(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    body = await read_json(request, fields=("mode",))
    view = await asyncio.to_thread(
        projects.set_run_as,
        daemon.ledger,
        daemon.config,
        actor,
        request.match_info["name"],
        body.get("mode"),
        daemon.containers.cancel_job,
    )
    return json_response(await _with_workspace(daemon, view))


@routes.post(route.PROJECT_MEMBERS)
async def add_member(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    body = await read_json(request, fields=("user", "role"))
    view = await asyncio.to_thread(
        projects.add_member,
        daemon.ledger,
        daemon.config,
        actor,
        request.match_info["name"],
        body.get("user"),
        body.get("role"),
    )
    return json_response(await _with_workspace(daemon, view), status=201)


@routes.patch(route.PROJECT_MEMBER)
async def set_member_role(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    body = await read_json(request, fields=("role",))
    view = await asyncio.to_thread(
        projects.set_member_role,
        daemon.ledger,
        daemon.config,
        actor,
        request.match_info["name"],
        check_platform_user_id(request.match_info["user"]),
        body.get("role"),
        daemon.containers.cancel_job,
    )
    return json_response(await _with_workspace(daemon, view))


@routes.delete(route.PROJECT_MEMBER)
async def remove_member(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    user = check_platform_user_id(request.match_info["user"])
    view = await asyncio.to_thread(
        projects.remove_member,
        daemon.ledger,
        daemon.config,
        actor,
        request.match_info["name"],
        user,
        daemon.containers.cancel_job,
    )
    binding = await asyncio.to_thread(binding_of_platform_user, daemon.ledger.db, user)
    revoke = (binding.username,) if binding else ()
    return json_response(await _with_workspace(daemon, view, revoke))


@routes.post(route.PROJECT_LABELS)
async def set_labels(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    body = await read_json(request, fields=("set", "remove"))
    name = request.match_info["name"]
    return json_response(await asyncio.to_thread(change_labels, daemon.ledger, actor, name, body))
