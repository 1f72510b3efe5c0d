"""Running rxd: bind the Unix socket safely, serve until SIGTERM, clean up."""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import ssl
import stat
from pathlib import Path

from aiohttp import web

from rxslurm.daemon.api import (
    munge_door,
    platform_files,
    routes_admin,
    routes_containers,
    routes_env,
    routes_export,
    routes_gc,
    routes_identity,
    routes_image_set,
    routes_images,
    routes_logs,
    routes_metrics,
    routes_one_shots,
    routes_projects,
    routes_sessions,
    routes_system,
    routes_volumes,
    sd_notify,
)
from rxslurm.daemon.api import platform_door as platform
from rxslurm.daemon.api.app import REQUEST_COUNTS, make_app
from rxslurm.daemon.api.conn_caps import ConnectionCap, capped
from rxslurm.daemon.api.context import DAEMON, Daemon
from rxslurm.daemon.api.platform_door import platform_identify, read_token
from rxslurm.daemon.api.socket_files import StartupError, claim_socket_path, open_to_everyone
from rxslurm.daemon.config import Config, PlatformConfig, listen_address
from rxslurm.daemon.exec import platform_exec, platform_one_shot
from rxslurm.daemon.exec.door import EXEC_SERVER
from rxslurm.daemon.exec.server import ExecServer
from rxslurm.daemon.ledger.store import Ledger
from rxslurm.daemon.metrics import Counters
from rxslurm.daemon.slow_work import api_pool
from rxslurm.slurm.adapter import SlurmCli

log = logging.getLogger("rxslurm.daemon")


ROUTES = [
    *routes_system.routes,
    *routes_identity.routes,
    *routes_projects.routes,
    *routes_env.routes,
    *routes_volumes.routes,
    *routes_containers.routes,
    *routes_export.routes,
    *routes_image_set.routes,
    *routes_logs.routes,
    *routes_images.routes,
    *routes_one_shots.routes,
    *routes_sessions.routes,
    *routes_admin.routes,
    *routes_gc.routes,
]

# What the platform's door serves beyond ROUTES: its own routes, commands (exec and streamed
# one-shots) and workspace files.
PLATFORM_ROUTES = [
    *platform.routes,
    *platform_exec.routes,
    *platform_one_shot.routes,
    *platform_files.routes,
]


