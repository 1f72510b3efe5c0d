"""Slurm's controller hooks poke rxd at once; rxd trusts the poke to mean only "look now"."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rxslurm.slurm.hooks import job_event
from tests.support.cluster import run_as
from tests.support.daemon import VENV_BIN, Rxd


class FakeRxd:
    """A Unix socket that records one HTTP request and answers 202."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.received = b""
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            while b"\r\n\r\n" not in self.received or not self.received.endswith(b"}"):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                self.received += chunk
            conn.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")

    def body(self) -> dict:
        self.thread.join(timeout=5)
        return json.loads(self.received.split(b"\r\n\r\n", 1)[1])


@pytest.fixture
def listing(tmp_path: Path) -> Path:
    return tmp_path / "hook-sockets"


def env(name: str = "rx-alpha", context: str = "prolog_slurmctld") -> dict[str, str]:
    return {"SLURM_JOB_ID": "42", "SLURM_JOB_NAME": name, "SLURM_SCRIPT_CONTEXT": context}


def test_prolog_pokes_every_listed_socket_with_the_event(tmp_path: Path, listing: Path) -> None:
    fakes = [FakeRxd(tmp_path / "a.sock"), FakeRxd(tmp_path / "b.sock")]
    listing.write_text(f"# test\n{fakes[0].path}\n\n{fakes[1].path}\n")
    assert job_event.main(env(), listing) == 0
    assert [f.body() for f in fakes] == [{"event": "start", "job_id": 42}] * 2
    assert b"POST /v1/hooks/job HTTP/1.1" in fakes[0].received


def test_epilog_is_an_end_event(tmp_path: Path, listing: Path) -> None:
    fake = FakeRxd(tmp_path / "a.sock")
    listing.write_text(f"{fake.path}\n")
    assert job_event.main(env(context="epilog_slurmctld"), listing) == 0
    assert fake.body() == {"event": "end", "job_id": 42}


def test_other_jobs_are_ignored_and_nothing_fails(tmp_path: Path, listing: Path) -> None:
    listing.write_text(f"{tmp_path / 'missing.sock'}\n")
    assert job_event.main(env(name="train-resnet"), listing) == 0
    assert job_event.main(env(), listing) == 0  # no rxd listening: still 0
    assert job_event.main({"SLURM_JOB_NAME": "rx-x", "SLURM_JOB_ID": "$(id)"}, listing) == 0


def test_default_socket_without_a_listing(tmp_path: Path) -> None:
    assert job_event.sockets(tmp_path / "absent") == ["/run/rxslurm/rxd.sock"]


def test_only_slurm_users_may_send_job_events(rxd: Rxd) -> None:
    script = (
        "import sys\nfrom rxslurm.cli.client import Client, ApiError\n"
        "try:\n    Client(sys.argv[1]).post('/v1/hooks/job', {'event': 'end', 'job_id': 1})\n"
        "except ApiError as e:\n    print(e.status, e.message)\n"
    )
    result = run_as("rxalice", [str(VENV_BIN / "python"), "-c", script, str(rxd.socket)])
    assert result.stdout == "403 only Slurm's controller hooks may send job events\n"


@pytest.fixture
def hooked_rxd() -> Iterator[Rxd]:
    """An rxd whose timer never fires in a test's time: only hooks and its own pokes wake it."""
    from tests.support.lifecycle import lifecycle_rxd

    with lifecycle_rxd(reconcile_interval="3600") as daemon:
        listing = job_event.SOCKETS_FILE
        before = listing.read_text() if listing.exists() else None
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text((before or "") + f"{daemon.socket}\n")
        try:
            yield daemon
        finally:
            if before is None:
                listing.unlink(missing_ok=True)
            else:
                listing.write_text(before)


@pytest.mark.cluster
def test_epilog_hook_reports_an_outside_scancel_at_once(hooked_rxd: Rxd) -> None:
    from tests.support.cli import ok
    from tests.support.lifecycle import make_project, wait_state

    make_project(hooked_rxd, "hooked")
    ok(hooked_rxd.rxctl("rxalice", "enable", "--project", "hooked"))
    # Readiness comes from the fast polling while starting, not from the 3600 s timer.
    running = wait_state(hooked_rxd, "hooked", "running", timeout=30)
    ok(run_as("rxalice", ["scancel", str(running["job_id"])]))
    stopped = wait_state(hooked_rxd, "hooked", "stopped", timeout=20)
    assert stopped["reason"] == "cancelled outside rx-slurm"
