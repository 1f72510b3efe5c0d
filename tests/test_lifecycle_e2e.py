"""A project's container on the real cluster: enable, wake, stop, disable, reconcile, crashes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import ok
from tests.support.cluster import run_as, wait_for
from tests.support.daemon import Rxd
from tests.support.lifecycle import (
    comment_of,
    lifecycle_rxd,
    make_project,
    rx_jobs,
    start_rxd,
    status,
    wait_state,
)

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("container_runtime")]


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    with lifecycle_rxd() as daemon:
        yield daemon


def test_enable_with_a_gpu_runs_a_job_as_the_bound_user(rxd: Rxd) -> None:
    make_project(rxd, "gpu1", "--gpus", "1", "--partition", "gpu")
    result = ok(rxd.rxctl("rxalice", "enable", "--project", "gpu1"))
    assert result.stdout.startswith("gpu1: enabled; now ")
    running = wait_state(rxd, "gpu1", "running")
    assert running["job_id"] and running["node"] in ("n1", "n2", "n3")
    assert running["gres"] == "gpu:a100:1" or running["gres"].startswith("gpu:")
    assert running["runtime_user"] == "rxalice"
    (job,) = [r for r in rx_jobs(comment_of(rxd, "gpu1")) if r[1] == "RUNNING"]
    assert job[0] == str(running["job_id"])
    assert job[2] == "rxalice"
    assert "gpu" in job[3]
    text = ok(rxd.rxctl("rxalice", "status", "--project", "gpu1")).stdout
    assert "state         running" in text
    ok(rxd.rxctl("rxalice", "stop", "--project", "gpu1"))
    wait_state(rxd, "gpu1", "stopped")


def test_overlay_is_made_by_the_runtime_user_and_disable_keeps_the_workspace(rxd: Rxd) -> None:
    make_project(rxd, "keep")
    ok(rxd.rxctl("rxalice", "enable", "--project", "keep"))
    wait_state(rxd, "keep", "running")
    state_dir = Path(rxd.root) / "containers" / "rx-keep"
    overlay = state_dir / "overlay.img"
    assert overlay.exists() and overlay.stat().st_uid == 2001
    workspace = Path(
        json.loads(
            ok(rxd.rxctl("rxalice", "project", "show", "--project", "keep", "--json")).stdout
        )["workspace"]
    )
    ok(run_as("rxalice", ["sh", "-c", f"echo kept > {workspace}/note.txt"]))
    result = ok(rxd.rxctl("rxalice", "disable", "--project", "keep"))
    assert "disabled" in result.stdout
    assert not overlay.exists()
    assert (workspace / "note.txt").read_text() == "kept\n"
    assert status(rxd, "rxalice", "keep")["state"] == "disabled"


def test_scancel_from_outside_makes_it_stopped_within_one_interval(rxd: Rxd) -> None:
    make_project(rxd, "outside")
    ok(rxd.rxctl("rxalice", "enable", "--project", "outside"))
    running = wait_state(rxd, "outside", "running")
    ok(run_as("rxalice", ["scancel", str(running["job_id"])]))
    stopped = wait_state(rxd, "outside", "stopped", timeout=15)
    assert stopped["reason"] == "cancelled outside rx-slurm"
    assert stopped["job_id"] is None


def test_stop_then_start_runs_a_new_job(rxd: Rxd) -> None:
    make_project(rxd, "again")
    ok(rxd.rxctl("rxalice", "enable", "--project", "again"))
    first = wait_state(rxd, "again", "running")["job_id"]
    ok(rxd.rxctl("rxalice", "stop", "--project", "again"))
    wait_state(rxd, "again", "stopped")
    ok(rxd.rxctl("rxalice", "start", "--project", "again"))
    second = wait_state(rxd, "again", "running")["job_id"]
    assert second != first
    ok(rxd.rxctl("rxalice", "stop", "--project", "again"))
    wait_state(rxd, "again", "stopped")


def test_roles_for_lifecycle_actions(rxd: Rxd) -> None:
    make_project(rxd, "roles")
    ok(
        rxd.rxctl(
            "rxalice",
            "project",
            "member",
            "add",
            "--project",
            "roles",
            "rxbob",
            "--role",
            "manager",
        )
    )
    ok(
        rxd.rxctl(
            "rxalice",
            "project",
            "member",
            "add",
            "--project",
            "roles",
            "rxdave",
            "--role",
            "viewer",
        )
    )
    refused = rxd.rxctl("rxbob", "enable", "--project", "roles")
    assert refused.returncode == 1
    assert refused.stderr == "Error: enable in project roles needs role owner; you are manager\n"
    refused = rxd.rxctl("rxdave", "start", "--project", "roles")
    assert refused.stderr.startswith("Error: start in project roles needs role owner or manager")
    assert status(rxd, "rxdave", "roles")["state"] == "disabled"
    ok(rxd.rxctl("rxalice", "enable", "--project", "roles"))
    wait_state(rxd, "roles", "running")
    ok(rxd.rxctl("rxbob", "stop", "--project", "roles"))
    wait_state(rxd, "roles", "stopped")


def test_fifty_concurrent_wakes_make_exactly_one_job(rxd: Rxd) -> None:
    make_project(rxd, "herd")
    ok(rxd.rxctl("rxalice", "enable", "--project", "herd"))
    wait_state(rxd, "herd", "running")
    ok(rxd.rxctl("rxalice", "stop", "--project", "herd"))
    wait_state(rxd, "herd", "stopped")
    before = {r[0] for r in rx_jobs(comment_of(rxd, "herd"))}
    script = (
        "import sys, threading\n"
        "from rxslurm.cli.client import Client\n"
        "errors = []\n"
        "def wake():\n"
        "    try: Client(sys.argv[1]).post('/v1/projects/herd/start')\n"
        "    except Exception as e: errors.append(str(e))\n"
        "threads = [threading.Thread(target=wake) for _ in range(50)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "print(len(errors), errors[:3])\n"
    )
    result = ok(run_as("rxalice", [sys.executable, "-c", script, str(rxd.socket)], timeout=180))
    assert result.stdout.startswith("0 "), result.stdout
    wait_state(rxd, "herd", "running")
    new_jobs = [r for r in rx_jobs(comment_of(rxd, "herd")) if r[0] not in before]
    assert len(new_jobs) == 1, new_jobs
    ok(rxd.rxctl("rxalice", "stop", "--project", "herd"))
    wait_state(rxd, "herd", "stopped")


def test_rxd_killed_right_after_submitting_recovers_with_one_job() -> None:
    daemon = start_rxd(env={"RXD_FAILPOINTS": "after-submit"})
    try:
        make_project(daemon, "crash")
        result = daemon.rxctl("rxalice", "enable", "--project", "crash")
        assert result.returncode == 1  # the daemon died mid-request
        assert daemon.proc is not None and daemon.proc.wait(timeout=30) == 137
        comment = comment_of(daemon, "crash")
        assert len(rx_jobs(comment)) == 1  # sbatch went through before the crash
        daemon.env.pop("RXD_FAILPOINTS")
        daemon.start()
        running = wait_state(daemon, "crash", "running")
        jobs = rx_jobs(comment)
        assert len(jobs) == 1, jobs
        assert jobs[0][0] == str(running["job_id"])
        ok(daemon.rxctl("rxalice", "stop", "--project", "crash"))
        wait_state(daemon, "crash", "stopped")
    finally:
        if daemon.proc and daemon.proc.poll() is None:
            daemon.stop()
        daemon.cancel_own_jobs()


def test_slurm_not_answering_changes_nothing() -> None:
    from tests.support.daemon import test_root

    bin_dir = test_root() / "bin"
    bin_dir.mkdir()
    real = {
        n: subprocess.run(["which", n], capture_output=True, text=True).stdout.strip()
        for n in ("sbatch", "squeue", "sacct", "scancel", "scontrol", "sinfo")
    }
    outage = bin_dir / "outage"

    for name, path in real.items():
        wrapper = bin_dir / name
        wrapper.write_text(
            "#!/bin/sh\n"
            f'if [ -e "{outage}" ]; then\n'
            f'  echo "{name}: error: Unable to contact slurm controller (connect failure)" >&2\n'
            "  exit 1\n"
            "fi\n"
            f'exec {path} "$@"\n'
        )
        wrapper.chmod(0o755)
    os.chmod(bin_dir, 0o755)
    daemon = start_rxd(
        extra=f'[slurm]\nbin_dir = "{bin_dir}"\ntag = "t-outage-{bin_dir.parent.name}"\n'
    )
    try:
        make_project(daemon, "outage")
        ok(daemon.rxctl("rxalice", "enable", "--project", "outage"))
        running = wait_state(daemon, "outage", "running")
        outage.touch()
        wait_for(
            lambda: status(daemon, "rxalice", "outage").get("state_unknown") is True,
            timeout=15,
            what="state to become unknown",
        )
        during = status(daemon, "rxalice", "outage")
        assert (during["state"], during["job_id"]) == ("running", running["job_id"])
        # The job is still there: nothing was cancelled.
        assert [r[1] for r in rx_jobs(comment_of(daemon, "outage"))] == ["RUNNING"]
        refused = daemon.rxctl("rxalice", "stop", "--project", "outage")
        outage.unlink()
        wait_for(
            lambda: "state_unknown" not in status(daemon, "rxalice", "outage"),
            timeout=15,
            what="Slurm to answer again",
        )
        if refused.returncode == 0:  # the stop was recorded; its cancel is retried
            wait_state(daemon, "outage", "stopped", timeout=60)
        else:
            ok(daemon.rxctl("rxalice", "stop", "--project", "outage"))
            wait_state(daemon, "outage", "stopped")
    finally:
        if outage.exists():
            outage.unlink()
        daemon.stop()
        daemon.cancel_own_jobs()


def running_instance(rxd: Rxd, project: str) -> str:
    ((instance,),) = rxd.ledger_rows(
        "SELECT c.instance FROM containers c JOIN projects p ON p.id = c.project_id "
        "WHERE p.name = ?",
        [project],
    )
    return str(instance)


@pytest.mark.alone(reason="kills a slurmd (every job on its node fails) and runs setup.sh")
def test_killing_a_nodes_slurmd_makes_it_error_and_retry_runs_elsewhere(rxd: Rxd) -> None:
    make_project(rxd, "nodefail")
    ok(rxd.rxctl("rxalice", "enable", "--project", "nodefail"))
    running = wait_state(rxd, "nodefail", "running")
    node = running["node"]
    slurmd = subprocess.run(
        ["pgrep", "-f", f"slurmd -N {node}$"], capture_output=True, text=True
    ).stdout.split()
    assert slurmd, f"no slurmd for {node}"
    # A node crash takes the job's processes with it; on this one machine they must be killed too.
    # With several slurmd on one host, listpids asks the one named, else the host's first (n1).
    listed = subprocess.run(
        ["scontrol", "listpids", str(running["job_id"]), node],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")[1:]
    job_pids = [line.split()[0] for line in listed if line.strip()]
    steps = subprocess.run(
        ["pgrep", "-f", f"slurmstepd: \\[{running['job_id']}\\."], capture_output=True, text=True
    ).stdout.split()
    instance = subprocess.run(
        ["pgrep", "-f", running_instance(rxd, "nodefail")], capture_output=True, text=True
    ).stdout.split()
    # With the instance go its FUSE mounts (image, overlay), which run in its session and hold
    # the overlay's lock: a crashed node keeps none of them.
    for sid in {os.getsid(int(pid)) for pid in instance}:
        instance += subprocess.run(
            ["pgrep", "-s", str(sid)], capture_output=True, text=True
        ).stdout.split()
    try:
        for pid in [*slurmd, *steps, *job_pids, *instance]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        failed = wait_state(rxd, "nodefail", "error", timeout=180)
        assert "NODE_FAIL" in failed["last_error"] or node in failed["last_error"]
        ok(rxd.rxctl("rxalice", "retry", "--project", "nodefail"))
        again = wait_state(rxd, "nodefail", "running", timeout=120)
        assert again["node"] != node
    finally:
        subprocess.run(
            [str(Path(__file__).parent / "cluster" / "setup.sh")], capture_output=True, timeout=300
        )
    ok(rxd.rxctl("rxalice", "stop", "--project", "nodefail"))
    wait_state(rxd, "nodefail", "stopped")


def test_saved_settings_wait_for_the_next_start(rxd: Rxd) -> None:
    make_project(rxd, "pending")
    ok(rxd.rxctl("rxalice", "enable", "--project", "pending"))
    assert wait_state(rxd, "pending", "running")["settings_pending"] is False
    ok(rxd.rxctl("rxalice", "project", "set", "--project", "pending", "--cpus", "2"))
    assert status(rxd, "rxalice", "pending")["settings_pending"] is True
    shown = json.loads(
        ok(rxd.rxctl("rxalice", "project", "show", "--project", "pending", "--json")).stdout
    )
    assert shown["settings_pending"] is True
    assert (
        "new settings apply on the next start"
        in ok(rxd.rxctl("rxalice", "status", "--project", "pending")).stdout
    )
    ok(rxd.rxctl("rxalice", "stop", "--project", "pending"))
    wait_state(rxd, "pending", "stopped")
    ok(rxd.rxctl("rxalice", "start", "--project", "pending"))
    assert wait_state(rxd, "pending", "running")["settings_pending"] is False
    ok(rxd.rxctl("rxalice", "stop", "--project", "pending"))
    wait_state(rxd, "pending", "stopped")


def test_what_is_installed_in_the_overlay_survives_stop_and_start(rxd: Rxd) -> None:
    make_project(rxd, "persist")
    ok(rxd.rxctl("rxalice", "enable", "--project", "persist"))
    wait_state(rxd, "persist", "running")
    install = "mkdir -p /opt/tool && echo v1.2 > /opt/tool/VERSION && echo ws > /workspace/w.txt"
    ok(rxd.rxctl("rxalice", "exec", "--project", "persist", "--", "sh", "-c", install))
    ok(rxd.rxctl("rxalice", "stop", "--project", "persist"))
    wait_state(rxd, "persist", "stopped")
    ok(rxd.rxctl("rxalice", "start", "--project", "persist"))
    wait_state(rxd, "persist", "running")
    shown = ok(
        rxd.rxctl(
            "rxalice",
            "exec",
            "--project",
            "persist",
            "--",
            "cat",
            "/opt/tool/VERSION",
            "/workspace/w.txt",
        )
    )
    assert shown.stdout == "v1.2\nws\n"
    # Without this container's overlay the file is not there: it lives in the overlay, not the host.
    assert not Path("/opt/tool/VERSION").exists()
    ok(rxd.rxctl("rxalice", "stop", "--project", "persist"))
    wait_state(rxd, "persist", "stopped")


def test_an_idle_container_sleeps_and_exec_wakes_it(rxd: Rxd) -> None:
    make_project(rxd, "sleepy", "--idle-timeout", "1")
    ok(rxd.rxctl("rxalice", "enable", "--project", "sleepy"))
    first = wait_state(rxd, "sleepy", "running")["job_id"]
    slept = wait_state(rxd, "sleepy", "stopped", timeout=150)
    assert slept["reason"] == "idle for 1 min"
    assert not [r for r in rx_jobs(comment_of(rxd, "sleepy")) if r[1] in ("RUNNING", "PENDING")]
    woken = ok(rxd.rxctl("rxalice", "exec", "--project", "sleepy", "--", "echo", "awake"))
    assert woken.stdout == "awake\n"
    now = status(rxd, "rxalice", "sleepy")
    assert now["state"] == "running" and now["job_id"] != first
    ok(rxd.rxctl("rxalice", "stop", "--project", "sleepy"))
    wait_state(rxd, "sleepy", "stopped")


def test_a_job_at_its_time_limit_is_followed_by_a_new_one(rxd: Rxd) -> None:
    make_project(rxd, "limited", "--time-limit", "1")
    ok(rxd.rxctl("rxalice", "enable", "--project", "limited"))
    first = wait_state(rxd, "limited", "running")["job_id"]

    def next_job() -> dict | None:
        now = status(rxd, "rxalice", "limited")
        return now if now["state"] == "running" and now["job_id"] not in (None, first) else None

    # Slurm ends the job about a minute in (plus its kill wait); rxd submits the next one itself.
    again = wait_for(next_job, timeout=180, what="a new job after the time limit")
    timed_out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", str(first), "-o", "State"],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert timed_out and timed_out[0] == "TIMEOUT"
    assert again["desired"] == "running"
    ok(rxd.rxctl("rxalice", "stop", "--project", "limited"))
    wait_state(rxd, "limited", "stopped")
