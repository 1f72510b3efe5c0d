"""Finding 1: ordinary job metadata of any cluster user must not stop the reconciler.

rxdave (no rx-slurm access needed) keeps a pending job array, a job with a limit over a year
(squeue prints INVALID), and held jobs named like ours whose comments name a container id too
big for SQLite or in non-ASCII digits, plus one imitating a real container. rxalice's container
must still start and run commands; the odd records are logged; rxdave's jobs are left alone
(a job imitating a real container included: it is not the container's, so not rxd's to cancel).
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from rxslurm.daemon.containers.service import container_id_from_comment
from rxslurm.slurm.jobs import JobInfo, Skipped
from tests.hostile.fake_slurm import CONFIG, rig
from tests.hostile.helpers import held_job_as
from tests.support.cli import ok
from tests.support.cluster import run_as
from tests.support.daemon import Rxd
from tests.support.lifecycle import lifecycle_rxd, make_project, wait_state

# ----------------------------------------------------------------------- fast


@pytest.mark.parametrize(
    ("tail", "cid"),
    [
        ("7", 7),
        ("99999999999999999999", None),  # beyond SQLite's integers
        ("²", None),  # "²".isdigit() is True; int("²") raises
        ("٣", None),  # an Arabic-Indic digit: int() would take it
        ("7\n", None),
        (" 7", None),
        ("", None),
    ],
)
def test_container_ids_in_comments_are_ascii_digits_of_bounded_length(
    tail: str, cid: int | None
) -> None:
    assert container_id_from_comment(CONFIG, f"{CONFIG.slurm.tag}:container={tail}") == cid


def test_a_pass_goes_on_past_records_it_cannot_use(tmp_path: Path) -> None:
    r = rig(tmp_path, {"name": "rx-p", "state": "starting", "asked_s_ago": 5})
    tag = CONFIG.slurm.tag
    for job_id, comment in (
        (90, f"{tag}:container=99999999999999999999"),
        (91, f"{tag}:container=²"),
    ):
        r.slurm.jobs[job_id] = JobInfo(job_id, "rx-x", "rxdave", "PENDING", comment=comment)
    r.slurm.skipped.append(Skipped("squeue record: time limit 'soon'", 92, "92|PENDING|..."))
    r.slurm.add(93, "rxalice", "rx-p", 1)
    report = r.reconciler.reconcile_once()
    assert report.ok
    assert r.container()["job_id"] == 93
    assert r.slurm.cancelled == []


def test_a_container_whose_record_was_skipped_is_unknown_not_gone(tmp_path: Path) -> None:
    r = rig(tmp_path, {"name": "rx-p", "state": "running", "job_id": 92})
    r.slurm.skipped.append(Skipped("squeue record: odd", 92, "92|RUNNING|..."))
    for _ in range(3):
        assert r.reconciler.reconcile_once().ok
    assert (r.container()["state"], r.container()["job_id"]) == ("running", 92)


# ----------------------------------------------------------------------- the recipe on the cluster


@pytest.fixture(scope="module")
def daemon() -> Iterator[Rxd]:
    with lifecycle_rxd() as rxd:
        yield rxd


def pending_of(user: str) -> set[int]:
    listed = subprocess.run(
        ["squeue", "-h", "-u", user, "-t", "PENDING", "-o", "%F"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {int(x) for x in listed.stdout.split()}


def log_lines(rxd: Rxd, message: str) -> list[dict]:
    lines = [json.loads(line) for line in rxd.log_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("msg") == message]


@pytest.mark.cluster
def test_poison_jobs_do_not_stop_other_users_containers(daemon: Rxd) -> None:
    tag = tomllib.loads(daemon.config.read_text())["slurm"]["tag"]
    wrap = ("--wrap", "true")
    poison = [
        held_job_as("rxdave", "--array=1-2", "-J", "anything", *wrap),
        held_job_as(
            "rxdave", "--array=1-2", "-J", "rx-array", f"--comment={tag}:container=5", *wrap
        ),
        held_job_as("rxdave", "--time=400-00:00:00", *wrap),
        held_job_as("rxdave", "--time=400-00:00:00", "-J", "rx-long", *wrap),
        held_job_as(
            "rxdave", "-J", "rx-x", f"--comment={tag}:container=99999999999999999999", *wrap
        ),
        held_job_as("rxdave", "-J", "rx-y", f"--comment={tag}:container=²", *wrap),
        # Imitates the container below (the daemon's first: id 1): left alone too.
        held_job_as("rxdave", "-J", "rx-pj-al", f"--comment={tag}:container=1", *wrap),
    ]
    try:
        assert set(poison) <= pending_of("rxdave")
        make_project(daemon, "pj-al")
        ok(daemon.rxctl("rxalice", "enable", "--project", "pj-al"))
        running = wait_state(daemon, "pj-al", "running")
        assert running["job_id"] not in poison
        result = ok(daemon.rxctl("rxalice", "exec", "--project", "pj-al", "--", "echo", "served"))
        assert result.stdout == "served\n"
        ok(daemon.rxctl("rxalice", "stop", "--project", "pj-al"))
        wait_state(daemon, "pj-al", "stopped")
        # The records that name no container, or one they are not, were seen and logged.
        logged = log_lines(daemon, "jobs that are no container's")
        assert logged, daemon.log_text()[-3000:]
        sampled = {s["job_id"] for line in logged for s in line["sample"]}
        assert sampled & set(poison)
        assert not log_lines(daemon, "reconcile pass failed")
        assert not log_lines(daemon, "Slurm did not answer; states are unknown")
        # Nothing of rxdave's was cancelled.
        assert set(poison) <= pending_of("rxdave")
    finally:
        run_as("rxdave", ["scancel", *map(str, poison)])
