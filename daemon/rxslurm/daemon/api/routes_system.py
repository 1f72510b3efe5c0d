"""Who am I, and is everything rxd needs reachable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from aiohttp import web

from rxslurm.daemon.api.app import caller_of, json_response
from rxslurm.daemon.api.context import Daemon, daemon_of
from rxslurm.daemon.api.request_actor import actor_of
from rxslurm.daemon.version import __version__
from rxslurm.protocol import routes as route
from rxslurm.slurm.errors import SlurmError

routes = web.RouteTableDef()

# Health forks Slurm and Apptainer as root: anyone may ask, so answers are shared for a moment
# and the checks run on threads of their own, never the pool the API's ledger calls need.
HEALTH_TTL_S = 2.0
_CHECKS = ThreadPoolExecutor(max_workers=3, thread_name_prefix="rxd-health")


class HealthCache:
    """The last health answer, reused for HEALTH_TTL_S; callers meanwhile share one check."""

    def __init__(self, ttl: float = HEALTH_TTL_S) -> None:
        self.ttl = ttl
        self._answer: dict[str, Any] | None = None
        self._at = 0.0
        self._running: asyncio.Future[dict[str, Any]] | None = None

    async def get(self, check: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        if self._answer is not None and time.monotonic() - self._at < self.ttl:
            return self._answer
        if self._running is None:
            self._running = asyncio.ensure_future(check())
            self._running.add_done_callback(self._store)
        # shield: one caller hanging up must not cancel the check the others wait for.
        return await asyncio.shield(self._running)

    def _store(self, done: asyncio.Future[dict[str, Any]]) -> None:
        self._running = None
        if not done.cancelled() and done.exception() is None:
            self._answer, self._at = done.result(), time.monotonic()


HEALTH: web.AppKey[HealthCache] = web.AppKey("health", HealthCache)


@routes.get(route.WHOAMI)
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
            "admin": actor.admin,
            "door": caller.door,
            "identity_mode": daemon.config.identity.mode,
            "platform_user": actor.platform_user,
            "bound": actor.platform_user is not None,
        }
    )


@routes.get(route.HEALTH)
async def health(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    cache = request.app.get(HEALTH)
    check = partial(_health, daemon)
    return json_response(await cache.get(check) if cache is not None else await check())


async def _health(daemon: Daemon) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    ledger, slurm, container = await asyncio.gather(
        *(loop.run_in_executor(_CHECKS, each, daemon) for each in _CHECK_FUNCTIONS)
    )
    checks = {"ledger": ledger, "slurm": slurm, "apptainer": container}
    return {"ok": all(c["ok"] for c in checks.values()), "version": __version__, "checks": checks}


def _check_ledger(daemon: Daemon) -> dict[str, Any]:
    try:
        version = daemon.ledger.schema_version()
    except Exception as exc:  # any failure here is what the check reports
        return {"ok": False, "detail": f"ledger unusable: {exc}"}
    return {"ok": True, "detail": f"schema {version}", "path": str(daemon.config.daemon.ledger)}


def _check_slurm(daemon: Daemon) -> dict[str, Any]:
    try:
        ping = daemon.slurm.ping()
    except SlurmError as exc:
        return {"ok": False, "detail": str(exc)}
    detail = ping.message or ("controller up" if ping.up else "controller down")
    if ping.version:
        detail = f"Slurm {ping.version}: {detail}"
    return {"ok": ping.up, "detail": detail, "version": ping.version}


def _check_apptainer(daemon: Daemon) -> dict[str, Any]:
    # Through the service's runtime port: the program the holder and the exec steps will run.
    runtime = daemon.containers.runtime
    version = runtime.version()
    if version is None:
        where = daemon.config.apptainer.binary or "apptainer on PATH"
        return {"ok": False, "detail": f"{where} not found or does not run"}
    return {"ok": True, "detail": f"{runtime.program()} {version}", "version": version}


_CHECK_FUNCTIONS = (_check_ledger, _check_slurm, _check_apptainer)
