"""Turning a request's proved transport identity into the Actor it acts for."""

from __future__ import annotations

import asyncio

from aiohttp import web

from rxslurm.daemon.api.app import caller_of
from rxslurm.daemon.api.context import daemon_of
from rxslurm.daemon.errors import Forbidden
from rxslurm.daemon.identity.actors import Actor
from rxslurm.daemon.identity.bindings import auto_bind_local, binding_of_uid


async def actor_of(request: web.Request) -> Actor:
    """The request's actor; the platform listener sets it, the socket derives it from the peer."""
    actor = request.get("actor")
    if isinstance(actor, Actor):
        return actor
    caller = caller_of(request)
    daemon = daemon_of(request)
    if daemon.config.identity.mode == "local":
        platform_user = await asyncio.to_thread(
            auto_bind_local, daemon.ledger, daemon.config, caller.uid
        )
    else:
        row = await asyncio.to_thread(binding_of_uid, daemon.ledger.db, caller.uid)
        platform_user = row.platform_user_id if row else None
    actor = Actor(
        platform_user=platform_user,
        uid=caller.uid,
        user=caller.user,
        # Admin powers only through the service host's socket (api/munge_door.py says why).
        admin=caller.door == "socket" and daemon.is_admin(caller),
        origin=caller.door,
    )
    request["actor"] = actor
    return actor


async def admin_actor(request: web.Request) -> Actor:
    actor = await actor_of(request)
    if not actor.admin or actor.origin != "socket":
        raise Forbidden("this needs an rx-slurm admin (root or the admin group)")
    return actor
