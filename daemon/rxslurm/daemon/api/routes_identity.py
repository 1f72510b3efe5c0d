"""Binding and unbinding identities; admin views of bindings and the audit log."""

from __future__ import annotations

import asyncio
import pwd
from datetime import datetime
from typing import Any

from aiohttp import web

from rxslurm.daemon.api.app import caller_of, json_response, read_json
from rxslurm.daemon.api.context import Daemon, daemon_of
from rxslurm.daemon.api.request_actor import actor_of, admin_actor
from rxslurm.daemon.errors import BadRequest, Conflict, Forbidden
from rxslurm.daemon.identity import bindings as identities
from rxslurm.daemon.identity.actors import Actor
from rxslurm.daemon.ledger.audit import list_events
from rxslurm.daemon.ledger.store import Ledger
from rxslurm.daemon.projects.lifecycle import sync_or_warn
from rxslurm.protocol import routes as route

routes = web.RouteTableDef()
CODE_FIELDS = ("platform_user", "display_name", "linux_user", "ttl_min")


@routes.post(route.BIND)
async def bind(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    body = await read_json(request, fields=("code",))
    if request.get("actor") is not None:
        # Over TCP there is no kernel proof of a Linux identity.
        raise Forbidden(
            "binding needs the caller's own Linux identity: run `rxctl bind` on a login node"
        )
    if daemon.config.identity.mode == "local":
        raise Conflict(
            "this deployment runs in standalone mode: every Linux user is bound automatically"
        )
    caller = caller_of(request)
    result = await asyncio.to_thread(
        identities.redeem_code,
        daemon.ledger,
        daemon.config,
        code=body.get("code"),
        uid=caller.uid,
        origin=caller.door,
    )
    return json_response(result)


@routes.post(route.UNBIND)
async def unbind(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    if daemon.config.identity.mode == "local":
        raise Conflict("this deployment runs in standalone mode: identities cannot be unbound")
    if actor.platform_user is None or actor.origin != "socket":
        raise Forbidden("you have no bound platform identity", code="not_bound")
    result = await asyncio.to_thread(_unbind, daemon, actor, uid=actor.uid)
    return json_response(result)


def _unbind(daemon: Daemon, actor: Actor, **who: Any) -> dict[str, Any]:
    """Unbind; projects that ran as the identity stop, and their workspaces are parked."""
    result = identities.unbind(daemon.ledger, actor, cancel=daemon.containers.cancel_job, **who)
    for name in result["released"]:
        sync_or_warn(daemon.ledger, daemon.config, name)
    return result


@routes.post(route.ADMIN_CODES)
async def admin_code(request: web.Request) -> web.Response:
    actor = await admin_actor(request)
    return json_response(await issue_code_from_body(request, actor), status=201)


async def issue_code_from_body(request: web.Request, actor: Actor) -> dict[str, Any]:
    daemon = daemon_of(request)
    body = await read_json(request, fields=CODE_FIELDS)
    linux_user = body.get("linux_user")
    if linux_user is not None:
        identities.check_linux_user(linux_user)
    display = identities.check_display_name(body.get("display_name", ""))
    return await asyncio.to_thread(
        identities.issue_code,
        daemon.ledger,
        daemon.config,
        actor,
        platform_user=body.get("platform_user"),
        display_name=display,
        linux_user=linux_user,
        ttl_min=body.get("ttl_min"),
    )


@routes.post(route.ADMIN_BIND)
async def admin_bind(request: web.Request) -> web.Response:
    actor = await admin_actor(request)
    daemon = daemon_of(request)
    body = await read_json(request, fields=("platform_user", "linux_user"))
    result = await asyncio.to_thread(
        identities.admin_bind,
        daemon.ledger,
        daemon.config,
        actor,
        platform_user=body.get("platform_user"),
        linux_user=body.get("linux_user"),
    )
    return json_response(result, status=201)


@routes.post(route.ADMIN_UNBIND)
async def admin_unbind(request: web.Request) -> web.Response:
    actor = await admin_actor(request)
    daemon = daemon_of(request)
    body = await read_json(request, fields=("platform_user", "linux_user"))
    platform_user, linux_user = body.get("platform_user"), body.get("linux_user")
    if (platform_user is None) == (linux_user is None):
        raise BadRequest("give exactly one of platform_user or linux_user")
    uid = None
    if linux_user is not None:
        identities.check_linux_user(linux_user)
        try:
            uid = pwd.getpwnam(linux_user).pw_uid
        except KeyError:
            raise BadRequest(f"no Linux user named {linux_user!r}") from None
    else:
        identities.check_platform_user_id(platform_user)
    result = await asyncio.to_thread(_unbind, daemon, actor, platform_user=platform_user, uid=uid)
    return json_response(result)


@routes.get(route.ADMIN_BINDINGS)
async def admin_bindings(request: web.Request) -> web.Response:
    await admin_actor(request)
    daemon = daemon_of(request)
    return json_response(
        {"bindings": await asyncio.to_thread(identities.list_bindings, daemon.ledger)}
    )


@routes.get(route.ADMIN_AUDIT)
async def admin_audit(request: web.Request) -> web.Response:
    await admin_actor(request)
    daemon = daemon_of(request)
    query = request.query
    try:
        limit = int(query.get("limit", "100"))
    except ValueError:
        raise BadRequest("limit must be a whole number") from None
    if not 1 <= limit <= 10000:
        raise BadRequest("limit must be from 1 to 10000")
    target = ("project", query["project"]) if "project" in query else None
    since = query.get("since")
    events = await asyncio.to_thread(
        _events, daemon.ledger, since=since, target=target, limit=limit
    )
    return json_response({"events": events})


def _events(
    ledger: Ledger, *, since: str | None, target: tuple[str, str] | None, limit: int
) -> list[dict[str, Any]]:
    since_dt = None
    if since:
        try:
            since_dt = datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError:
            raise BadRequest("since must be an ISO-8601 time, e.g. 2026-01-31T12:00:00Z") from None
        if since_dt.tzinfo is None:
            raise BadRequest("since needs a time zone, e.g. a trailing Z for UTC")
    events = list_events(ledger, since=since_dt, target=target, limit=limit)
    return [{**event.to_row(), "detail": event.detail} for event in events]
