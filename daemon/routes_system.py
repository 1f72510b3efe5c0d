"""Who am I, and is everything rxd needs reachable."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from rxslurm.daemon.actors import actor_of
from rxslurm.daemon.api import caller_of, json_response
from rxslurm.daemon.context import daemon_of
from rxslurm.daemon.version import __version__
from rxslurm.slurm.errors import SlurmError

routes = web.RouteTableDef()


@routes.get("/v1/whoami")
async def whoami(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    if actor.origin == "tcp":
        return json_response(
            {
                "uid": actor.uid,
                "user": actor.user,
                "admin": False,
                "identity_mode": daemon.config.identity.mode,
                "platform_user": actor.platform_user,
                "bound": actor.uid is not None,
            }
        )
    caller = caller_of(request)
    return json_response(
        {
            "uid": caller.uid,
            "gid": caller.gid,
            "user": caller.user,
            "groups": list(caller.groups),
            "admin": daemon.is_admin(caller),
            "identity_mode": daemon.config.identity.mode,
            "platform_user": actor.platform_user,
            "bound": actor.platform_user is not None,
        }
    )


@routes.get("/v1/health")
async def health(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    ledger, slurm, container = await asyncio.gather(
        asyncio.to_thread(_check_ledger, daemon),
        asyncio.to_thread(_check_slurm, daemon),
        asyncio.to_thread(_check_apptainer, daemon),
    )
    checks = {"ledger": ledger, "slurm": slurm, "apptainer": container}
    return json_response(
        {
            "ok": all(c["ok"] for c in checks.values()),
            "version": __version__,
            "checks": checks,
        }
    )


def _check_ledger(daemon: Any) -> dict[str, Any]:
    try:
        version = daemon.ledger.schema_version()
    except Exception as exc:  # any failure here is what the check reports
        return {"ok": False, "detail": f"ledger unusable: {exc}"}
    return {"ok": True, "detail": f"schema {version}", "path": str(daemon.config.daemon.ledger)}


def _check_slurm(daemon: Any) -> dict[str, Any]:
    try:
        ping = daemon.slurm.ping()
    except SlurmError as exc:
        return {"ok": False, "detail": str(exc)}
    detail = ping.message or ("controller up" if ping.up else "controller down")
    if ping.version:
        detail = f"Slurm {ping.version}: {detail}"
    return {"ok": ping.up, "detail": detail, "version": ping.version}


def _check_apptainer(daemon: Any) -> dict[str, Any]:
    from rxslurm.daemon import apptainer  # spython is slow to import; only health needs it here

    configured = daemon.config.apptainer.binary
    version = apptainer.apptainer_version(configured)
    if version is None:
        where = configured or "apptainer on PATH"
        return {"ok": False, "detail": f"{where} not found or does not run"}
    return {
        "ok": True,
        "detail": f"{apptainer.program(daemon.config.apptainer)} {version}",
        "version": version,
    }
