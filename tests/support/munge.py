"""MUNGE for tests: whether the cluster's munged answers, and a second munged with another key."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

CLUSTER_SOCKET = Path("/run/munge/munge.socket.2")

# Skipped where the socket is absent (tests/support/tiers.py); in the host tier, not `make unit`,
# which runs before tests/cluster/setup.sh has started munged.
needs_munged = pytest.mark.munged(reason="needs the cluster's munged (tests/cluster/setup.sh)")


@pytest.fixture(scope="session")
def other_munged() -> Iterator[str]:
    """The socket of a munged of our own with a key of its own (the cluster's is never touched)."""
    munged = shutil.which("munged") or "/usr/sbin/munged"
    if os.geteuid() != 0 or not os.path.exists(munged):
        pytest.skip("a second munged needs root and the munge package")
    # 0755 so test users can encode there too; the key stays 0600.
    folder = Path(tempfile.mkdtemp(prefix="rxmunge-", dir="/var/tmp"))
    os.chmod(folder, 0o755)
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o600)
    sock = folder / "munge.sock"
    proc = subprocess.Popen(
        [
            munged,
            "--foreground",
            "--force",
            f"--key-file={key}",
            f"--socket={sock}",
            f"--pid-file={folder / 'munged.pid'}",
            f"--log-file={folder / 'munged.log'}",
            f"--seed-file={folder / 'munged.seed'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        from tests.support.cluster import wait_for

        wait_for(lambda: sock.is_socket() or proc.poll() is not None, 10, what="munged's socket")
        if proc.poll() is not None:
            pytest.fail(f"second munged exited: {proc.stderr.read() if proc.stderr else ''}")
        yield str(sock)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)
