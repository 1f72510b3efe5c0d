"""Running rxd: bind the Unix socket safely, serve until SIGTERM, clean up."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import stat
from pathlib import Path

from aiohttp import web

from rxslurm.daemon import (
    munge_door,
    platform,
    routes_admin,
    routes_containers,
    routes_identity,
    routes_projects,
    routes_system,
)
from rxslurm.daemon.api import make_app
from rxslurm.daemon.config import Config
from rxslurm.daemon.context import DAEMON, Daemon
from rxslurm.daemon.exec_server import ExecServer
from rxslurm.daemon.ledger import Ledger
from rxslurm.daemon.platform import platform_identify, read_token
from rxslurm.slurm.adapter import SlurmCli

log = logging.getLogger("rxslurm.daemon")


ROUTES = [
    *routes_system.routes,
    *routes_identity.routes,
    *routes_projects.routes,
    *routes_containers.routes,
    *routes_admin.routes,
]


class StartupError(Exception):
    """rxd cannot start; the message says why."""


def claim_socket_path(path: Path) -> None:
    """Make `path` free for a new socket, or refuse.

    A socket file left by a crashed rxd is removed; one a live rxd answers on is not.
    Anything at the path that is not a socket (a file, a planted symlink) is never removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise StartupError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise StartupError(f"cannot probe existing socket {path}: {exc}") from None
        log.info("removing stale socket", extra={"socket": str(path)})
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise StartupError(f"another rxd is already serving on {path}")


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
    daemon = build_daemon(config)
    # An unusable pull account or image folder stops rxd here, before it serves anyone.
    await asyncio.to_thread(daemon.runtime.pulls.start)
    app = make_app(ROUTES, {DAEMON: daemon})
    sock_path = config.daemon.socket
    claim_socket_path(sock_path)

    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    runners = [runner]
    site = web.UnixSite(runner, str(sock_path))
    await site.start()
    # Anyone may connect: access is decided per request from the peer's credentials.
    os.chmod(sock_path, 0o666)  # noqa: S103
    log.info("rxd serving", extra={"socket": str(sock_path), "ledger": str(config.daemon.ledger)})

    if config.platform.listen:
        token = read_token(config.platform.token_file)
        platform_app = make_app(
            [*ROUTES, *platform.routes], {DAEMON: daemon}, identify=platform_identify(token)
        )
        platform_runner = web.AppRunner(platform_app, access_log=None, handle_signals=False)
        await platform_runner.setup()
        runners.append(platform_runner)
        host, port = config.platform.listen.rsplit(":", 1)
        await web.TCPSite(platform_runner, host.strip("[]"), int(port)).start()
        log.info("platform API serving", extra={"listen": config.platform.listen})
    if config.daemon.listen:
        runners.append(await munge_door.start(daemon, ROUTES))

    daemon.reconciler.start()
    exec_server = ExecServer.start(daemon)
    # A partition QOS set with scontrol is lost when slurmctld restarts: put the mirror back,
    # in the background (Slurm may be slow to answer; serving must not wait on it).
    mirror = asyncio.create_task(asyncio.to_thread(_mirror_quotas, daemon))
    try:
        await stop.wait()
    finally:
        log.info("rxd stopping")
        await asyncio.wait([mirror], timeout=30)
        await asyncio.to_thread(exec_server.stop)
        await asyncio.to_thread(daemon.reconciler.stop)
        await asyncio.to_thread(daemon.runtime.pulls.stop)
        for each in runners:
            await each.cleanup()
        _remove_own_socket(sock_path)
        daemon.ledger.close()
        log.info("rxd stopped")


def _mirror_quotas(daemon: Daemon) -> list[dict[str, object]]:
    from rxslurm.daemon import qos_mirror

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
