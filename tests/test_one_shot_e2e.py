"""One-shot commands (`rxctl run-once`) end to end: real rxd, real cluster, real Apptainer.

A command runs once as a Slurm job of its own in the project's image, its output streamed to the
caller and rxctl exiting with its status; afterwards no job is left in Slurm's queue, no
Apptainer instance of the runtime user, no quota lease, and its output file is gone. A viewer is
refused; Ctrl-C cancels the job.
"""

from __future__ import annotations

import glob
import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import lifecycle
from tests.support.cli import ok, refused
from tests.support.cluster import run_as, spawn_as, wait_for
from tests.support.daemon import RXCTL, Rxd

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("container_runtime")]

PROJECT = "once-alpha"
RUNTIME_USER = "rxalice"  # the owner, whom the project runs as (bound)


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    with lifecycle.lifecycle_rxd(bind=("rxalice", "rxdave")) as daemon:
        lifecycle.make_project(daemon, PROJECT)
        member = ("project", "member", "add", "--project", PROJECT, "rxdave", "--role", "viewer")
        ok(daemon.rxctl("rxalice", *member))
        # The container's folder, where a one-shot's output goes, is made by its first start;
        # then it sleeps, so no instance of the project runs while one-shots do.
        ok(daemon.rxctl("rxalice", "enable", "--project", PROJECT))
        lifecycle.wait_state(daemon, PROJECT, "running", timeout=300)
        ok(daemon.rxctl("rxalice", "stop", "--project", PROJECT))
        lifecycle.wait_state(daemon, PROJECT, "stopped", timeout=120)
        yield daemon


def one_shot(rxd: Rxd) -> tuple[int, int, str]:
    """The newest one-shot's id, job and state_dir."""
    ((one_shot_id, job_id, state_dir),) = rxd.ledger_rows(
        "SELECT id, job_id, state_dir FROM one_shot_jobs ORDER BY id DESC LIMIT 1", []
    )
    return one_shot_id, job_id, state_dir


def squeue_state(job_id: int) -> str:
    listed = subprocess.run(
        ["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True
    )
    return listed.stdout.strip() if listed.returncode == 0 else ""


def sacct_state(job_id: int) -> str:
    listed = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "State,ExitCode"],
        capture_output=True,
        text=True,
        check=True,
    )
    return listed.stdout.strip()


def instances_of(user: str, state_dir: str) -> list[str]:
    """`apptainer instance list --json` as the runtime user: their own records, and those kept
    in the container's folder (where its holder keeps them)."""
    names: list[str] = []
    for env in ({}, {"APPTAINER_CONFIGDIR": f"{state_dir}/apptainer"}):
        listed = ok(run_as(user, ["apptainer", "instance", "list", "--json"], env=env))
        names += [i["instance"] for i in json.loads(listed.stdout).get("instances") or []]
    return names


def test_a_one_shot_prints_exits_3_and_leaves_nothing_behind(rxd: Rxd) -> None:
    command = (
        "echo hello from once; pwd; touch /tmp/probe && echo tmp ok; echo to stderr >&2; exit 3"
    )
    done = rxd.rxctl(
        "rxalice", "run-once", "--project", PROJECT, "--", "sh", "-c", command, timeout=300
    )
    assert done.returncode == 3, (done.stdout, done.stderr, rxd.log_text()[-3000:])
    # stdout and stderr come together, as the job's output has them.
    assert done.stdout.splitlines() == [
        "hello from once",
        "/workspace",
        "tmp ok",
        "to stderr",
    ], done
    one_shot_id, job_id, state_dir = one_shot(rxd)
    assert f"one-shot {one_shot_id} of {PROJECT} submitted" in done.stderr

    ((state, exit_code),) = rxd.ledger_rows(
        "SELECT state, exit_code FROM one_shot_jobs WHERE id = ?", [one_shot_id]
    )
    assert (state, exit_code) == ("exited", 3)
    # No job: Slurm lists it as ended, or no longer at all; its accounting says how it ended.
    assert squeue_state(job_id) in ("", "FAILED")
    assert sacct_state(job_id) == "FAILED|3:0"
    assert rxd.ledger_rows("SELECT * FROM one_shot_leases", []) == []
    assert instances_of(RUNTIME_USER, state_dir) == []
    # Its folder on the node (Apptainer's records, the container's /tmp) went with it; the
    # nodes of the test cluster share this host's /tmp.
    assert glob.glob("/tmp/rx-oneshot.*") == []
    output = Path(state_dir) / f"job-{job_id}.out"
    wait_for(lambda: not output.exists(), timeout=30, what=f"{output} to be cleaned")
    actions = [
        a for (a,) in rxd.ledger_rows("SELECT action FROM events ORDER BY id", [])
        if a.startswith("run-once.")
    ]  # fmt: skip
    assert actions[:1] == ["run-once.submitted"] and actions[-1] == "run-once.exited"