def raise_open_files_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit (the unit sets it): idle callers cost descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit", extra={"error": str(exc)})
            return
    log.debug("open files limit", extra={"limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0]})


def tls_context(platform_config: PlatformConfig) -> ssl.SSLContext | None:
    """The platform listener's TLS, if configured; its key must be root's alone, like the token."""
    if not platform_config.tls_cert:
        return None
    key = Path(platform_config.tls_key)
    try:
        info = key.lstat()
    except FileNotFoundError:
        raise StartupError(f"platform TLS key {key} does not exist") from None
    if not stat.S_ISREG(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o077:
        raise StartupError(f"platform TLS key {key} must be a regular file of root, mode 0600")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(platform_config.tls_cert, str(key))
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"cannot load the platform TLS certificate or key: {exc}") from None
    return context


class CappedUnixSite(web.UnixSite):
    """aiohttp's Unix site with a per-uid connection cap and the socket opened to everyone."""

    def __init__(self, runner: web.BaseRunner, path: Path, cap: ConnectionCap) -> None:
        super().__init__(runner, str(path))
        self.cap = cap
        self.path = path

    async def start(self) -> None:
        await web.BaseSite.start(self)
        assert self._runner.server is not None
        self._server = await asyncio.get_running_loop().create_unix_server(
            capped(self.cap, self._runner.server), str(self.path), backlog=self._backlog
        )
        open_to_everyone(self.path)


class CappedTCPSite(web.TCPSite):
    """aiohttp's TCP site with a connection cap per peer address, counted before the token."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, cap: ConnectionCap, **kw: object
    ) -> None:
        super().__init__(runner, host, port, **kw)  # type: ignore[arg-type]
        self.cap = cap

    async def start(self) -> None:
        await web.BaseSite.start(self)
        assert self._runner.server is not None
        self._server = await asyncio.get_running_loop().create_server(
            capped(self.cap, self._runner.server),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
        )


def build_daemon(config: Config) -> Daemon:
    ledger = Ledger.open(config.daemon.ledger)
    slurm = SlurmCli(bin_dir=config.slurm.bin_dir or None, timeout=config.slurm.timeout)
    return Daemon(config=config, ledger=ledger, slurm=slurm)


async def serve(config: Config) -> None:
    # Signals first: a SIGTERM during start-up must still stop rxd cleanly.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    raise_open_files_limit()
    loop.set_default_executor(api_pool())
    daemon = build_daemon(config)
    # An unusable pull account or image folder stops rxd here, before it serves anyone.
    await asyncio.to_thread(daemon.containers.pulls.start)
    # Both listeners share one health answer: a second's worth of callers costs one check.
    health = routes_system.HealthCache()
    # Every listener counts its requests into one table: /metrics shows them all.
    requests = Counters(("route", "method", "code"))
    app = make_app(
        [*ROUTES, *routes_metrics.routes],
        {DAEMON: daemon, routes_system.HEALTH: health, REQUEST_COUNTS: requests},
    )
    sock_path = config.daemon.socket
    claim_socket_path(sock_path)
    limits = config.limits

    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, keepalive_timeout=limits.keepalive_s
    )
    await runner.setup()
    runners = [runner]
    # Anyone may connect: access is decided per request from the peer's credentials.
    await CappedUnixSite(runner, sock_path, ConnectionCap(limits.connections_per_uid)).start()
    log.info("rxd serving", extra={"socket": str(sock_path), "ledger": str(config.daemon.ledger)})

    if config.platform.listen:
        # A bad token or TLS file stops rxd before the exec socket exists.
        token = read_token(config.platform.token_file)
        context = tls_context(config.platform)
    exec_server = ExecServer.start(daemon)
    if config.platform.listen:
        platform_app = make_app(
            [*ROUTES, *PLATFORM_ROUTES],
            {
                DAEMON: daemon,
                routes_system.HEALTH: health,
                REQUEST_COUNTS: requests,
                EXEC_SERVER: exec_server,
            },
            identify=platform_identify(token),
        )
        platform_runner = web.AppRunner(
            platform_app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=limits.keepalive_s,
        )
        await platform_runner.setup()
        runners.append(platform_runner)
        host, port = listen_address(config.platform.listen)
        cap = ConnectionCap(limits.connections_per_uid)
        await CappedTCPSite(platform_runner, host, port, cap, ssl_context=context).start()
        log.info(
            "platform API serving",
            extra={"listen": config.platform.listen, "tls": context is not None},
        )
    if config.daemon.listen:
        # The network door gets the same per-address cap and keep-alive as the platform's.
        door_cap = ConnectionCap(limits.connections_per_uid)
        runners.append(
            await munge_door.start(
                daemon,
                ROUTES,
                {
                    DAEMON: daemon,
                    routes_system.HEALTH: health,
                    EXEC_SERVER: exec_server,
                    REQUEST_COUNTS: requests,
                },
                keepalive_s=limits.keepalive_s,
                make_site=lambda r, h, p: CappedTCPSite(r, h, p, door_cap),
            )
        )

    if config.daemon.metrics_listen:
        runners.append(await _serve_metrics(daemon, config, requests))

    daemon.reconciler.start()
    # A partition QOS set with scontrol is lost when slurmctld restarts: put the mirror back,
    # in the background (Slurm may be slow to answer; serving must not wait on it).
    mirror = asyncio.create_task(asyncio.to_thread(_mirror_quotas, daemon))
    sd_notify.notify("READY=1")  # every listener serves
    try:
        await stop.wait()
    finally:
        sd_notify.notify("STOPPING=1")
        log.info("rxd stopping")
        await asyncio.wait([mirror], timeout=30)
        await asyncio.to_thread(exec_server.stop)
        await asyncio.to_thread(daemon.reconciler.stop)
        await asyncio.to_thread(daemon.containers.pulls.stop)
        daemon.containers.snapshots.stop()
        for each in runners:
            await each.cleanup()
        _remove_own_socket(sock_path)
        daemon.ledger.close()
        log.info("rxd stopped")


async def _serve_metrics(daemon: Daemon, config: Config, requests: Counters) -> web.AppRunner:
    """The optional plain-HTTP listener for Prometheus: /metrics only, no caller check."""
    app = make_app(
        [*routes_metrics.routes],
        {DAEMON: daemon, REQUEST_COUNTS: requests},
        identify=routes_metrics.anyone,
    )
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, keepalive_timeout=config.limits.keepalive_s
    )
    await runner.setup()
    host, port = listen_address(config.daemon.metrics_listen)
    cap = ConnectionCap(config.limits.connections_per_uid)
    await CappedTCPSite(runner, host, port, cap).start()
    log.info("metrics serving", extra={"listen": config.daemon.metrics_listen})
    return runner


def _mirror_quotas(daemon: Daemon) -> list[dict[str, object]]:
    from rxslurm.daemon.quotas import qos_mirror

    # Also removes mirrors whose quota went while rxd was down; never raises for Slurm errors.
    mirrored = qos_mirror.sync(daemon.ledger, daemon.slurm, tag=daemon.config.slurm.tag)
    if mirrored:
        log.info("quota mirror", extra={"mirrored": mirrored})
    return mirrored


def _remove_own_socket(path: Path) -> None:
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass
