"""Finding 7: any user's held job with a container's comment and name must not become its job.

A job is a container's only if it runs as the container's runtime user under the container's
name, and it is adopted only if it was submitted after the container asked for one. Someone
else's imitation is left alone: never adopted, never cancelled. Fast tests on a real ledger with
a Slurm stand-in, then the recipe on the real cluster as rxdave against rxalice.
"""

from __future__ import annotations

import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hostile.fake_slurm import rig
from tests.hostile.helpers import held_job_as
from tests.support.cli import ok
from tests.support.cluster import run_as
from tests.support.daemon import Rxd
from tests.support.lifecycle import lifecycle_rxd, make_project, wait_state

VICTIM = {"name": "rx-p", "state": "starting", "asked_s_ago": 5}

# ----------------------------------------------------------------------- fast: the reconciler


def test_a_spoofed_job_is_neither_adopted_nor_cancelled(tmp_path: Path) -> None:
    r = rig(tmp_path, VICTIM)
    r.slurm.add(500, "rxdave", "rx-p", 1)
    report = r.reconciler.reconcile_once()
    assert report.ok
    assert r.container()["job_id"] is None
    assert r.slurm.cancelled == []
    # The victim's own job, submitted later with a higher id, is the one adopted.
    r.slurm.add(501, "rxalice", "rx-p", 1)
    r.reconciler.reconcile_once()
    assert r.container()["job_id"] == 501
    r.reconciler.reconcile_once()
    assert r.slurm.cancelled == []


@pytest.mark.parametrize(
    ("user", "name"),
    [("rxdave", "rx-p"), ("rxalice", "rx-other"), ("rxdave", "rx-bait")],
)
def test_only_the_runtime_user_under_the_containers_name_is_adopted(
    tmp_path: Path, user: str, name: str
) -> None:
    r = rig(tmp_path, VICTIM)
    r.slurm.add(77, user, name, 1)
    r.reconciler.reconcile_once()
    assert r.container()["job_id"] is None and r.slurm.cancelled == []


def test_a_job_from_before_the_container_asked_is_not_adopted(tmp_path: Path) -> None:
    r = rig(tmp_path, {**VICTIM, "asked_s_ago": 20})
    r.slurm.add(40, "rxalice", "rx-p", 1, submit_time=int(time.time()) - 60)
    r.reconciler.reconcile_once()
    assert r.container()["job_id"] is None
    # It is the container's own (its user, its name): a leftover that no one expects.
    assert r.slurm.cancelled == [40]


def test_a_queued_container_adopts_nothing(tmp_path: Path) -> None:
    # Waiting for quota, it has asked Slurm for nothing: no job can be its answer.
    r = rig(tmp_path, {"name": "rx-p", "state": "waiting_for_resources"})
    r.slurm.add(500, "rxdave", "rx-p", 1)
    r.slurm.add(501, "rxalice", "rx-p", 1)
    r.reconciler.reconcile_once()
    row = r.container()
    assert (row["state"], row["job_id"]) == ("waiting_for_resources", None)
    assert 500 not in r.slurm.cancelled


def test_imitations_of_a_running_container_are_left_alone(tmp_path: Path) -> None:
    r = rig(tmp_path, {"name": "rx-p", "state": "running", "job_id": 10})
    r.slurm.add(10, "rxalice", "rx-p", 1, state="RUNNING", reason="None")
    r.slurm.add(11, "rxdave", "rx-p", 1)  # imitates the running container
    r.slurm.add(12, "rxdave", "rx-q", 99)  # names a container that does not exist
    r.reconciler.reconcile_once()
    assert r.slurm.cancelled == []
    assert r.container()["job_id"] == 10


# ----------------------------------------------------------------------- the recipe on the cluster


@pytest.fixture(scope="module")
def daemon() -> Iterator[Rxd]:
    with lifecycle_rxd() as rxd:
        yield rxd


def squeue_line(job_id: int) -> str:
    listed = subprocess.run(
        ["squeue", "-h", "-j", str(job_id), "-o", "%u|%T|%r"],
        capture_output=True,
        text=True,
        check=False,
    )
    return listed.stdout.strip()


@pytest.mark.cluster
def test_a_held_bait_never_becomes_the_victims_job(daemon: Rxd) -> None:
    tag = tomllib.loads(daemon.config.read_text())["slurm"]["tag"]
    # The daemon's ledger is new: the first container enabled gets id 1, as rxdave can guess.
    bait = held_job_as(
        "rxdave", "-J", "rx-sj-victim", f"--comment={tag}:container=1", "--wrap", "true"
    )
    try:
        make_project(daemon, "sj-victim")
        ok(daemon.rxctl("rxalice", "enable", "--project", "sj-victim"))
        running = wait_state(daemon, "sj-victim", "running")
        assert running["job_id"] != bait
        assert squeue_line(running["job_id"]).startswith("rxalice|RUNNING")
        # Stopping and starting again takes many passes, each of which saw the bait.
        ok(daemon.rxctl("rxalice", "stop", "--project", "sj-victim"))
        wait_state(daemon, "sj-victim", "stopped")
        ok(daemon.rxctl("rxalice", "start", "--project", "sj-victim"))
        again = wait_state(daemon, "sj-victim", "running")
        assert again["job_id"] not in (bait, running["job_id"])
        ok(daemon.rxctl("rxalice", "stop", "--project", "sj-victim"))
        wait_state(daemon, "sj-victim", "stopped")
        # Never cancelled: still held, as rxdave left it.
        assert squeue_line(bait) == "rxdave|PENDING|JobHeldUser"
        assert "cancelling orphan job" not in daemon.log_text()
    finally:
        run_as("rxdave", ["scancel", str(bait)])