def test_a_viewer_is_refused_and_nothing_is_submitted(rxd: Rxd) -> None:
    before = rxd.ledger_rows("SELECT count(*) FROM one_shot_jobs", [])
    line = refused(rxd.rxctl("rxdave", "run-once", "--project", PROJECT, "--", "true"), 125)
    assert "needs role owner or manager" in line
    assert rxd.ledger_rows("SELECT count(*) FROM one_shot_jobs", []) == before


def test_ctrl_c_cancels_the_job_and_says_so(rxd: Rxd) -> None:
    argv = [RXCTL, "--socket", str(rxd.socket), "run-once", "--project", PROJECT, "--"]
    process = spawn_as("rxalice", [*argv, "sh", "-c", "echo started; sleep 300"])
    try:

        def running() -> bool:
            rows = rxd.ledger_rows("SELECT state FROM one_shot_jobs ORDER BY id DESC LIMIT 1", [])
            return bool(rows) and rows[0][0] == "running"

        wait_for(running, timeout=300, what="the one-shot to run")
        _, job_id, _ = one_shot(rxd)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, (stdout, stderr)
    assert "cancelled one-shot" in stderr and f"(job {job_id})" in stderr
    wait_for(lambda: squeue_state(job_id) in ("", "CANCELLED"), timeout=60, what="the job to end")
    assert rxd.ledger_rows("SELECT * FROM one_shot_leases", []) == []


def test_a_one_shot_with_a_gpu_sees_only_its_own(rxd: Rxd) -> None:
    command = "echo cuda=$CUDA_VISIBLE_DEVICES"
    argv = ("run-once", "--project", PROJECT, "--gpus", "1", "--partition", "gpu", "--")
    done = rxd.rxctl("rxalice", *argv, "sh", "-c", command, timeout=300)
    assert done.returncode == 0, (done.stdout, done.stderr)
    # Slurm numbers what a job sees from 0; Apptainer's --nv warns on a node without NVIDIA's
    # driver (the test cluster's GPUs are fakes), and the command runs all the same.
    assert "cuda=0" in done.stdout.splitlines(), done.stdout
    ((gpus, state),) = rxd.ledger_rows(
        "SELECT gpus, state FROM one_shot_jobs ORDER BY id DESC LIMIT 1", []
    )
    assert (gpus, state) == (1, "exited")
    assert rxd.ledger_rows("SELECT * FROM one_shot_leases", []) == []


def test_the_command_reaches_the_job_only_as_words(rxd: Rxd) -> None:
    words = ["$(touch /workspace/pwned)", "a'b c", ";", "`id`", "*"]
    argv = ("run-once", "--project", PROJECT, "--", "printf", "%s\\n", *words)
    done = rxd.rxctl("rxalice", *argv, timeout=300)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert done.stdout.splitlines() == words
    ((workspace,),) = rxd.ledger_rows("SELECT workspace FROM projects WHERE name = ?", [PROJECT])
    assert not (Path(workspace) / "pwned").exists()
