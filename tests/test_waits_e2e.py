"""Waits that fit a busy GPU cluster, end to end: a wake on a full partition waits as long as it
takes (past rxd's limit for clients that name none, standing in for the old fixed 10 minutes),
Ctrl-C leaves the container queued and says so, `--timeout` gives up in one line, and
`enable --wait` returns once the container runs. Real rxd, real Slurm, real Apptainer.

The partition is filled with a sleeping job of another test user holding every GPU (the
containers here ask for one), and freed as soon as each test has seen what it needs."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pexpect
import pytest

from tests.support.cli import ok
from tests.support.cluster import run_as, user_env, wait_for
from tests.support.daemon import RXCTL, Rxd
from tests.support.lifecycle import lifecycle_rxd, make_project, status, wait_state

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.usefixtures("container_runtime"),
    # The blocker holds every GPU: another file's GPU container beside it would wait it out.
    pytest.mark.alone(reason="fills partition gpu"),
]

# rxd's limit for clients that name none: the old fixed 10 minutes, made short.
DEPLOYMENT_LIMIT_S = 3
WAITING = "waiting_for_resources"
# exec and shell exit 125 when rxctl itself, not the command, fails.
OWN_FAILURE = 125
BLOCKER = "rx-waits-blocker"


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    extra = f"[limits]\nwake_wait_s = {DEPLOYMENT_LIMIT_S}\n"
    with lifecycle_rxd(extra, bind=("rxalice", "rxbob")) as daemon:
        yield daemon


def squeue_state(job: str) -> str:
    return subprocess.run(
        ["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, check=False
    ).stdout.strip()


@contextmanager
def full_partition() -> Iterator[str]:
    """Every GPU of partition gpu held by a sleeping job of rxbob's, until the block ends (or
    `free` is called on the job id it yields)."""
    job = ok(
        run_as(
            "rxbob",
            [
                "sbatch",
                "--parsable",
                "-p",
                "gpu",
                "-N",
                "3",
                "--gres=gpu:2",
                "--ntasks-per-node=1",
                "--cpus-per-task=1",
                "--mem=100",
                f"--job-name={BLOCKER}",
                "-o",
                "/dev/null",
                "--wrap",
                "sleep 600",
            ],
        )
    ).stdout.strip()
    try:
        # Other developers' jobs may hold GPUs for a while: the block starts when they are free.
        wait_for(lambda: squeue_state(job) == "RUNNING", timeout=300, what="the GPUs to be held")
        yield job
    finally:
        free(job)


def free(job: str) -> None:
    run_as("rxbob", ["scancel", job])


def sleeping_project(rxd: Rxd, name: str) -> None:
    """A project with one GPU whose container ran once (enable --wait) and sleeps now."""
    make_project(rxd, name, "--gpus", "1", "--partition", "gpu")
    enabled = ok(rxd.rxctl("rxalice", "enable", "--project", name, "--wait", timeout=300))
    assert enabled.stdout == f"{name}: enabled; now running\n"
    ok(rxd.rxctl("rxalice", "stop", "--project", name))
    wait_state(rxd, name, "stopped", timeout=120)


def stop(rxd: Rxd, name: str) -> None:
    rxd.rxctl("rxalice", "stop", "--project", name)
    wait_state(rxd, name, "stopped", "error", timeout=120)


def spawn_exec(rxd: Rxd, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["runuser", "-u", "rxalice", "--", "env", "-i"]
        + [f"{k}={v}" for k, v in user_env("rxalice").items()]
        + [RXCTL, "--socket", str(rxd.socket), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_enable_and_start_wait_return_once_the_container_runs(rxd: Rxd) -> None:
    make_project(rxd, "wt-enable", "--gpus", "1", "--partition", "gpu")
    try:
        result = ok(rxd.rxctl("rxalice", "enable", "--project", "wt-enable", "--wait", timeout=300))
        assert result.stdout == "wt-enable: enabled; now running\n"
        # Not a moment later: it runs when --wait returns.
        assert status(rxd, "rxalice", "wt-enable")["state"] == "running"
        stop(rxd, "wt-enable")
        result = ok(rxd.rxctl("rxalice", "start", "--project", "wt-enable", "--wait", timeout=300))
        assert result.stdout == "wt-enable: started; now running\n"
        assert status(rxd, "rxalice", "wt-enable")["state"] == "running"
    finally:
        stop(rxd, "wt-enable")


def test_a_wake_on_a_full_partition_outlasts_the_old_limit_and_then_runs(rxd: Rxd) -> None:
    sleeping_project(rxd, "wt-long")
    try:
        with full_partition() as job:
            proc = spawn_exec(rxd, "exec", "--project", "wt-long", "--", "echo", "ran")
            wait_state(rxd, "wt-long", WAITING, timeout=60)
            # Twice rxd's limit for clients that name none: an rxctl that names none is waited
            # for regardless.
            since = time.monotonic()
            wait_for(
                lambda: (
                    time.monotonic() - since > 2 * DEPLOYMENT_LIMIT_S or proc.poll() is not None
                ),
                timeout=60,
                what="the wait to outlast rxd's limit",
            )
            assert proc.poll() is None, proc.communicate()
            assert status(rxd, "rxalice", "wt-long")["state"] == WAITING
            free(job)
            out, err = proc.communicate(timeout=300)
        assert (proc.returncode, out) == (0, "ran\n"), err
        assert f"waking wt-long: {WAITING}: " in err
    finally:
        stop(rxd, "wt-long")


def test_ctrl_c_while_waiting_leaves_the_container_queued_and_says_so(rxd: Rxd) -> None:
    sleeping_project(rxd, "wt-intr")
    try:
        with full_partition():
            env = {**user_env("rxalice"), "TERM": "xterm"}
            child = pexpect.spawn(
                "runuser",
                ["-u", "rxalice", "--", "env", "-i", *(f"{k}={v}" for k, v in env.items())]
                + [
                    RXCTL,
                    "--socket",
                    str(rxd.socket),
                    "exec",
                    "--project",
                    "wt-intr",
                    "--",
                    "true",
                ],
                encoding="utf-8",
                timeout=120,
            )
            try:
                child.expect(f"waking wt-intr: {WAITING}: ")
                child.sendintr()  # Ctrl-C on rxctl's terminal: SIGINT to rxctl
                child.expect("stopped waiting; the container stays queued")
                child.expect(r"`rxctl stop --project wt-intr` to give up")
                child.expect(pexpect.EOF)
            finally:
                child.close()
            assert child.exitstatus == 130
            # Still queued: Ctrl-C stopped the waiting, not the container.
            assert status(rxd, "rxalice", "wt-intr")["state"] == WAITING
    finally:
        stop(rxd, "wt-intr")


def test_a_timeout_on_a_full_partition_gives_up_in_one_line(rxd: Rxd) -> None:
    sleeping_project(rxd, "wt-limit")
    try:
        with full_partition():
            result = rxd.rxctl(
                "rxalice", "exec", "--project", "wt-limit", "--timeout", "5s", "--", "true"
            )
            assert result.returncode == OWN_FAILURE, result
            assert result.stdout == ""
            errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
            assert errors == result.stderr.splitlines()[-1:], result.stderr
            assert errors[0].startswith(
                "Error: the container of wt-limit did not start within 5s ("
            ), errors
            assert errors[0].endswith("it keeps trying: `rxctl stop --project wt-limit` to give up")
            # Everything else on stderr is the progress line, one line per change.
            assert all(
                line.startswith("waking wt-limit: ") for line in result.stderr.splitlines()[:-1]
            )
            assert status(rxd, "rxalice", "wt-limit")["state"] in (WAITING, "starting")
    finally:
        stop(rxd, "wt-limit")
