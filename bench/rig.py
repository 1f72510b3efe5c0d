"""A bench rxd on the local test cluster, and its projects' containers.

The daemon is the test suite's (tests.support.daemon): its own folder, ledger and sockets, and a
`[slurm] tag` of its own, so it never touches jobs of the lead's or other helpers' daemons that
share the cluster. Container states are read from its ledger (SQLite in WAL mode allows a reader
beside rxd), which costs no API request and no process.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from bench.harness import USER, BenchError, must
from tests.support.daemon import Rxd, new_rxd
from tests.support.hook_targets import hooks_poke
from tests.support.real_apptainer import BASE_IMAGE

# The image the test cluster builds (tests/cluster/images.sh): no pull, no network.
IMAGE = str(BASE_IMAGE)
RESTING = ("stopped", "disabled", "error")


def suffix() -> str:
    return secrets.token_hex(3)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_config(root: Any, tag: str, reconcile_interval: float = 5.0) -> str:
    """A production-like config (the default reconcile interval) inside the daemon's folder,
    with the network door open on a loopback port (its first line belongs to [daemon])."""
    return (
        f'listen = "127.0.0.1:{free_port()}"\n'
        f'[workspaces]\nroot = "{root}/workspaces"\n'
        f'[containers]\nstate_root = "{root}/containers"\nimage_dir = "{root}/images"\n'
        f"overlay_size_mb = 64\nstop_grace_s = 3\nreconcile_interval = {reconcile_interval}\n"
        f'[slurm]\ntag = "{tag}"\n'
    )


@contextmanager
def bench_rxd(
    tag: str | None = None, reconcile_interval: float = 5.0, hooks: bool = True
) -> Iterator[Rxd]:
    """A running bench rxd (poked by Slurm's hooks, unless hooks=False); stopped, and every
    job it left cancelled, afterwards."""
    tag = tag or f"bench-{suffix()}"
    daemon = new_rxd(lambda root: bench_config(root, tag, reconcile_interval))
    stack = ExitStack()
    try:
        if hooks:
            stack.enter_context(hooks_poke(daemon.socket))
        daemon.start()
        yield daemon
    finally:
        stack.close()
        try:
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.stop()
        finally:
            daemon.cancel_own_jobs()
            daemon.remove_folders()


def tag_of(rxd: Rxd) -> str:
    import tomllib

    return str(tomllib.loads(rxd.config.read_text())["slurm"]["tag"])


def network_door(rxd: Rxd) -> str:
    """The bench rxd's network door, "host:port"."""
    import tomllib

    return str(tomllib.loads(rxd.config.read_text())["daemon"]["listen"])


@dataclass
class Container:
    rxd: Rxd
    project: str
    user: str = USER

    def row(self) -> dict[str, Any]:
        conn = sqlite3.connect(f"file:{self.rxd.ledger}?mode=ro", uri=True, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            row = conn.execute(
                "SELECT c.* FROM containers c JOIN projects p ON p.id = c.project_id "
                "WHERE p.name = ?",
                [self.project],
            ).fetchone()
        finally:
            conn.close()
        return dict(row) if row else {}

    def state(self) -> str | None:
        return self.row().get("state")

    def wait(self, *states: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            row = self.row()
            if row.get("state") in states:
                return row
            if row.get("state") == "error" and "error" not in states:
                raise BenchError(f"{self.project} failed: {row.get('last_error')}")
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{self.project} did not reach {states} in {timeout:g}s (last: {row})\n"
                    f"{self.rxd.log_text()[-2000:]}"
                )
            time.sleep(0.05)

    def create(self) -> None:
        must(self.rxd.rxctl(self.user, "whoami"), "rxctl whoami")
        must(
            self.rxd.rxctl(self.user, "project", "create", self.project, "--image", IMAGE),
            f"creating project {self.project}",
        )

    def enable(self) -> dict[str, Any]:
        must(
            self.rxd.rxctl(self.user, "enable", "--project", self.project), f"enable {self.project}"
        )
        return self.wait("running")

    def stop(self) -> dict[str, Any]:
        must(self.rxd.rxctl(self.user, "stop", "--project", self.project), f"stop {self.project}")
        return self.wait(*RESTING)

    def stop_noting(self, notes: list[str]) -> None:
        """Stop at a benchmark's end: a failure becomes a note of its result, never an error
        that would throw away the figures already measured."""
        try:
            self.stop()
        except BenchError as exc:
            notes.append(f"stopping the container failed: {exc}")

    def job_gone(self, job_id: int) -> bool:
        from bench.harness import run_as

        out = run_as(["squeue", "-h", "-j", str(job_id), "-o", "%T"]).stdout.strip()
        return out in ("", "COMPLETED", "CANCELLED")


def new_container(rxd: Rxd, prefix: str) -> Container:
    """A project with a unique name (jobs are Slurm singletons named rx-<project>)."""
    container = Container(rxd, f"{prefix}-{suffix()}")
    container.create()
    return container
