"""sbatch's --account, --qos, --constraint and --reservation on the real cluster: a project in a
reservation on one node runs its container on that node; an account Slurm does not know is refused
by Slurm, and the user reads why in one line; a value that is no Slurm name is refused by rxd and
changes nothing. Real rxd, real Slurm, real Apptainer.

The reservation is made here (one core of one node, for rxalice only, so other work keeps the rest
of the node) and removed afterwards."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.support.cli import ok, refused
from tests.support.daemon import Rxd
from tests.support.lifecycle import lifecycle_rxd, make_project, status, wait_state

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("container_runtime")]

NODE = "n3"


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    with lifecycle_rxd(bind=("rxalice",)) as daemon:
        yield daemon


def scontrol(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=60)


@contextmanager
def reservation(user: str, node: str) -> Iterator[str]:
    """A reservation of one core of `node` for `user`, from now until the block ends."""
    name = f"t-jobflags-{os.getpid()}"
    ok(
        scontrol(
            "create",
            "reservation",
            f"ReservationName={name}",
            "StartTime=now",
            "Duration=30",  # minutes: bounds what an interrupted run leaves behind
            f"Users={user}",
            f"Nodes={node}",
            "CoreCnt=1",
            # Other developers' jobs may be on the node: the reservation waits for them.
            "Flags=IGNORE_JOBS",
        )
    )
    try:
        yield name
    finally:
        scontrol("delete", f"ReservationName={name}")


def test_a_project_in_a_reservation_runs_on_the_reserved_node(rxd: Rxd) -> None:
    with reservation("rxalice", NODE) as name:
        make_project(rxd, "resv", "--reservation", name)
        shown = json.loads(
            ok(rxd.rxctl("rxalice", "project", "show", "--project", "resv", "--json")).stdout
        )
        assert shown["settings"]["reservation"] == name
        ok(rxd.rxctl("rxalice", "enable", "--project", "resv"))
        try:
            running = wait_state(rxd, "resv", "running", timeout=300)
            assert (running["node"], running["reservation"]) == (NODE, name)
            job = str(running["job_id"])
            seen = ok(
                subprocess.run(
                    ["squeue", "-h", "-j", job, "-o", "%v|%N"], capture_output=True, text=True
                )
            ).stdout
            assert seen.strip() == f"{name}|{NODE}"
            text = ok(rxd.rxctl("rxalice", "status", "--project", "resv")).stdout
            assert ["reservation", name] in [line.split() for line in text.splitlines()]
        finally:
            ok(rxd.rxctl("rxalice", "stop", "--project", "resv"))
            # The reservation goes only once its job has left it.
            wait_state(rxd, "resv", "stopped", timeout=120)


@pytest.mark.parametrize(
    ("project", "flag", "value", "slurm_says"),
    [
        (
            "badacct",
            "--account",
            "t-no-such-account",
            "Batch job submission failed: Invalid account or account/partition combination "
            "specified",
        ),
        (
            "badqos",
            "--qos",
            "t-no-such-qos",
            "Batch job submission failed: Invalid qos specification",
        ),
    ],
)
def test_what_slurm_refuses_is_the_containers_reason_in_one_line(
    rxd: Rxd, project: str, flag: str, value: str, slurm_says: str
) -> None:
    make_project(rxd, project, flag, value)

    line = refused(rxd.rxctl("rxalice", "enable", "--project", project))

    assert line == f"Error: Slurm refused the job: {slurm_says}"
    after = status(rxd, "rxalice", project)
    assert after["state"] == "error"
    assert after["reason"] == f"Slurm refused the job: {slurm_says}"
    assert after[flag.removeprefix("--")] == value
    text = ok(rxd.rxctl("rxalice", "status", "--project", project)).stdout
    assert f"reason        Slurm refused the job: {slurm_says}" in text.splitlines()
    # Fixed by the owner, it runs.
    ok(rxd.rxctl("rxalice", "project", "set", "--project", project, flag, ""))
    ok(rxd.rxctl("rxalice", "retry", "--project", project))
    wait_state(rxd, project, "running", timeout=300)
    ok(rxd.rxctl("rxalice", "stop", "--project", project))
    wait_state(rxd, project, "stopped", timeout=120)


def test_a_value_that_is_no_slurm_name_is_refused_by_rxd_and_changes_nothing(rxd: Rxd) -> None:
    line = refused(rxd.rxctl("rxalice", "project", "create", "oddqos", "--qos", "high,--uid=0"))
    assert line.startswith("Error: qos may hold only letters, digits")
    refused(rxd.rxctl("rxalice", "project", "show", "--project", "oddqos"))

    make_project(rxd, "goodqos", "-q", "normal", "-C", "")
    line = refused(
        rxd.rxctl("rxalice", "project", "set", "--project", "goodqos", "--constraint", "a b")
    )
    assert line.startswith("Error: constraint may hold node features")
    shown = json.loads(
        ok(rxd.rxctl("rxalice", "project", "show", "--project", "goodqos", "--json")).stdout
    )
    assert (shown["settings"]["qos"], shown["settings"]["constraint"]) == ("normal", "")
