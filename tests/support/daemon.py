"""A real rxd for tests: own config and shared folders in a folder test users can reach; its
sockets and ledger in a folder of its own under PRIVATE_ROOT, which compute nodes and login nodes
do not see (tests/cluster/setup.sh, tests/support/login_node.py)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.real_apptainer import APPTAINER

VENV_BIN = Path(sys.executable).parent
RXD = str(VENV_BIN / "rxd")
RXCTL = str(VENV_BIN / "rxctl")


def test_root() -> Path:
    """A fresh folder every test user can traverse (pytest's tmp_path is 0700 root)."""
    base = Path(tempfile.gettempdir()) / "rxslurm-tests"
    base.mkdir(mode=0o755, exist_ok=True)
    os.chmod(base, 0o755)
    root = Path(tempfile.mkdtemp(prefix="rxd-", dir=base))
    os.chmod(root, 0o755)
    return root


# A helper, not a test, whatever module imports it.
test_root.__test__ = False  # type: ignore[attr-defined]

# Where every test rxd keeps its sockets and ledger, each in a folder named as its test folder:
# one folder that hosts other than rxd's can hide as a whole, as a real compute node does not
# have rxd's /run/rxslurm and /var/lib/rxslurm. tests/cluster/setup.sh hides this path (the same
# literal) from every slurmd, so jobs and steps reach a test rxd only through its network door.
# It is never removed (a folder hidden by a mount elsewhere must stay that folder).
PRIVATE_ROOT = Path("/run/rxslurm-tests")


@dataclass
class Rxd:
    root: Path
    extra_config: str = ""
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def private(self) -> Path:
        """This daemon's sockets and ledger: rxd's host only."""
        if os.geteuid() != 0:
            # The unit tier runs as nobody, which cannot write /run; it has no nodes to hide from.
            return self.root / "private"
        return PRIVATE_ROOT / self.root.name

    @property
    def socket(self) -> Path:
        return self.private / "run" / "rxd.sock"

    @property
    def ledger(self) -> Path:
        return self.private / "state" / "ledger.db"

    @property
    def config(self) -> Path:
        return self.root / "rxd.toml"

    @property
    def log(self) -> Path:
        return self.root / "rxd.log"

    def write_config(self) -> None:
        # Everything rxd writes stays inside this test's folder, unless the test says otherwise.
        defaults = ""
        if "[workspaces]" not in self.extra_config:
            defaults += f'[workspaces]\nroot = "{self.root}/workspaces"\n'
        if "[containers]" not in self.extra_config:
            defaults += (
                f'[containers]\nstate_root = "{self.root}/containers"\n'
                f'image_dir = "{self.root}/images"\n'
            )
        if "[apptainer]" not in self.extra_config:
            # The real runtime by its absolute path, whatever else is on PATH.
            defaults += f'[apptainer]\nbinary = "{APPTAINER}"\n'
        if "[slurm]" not in self.extra_config:
            # Each test daemon touches only its own jobs, even when several share the cluster.
            defaults += f'[slurm]\ntag = "t-{self.root.name}"\n'
        self.config.write_text(
            "[daemon]\n"
            f'socket = "{self.socket}"\n'
            f'ledger = "{self.ledger}"\n'
            'log_level = "debug"\n'
            f"{self.extra_config}"
            f"{defaults}"
        )

    def migrate(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [RXD, "migrate", "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def start(self, *, wait: bool = True) -> None:
        log = self.log.open("ab")
        self.proc = subprocess.Popen(
            [RXD, "serve", "--config", str(self.config)],
            stdout=log,
            stderr=log,
            env={**os.environ, **self.env},
        )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        from rxslurm.cli.client import Client, ClientError
        from tests.support.cluster import wait_for

        client = Client(str(self.socket), timeout=5)

        def answers() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"rxd exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                client.get("/v1/whoami")
            except ClientError:
                return False
            return True

        try:
            wait_for(answers, timeout, interval=0.05, what="rxd to answer")
        except TimeoutError:
            raise AssertionError(f"rxd not ready after {timeout}s:\n{self.log_text()}") from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def cancel_own_jobs(self) -> None:
        """Cancel the Slurm jobs this daemon's containers and image builds left (rxd keeps them
        across restarts)."""
        import tomllib

        tag = tomllib.loads(self.config.read_text()).get("slurm", {}).get("tag", "rx")
        listed = subprocess.run(
            ["squeue", "-h", "--all", "-o", "%i|%k"], capture_output=True, text=True, timeout=30
        )
        ids = [
            line.split("|", 1)[0]
            for line in listed.stdout.splitlines()
            if line.partition("|")[2].startswith((f"{tag}:container=", f"{tag}:build="))
        ]
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True, timeout=30)

    def remove_folders(self) -> None:
        """Remove this daemon's folder and its private folder (sockets, ledger)."""
        shutil.rmtree(self.private, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def ledger_rows(self, query: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a query on this daemon's ledger, opened read-only (WAL: never blocks rxd's
        writers)."""
        conn = sqlite3.connect(f"{self.ledger.as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(query, tuple(args)).fetchall()
        finally:
            conn.close()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def rxctl(self, user: str | None, *args: str, input: str | None = None, timeout: float = 120):
        """Run rxctl as a test user (None: as root) against this daemon."""
        from tests.support.cluster import run_as

        argv = [RXCTL, "--socket", str(self.socket), *args]
        if user is None:
            return subprocess.run(
                argv, capture_output=True, text=True, input=input, timeout=timeout, check=False
            )
        return run_as(user, argv, input=input, timeout=timeout)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for rxd's network door)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_rxd(extra_config: str | Callable[[Path], str] = "", *, migrate: bool = True) -> Rxd:
    """An rxd with its own folder and config (extra_config goes after its [daemon] lines; a
    function gets the daemon's folder and returns the text)."""
    root = test_root()
    text = extra_config(root) if callable(extra_config) else extra_config
    rxd = Rxd(root=root, extra_config=text)
    for folder in (rxd.private.parent, rxd.private, rxd.socket.parent):
        folder.mkdir(mode=0o755, exist_ok=folder == rxd.private.parent)
        os.chmod(folder, 0o755)  # whatever the umask: test users reach the socket
    rxd.write_config()
    if migrate:
        result = rxd.migrate()
        assert result.returncode == 0, result.stderr
    return rxd


def shutdown(daemon: Rxd) -> None:
    """The one teardown of a test's rxd: stop it (and check it stopped cleanly, exit 0), then
    cancel the jobs its containers left (stopped first, it cannot act on them going), then remove
    its folder. The jobs are cancelled and the folder removed even when the stop fails."""
    try:
        if daemon.proc is not None and daemon.proc.poll() is None:
            assert daemon.stop() == 0, daemon.log_text()
    finally:
        try:
            daemon.cancel_own_jobs()
        finally:
            daemon.remove_folders()


@contextmanager
def running_rxd(
    extra_config: str | Callable[[Path], str] = "",
    *,
    env: dict[str, str] | None = None,
    bind: Iterable[str] = (),
) -> Iterator[Rxd]:
    """A started rxd (see new_rxd for extra_config; env adds to its environment), shut down
    afterwards. Each user in ``bind`` calls it once first: standalone mode binds a user on first
    contact, which shows (e.g. in member lists), so tests make it happen before they look."""
    daemon = new_rxd(extra_config)
    daemon.env.update(env or {})
    try:
        daemon.start()
        for user in bind:
            result = daemon.rxctl(user, "whoami")
            assert result.returncode == 0, (user, result.stdout, result.stderr)
        yield daemon
    finally:
        shutdown(daemon)


@pytest.fixture
def rxd() -> Iterator[Rxd]:
    """A running rxd with a fresh ledger, for one test. A module that needs another
    configuration or scope overrides this fixture with one that enters running_rxd."""
    with running_rxd() as daemon:
        yield daemon
