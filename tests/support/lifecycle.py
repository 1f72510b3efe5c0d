"""Helpers for tests that run containers on the real cluster: a daemon set up for it, states."""

from __future__ import annotations

import json
import subprocess
import tomllib
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from tests.support.cli import ok
from tests.support.cluster import wait_for
from tests.support.daemon import Rxd, new_rxd, running_rxd
from tests.support.real_apptainer import BASE_IMAGE

SQUEUE_FORMAT = "%i|%T|%u|%b|%k|%N"
ADMIN = "rxop"  # in the admin group (tests/cluster/users.sh)


def lifecycle_config(root: Path, **extra: str) -> str:
    containers = {"reconcile_interval": "1.0", "stop_grace_s": "3", **extra}
    lines = "".join(f"{k} = {v}\n" for k, v in containers.items())
    return (
        f'[workspaces]\nroot = "{root}/workspaces"\n'
        f'[containers]\nstate_root = "{root}/containers"\nimage_dir = "{root}/images"\n'
        "overlay_size_mb = 64\n"
        f"{lines}"
    )


def start_rxd(extra: str = "", env: dict[str, str] | None = None, **containers: str) -> Rxd:
    """A started rxd that runs containers, for a test that stops it itself (see lifecycle_rxd)."""
    daemon = new_rxd(lambda root: lifecycle_config(root, **containers) + extra)
    daemon.env.update(env or {})
    daemon.start()
    return daemon


def lifecycle_rxd(
    extra: str = "",
    *,
    env: dict[str, str] | None = None,
    bind: Iterable[str] = (),
    **containers: str,
) -> AbstractContextManager[Rxd]:
    """running_rxd with lifecycle_config (``containers`` overrides its [containers] keys) and
    ``extra`` after it: an rxd that runs containers, shut down afterwards."""
    return running_rxd(
        lambda root: lifecycle_config(root, **containers) + extra, env=env, bind=bind
    )


@contextmanager
def gpu_quota_rxd(gpus: int, extra: str = "", **containers: str) -> Iterator[Rxd]:
    """lifecycle_rxd with a deployment quota of ``gpus`` GPUs on partition gpu, set by the admin."""
    with lifecycle_rxd(extra, **containers) as daemon:
        quota = ("admin", "quota", "set", "--partition", "gpu", "--gpus", str(gpus))
        ok(daemon.rxctl(ADMIN, *quota))
        yield daemon


def status(rxd: Rxd, user: str, project: str) -> dict:
    return json.loads(ok(rxd.rxctl(user, "status", "--project", project, "--json")).stdout)


def wait_state(
    rxd: Rxd, project: str, *states: str, timeout: float = 90, user: str = "rxalice"
) -> dict:
    seen: dict = {}

    def reached() -> bool:
        seen.update(status(rxd, user, project))
        return seen["state"] in states

    try:
        wait_for(reached, timeout=timeout, what=f"{project} to reach {states}")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; last status: {seen}\n{rxd.log_text()[-3000:]}") from None
    return seen


def make_project(rxd: Rxd, name: str, *options: str, user: str = "rxalice") -> None:
    ok(rxd.rxctl(user, "project", "create", name, "--image", str(BASE_IMAGE), *options))


def rx_jobs(comment: str) -> list[list[str]]:
    out = subprocess.run(
        ["squeue", "-h", "--all", "-o", SQUEUE_FORMAT], capture_output=True, text=True, check=True
    ).stdout
    rows = [line.split("|") for line in out.splitlines()]
    return [r for r in rows if r[4] == comment]


def comment_of(rxd: Rxd, project: str) -> str:
    ((cid,),) = rxd.ledger_rows(
        "SELECT c.id FROM containers c JOIN projects p ON p.id = c.project_id WHERE p.name = ?",
        [project],
    )
    tag = tomllib.loads(rxd.config.read_text())["slurm"]["tag"]
    return f"{tag}:container={cid}"


def gpu_leases(rxd: Rxd) -> dict[str, int]:
    """Project -> GPUs it holds a quota lease for."""
    return dict(rxd.ledger_rows("SELECT project, gpus FROM leases"))
