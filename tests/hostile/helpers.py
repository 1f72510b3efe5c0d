"""What the hostile tests share: running as test users, folders, a daemon that runs containers."""

from __future__ import annotations

import json
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support import lifecycle
from tests.support.cluster import run_as
from tests.support.daemon import Rxd
from tests.support.lifecycle import start_rxd
from tests.support.real_apptainer import BASE_IMAGE

USERS = ("rxalice", "rxbob", "rxcarol", "rxdave")
IMAGE = str(BASE_IMAGE)  # built locally by tests/cluster/images.sh
RESTING = ("stopped", "disabled", "error")


def uid(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result


def refused(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The one `Error: ...` line of a refused rxctl command (exec and shell exit 125 when rxctl
    itself, not the command, fails)."""
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def sh(user: str, script: str) -> subprocess.CompletedProcess[str]:
    return run_as(user, ["sh", "-c", script])


def workspace_of(rxd: Rxd, user: str, project: str) -> Path:
    shown = json.loads(ok(rxd.rxctl(user, "project", "show", project, "--json")).stdout)
    return Path(shown["workspace"])


def acl_tree(folder: Path) -> str:
    """Every ACL entry below and at `folder`, numeric, as root sees them."""
    return subprocess.run(
        ["getfacl", "-R", "-P", "-p", "-n", str(folder)], capture_output=True, text=True, check=True
    ).stdout


def named_entries_for(folder: Path, user: str) -> list[str]:
    """ "path: entry" for every ACL entry (access or default) naming `user` anywhere in the tree,
    except on what `user` owns (an entry there adds nothing to what owning it gives)."""
    needle, me = f"user:{uid(user)}:", str(uid(user))
    found = []
    for block in acl_tree(folder).split("\n\n"):
        lines = block.strip().splitlines()
        path = next((x.removeprefix("# file: ") for x in lines if x.startswith("# file: ")), "")
        owner = next((x.removeprefix("# owner: ") for x in lines if x.startswith("# owner: ")), "")
        if owner != me:
            found += [f"{path}: {x}" for x in lines if needle in x]
    return found


def held_job_as(user: str, *options: str) -> int:
    """A held job of `user` in partition cpu, as any cluster user can submit one; its id."""
    result = ok(run_as(user, ["sbatch", "--parsable", "-p", "cpu", "--hold", *options]))
    return int(result.stdout.strip().split(";")[0])


def wait_state(rxd: Rxd, user: str, project: str, *states: str, timeout: float = 120) -> dict:
    """The lifecycle helper with the user first, as the hostile tests name who acts."""
    return lifecycle.wait_state(rxd, project, *states, timeout=timeout, user=user)


@contextmanager
def container_daemon(extra: str = "") -> Iterator[Rxd]:
    """An rxd that runs containers; every container it made is stopped and its jobs cancelled
    afterwards, so the shared cluster is free again."""
    daemon = start_rxd(extra)
    for user in USERS:
        ok(daemon.rxctl(user, "whoami"))  # standalone: bound on first contact
    try:
        yield daemon
    finally:
        try:
            daemon.cancel_own_jobs()
            assert daemon.stop() == 0, daemon.log_text()
        finally:
            shutil.rmtree(daemon.root, ignore_errors=True)
