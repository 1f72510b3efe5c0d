"""The real local Slurm test cluster, and helpers to act as its test users.

Tests marked ``cluster`` get the session fixture ``slurm_cluster`` automatically: it runs
tests/cluster/setup.sh once per session (idempotent: quick when the cluster is already up), or,
with ``RXSLURM_TEST_CLUSTER=existing``, only checks that slurmctld answers.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

CLUSTER_DIR = Path(__file__).resolve().parent.parent / "cluster"
SETUP = CLUSTER_DIR / "setup.sh"
MODE_ENV = "RXSLURM_TEST_CLUSTER"
# Where this interpreter's console scripts (rxd, rxctl) live; test users can run them.
VENV_BIN = Path(sys.executable).parent
SYSTEM_PATH = ("/usr/local/bin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/sbin", "/sbin")

T = TypeVar("T")


@dataclass(frozen=True)
class Cluster:
    """What tests/cluster/setup.sh builds (the shared test conventions)."""

    name: str = "rxcluster"
    account: str = "rxtest"
    nodes: tuple[str, ...] = ("n1", "n2", "n3")
    partitions: tuple[str, ...] = ("cpu", "gpu")
    default_partition: str = "cpu"
    gres: str = "gpu:a100:2"
    users: tuple[str, ...] = ("rxalice", "rxbob", "rxcarol", "rxdave", "rxop", "rxsvc")


def slurmctld_up() -> bool:
    try:
        result = subprocess.run(
            ["scontrol", "ping"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and " is UP" in result.stdout


def run_setup(timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run tests/cluster/setup.sh (as root); the long time-out covers installing packages."""
    return subprocess.run(
        [str(SETUP)], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="session")
def slurm_cluster() -> Cluster:
    """The running test cluster; fails (once, for every test that needs it) if it cannot be had."""
    if os.environ.get(MODE_ENV) == "existing":
        if not slurmctld_up():
            pytest.fail(
                f"{MODE_ENV}=existing, but `scontrol ping` does not say UP: "
                f"start the cluster with `sudo {SETUP}`",
                pytrace=False,
            )
        return Cluster()
    if os.geteuid() != 0:
        pytest.fail(
            f"cluster tests start the cluster with {SETUP}, which needs root: run the tests "
            f"as root, or run it once as root and set {MODE_ENV}=existing",
            pytrace=False,
        )
    result = run_setup()
    if result.returncode != 0:
        pytest.fail(
            f"{SETUP} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}",
            pytrace=False,
        )
    return Cluster()


@pytest.fixture(autouse=True)
def _cluster_for_marked_tests(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("cluster") is not None:
        request.getfixturevalue("slurm_cluster")


EXEC_PATH_ENV = "RXSLURM_EXEC_PATH"


def user_env(user: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A test user's clean environment: HOME, USER, LOGNAME, PATH (this venv's bin first) and
    LANG, plus ``extra``."""
    pw = pwd.getpwnam(user)
    # The exec path the suite runs under (RXSLURM_EXEC_PATH=agent|step), for every rxctl.
    chosen = {EXEC_PATH_ENV: os.environ[EXEC_PATH_ENV]} if EXEC_PATH_ENV in os.environ else {}
    return {
        "HOME": pw.pw_dir,
        "USER": user,
        "LOGNAME": user,
        "PATH": os.pathsep.join((str(VENV_BIN), *SYSTEM_PATH)),
        "LANG": "C.UTF-8",
        **chosen,
        **(extra or {}),
    }


def spawn_as(
    user: str,
    argv: Sequence[str],
    output: int = subprocess.PIPE,
    stdin: int = subprocess.DEVNULL,
) -> subprocess.Popen[str]:
    """A process of `user` in the background (as run_as runs it, from their home), its output
    collected (or sent to `output`), its stdin a pipe if asked."""
    pw = pwd.getpwnam(user)
    return subprocess.Popen(
        list(argv),
        user=pw.pw_uid,
        group=pw.pw_gid,
        extra_groups=os.getgrouplist(user, pw.pw_gid),
        env=user_env(user),
        cwd=pw.pw_dir if os.path.isdir(pw.pw_dir) else "/",
        stdin=stdin,
        stdout=output,
        stderr=output,
        text=True,
    )


def run_as(
    user: str,
    argv: Sequence[str],
    input: str | None = None,
    timeout: float = 60,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv as a test user with their groups and a clean environment (needs root).

    The working directory defaults to the user's home, where e.g. sbatch may write its output.
    ``env`` adds to (or overrides) HOME, USER, LOGNAME, PATH (with this venv's bin first) and LANG.
    """
    pw = pwd.getpwnam(user)
    if cwd is None:
        cwd = pw.pw_dir if os.path.isdir(pw.pw_dir) else "/"
    return subprocess.run(
        list(argv),
        user=pw.pw_uid,
        group=pw.pw_gid,
        extra_groups=os.getgrouplist(user, pw.pw_gid),
        env=user_env(user, env),
        cwd=cwd,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def processes_with(marker: str) -> list[int]:
    """Pids whose command line holds `marker` (a Slurm step's, a container's command: on this
    one-machine cluster every node's processes are in this /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry))
    return found


def wait_for(
    predicate: Callable[[], T], timeout: float, interval: float = 0.2, what: str = "a condition"
) -> T:
    """Poll predicate until it returns something truthy, and return that; raise on time-out."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"timed out after {timeout:g}s waiting for {what} (last result: {value!r:.200})"
            )
        time.sleep(interval)
