"""What the hostile tests share: running as test users, folders, a daemon that runs containers."""

from __future__ import annotations

import json
import pwd
import subprocess
from contextlib import AbstractContextManager
from pathlib import Path

from tests.support import lifecycle
from tests.support.cli import ok
from tests.support.cluster import run_as
from tests.support.daemon import Rxd
from tests.support.lifecycle import lifecycle_rxd
from tests.support.real_apptainer import BASE_IMAGE

USERS = ("rxalice", "rxbob", "rxcarol", "rxdave")
IMAGE = str(BASE_IMAGE)  # built locally by tests/cluster/images.sh
RESTING = ("stopped", "disabled", "error")


def uid(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


def sh(user: str, script: str) -> subprocess.CompletedProcess[str]:
    return run_as(user, ["sh", "-c", script])


def workspace_of(rxd: Rxd, user: str, project: str) -> Path:
    shown = json.loads(
        ok(rxd.rxctl(user, "project", "show", "--project", project, "--json")).stdout
    )
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


def container_daemon(extra: str = "") -> AbstractContextManager[Rxd]:
    """An rxd that runs containers, every test user bound to it; shut down afterwards (its jobs
    cancelled, so the shared cluster is free again)."""
    return lifecycle_rxd(extra, bind=USERS)
