"""GPU-hours in `rxctl history`: sacct's records (Slurm 22.05 and newer shapes) parsed one by
one, elapsed × allocated GPUs summed per project and per user, best effort, and the line shown."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.cli.commands_history import gpu_usage_line
from rxslurm.daemon.containers.gpu_hours import gpu_seconds, project_gpu_hours
from rxslurm.daemon.errors import NotFound
from rxslurm.slurm.adapter import SACCT_FIELDS, parse_sacct_text
from tests.unit.test_detached_commands import STRANGER_ACTOR
from tests.unit.test_reconciler_edges import OWNER, world

T0 = 1_764_547_200  # 2025-12-01T00:00:00Z

# AllocTRES as Slurm 22.05 writes it (plain count), newer ones (typed and plain), and a site
# that tracks only typed GPUs.
SHAPES = {
    "22.05": "billing={n},cpu={n},gres/gpu={n},mem=8G,node=1",
    "23.11": "billing={n},cpu={n},gres/gpu:a100={n},gres/gpu={n},mem=8G,node=1",
    "typed-only": "cpu={n},gres/gpu:a100={n},mem=8G,node=1",
}


def sacct_line(job_id: int, user: str, tres: str, start: str, end: str, state: str) -> str:
    row = {
        "JobIDRaw": str(job_id),
        "State": state,
        "Reason": "None",
        "User": user,
        "Account": "lab",
        "Partition": "gpu",
        "NodeList": "n1",
        "AllocTRES": tres,
        "ReqTRES": tres,
        "Timelimit": "08:00:00",
        "Submit": str(T0),
        "Start": start,
        "End": end,
        "ExitCode": "0:0",
    }
    return "|".join(row[f] for f in SACCT_FIELDS)


jobs_strategy = st.lists(
    st.tuples(
        st.sampled_from(sorted(SHAPES)),
        st.integers(min_value=0, max_value=8),  # GPUs
        st.integers(min_value=0, max_value=30 * 86400),  # started after T0
        st.integers(min_value=0, max_value=7 * 86400),  # elapsed
        st.sampled_from(["rxalice", "rxbob"]),
        st.sampled_from(["COMPLETED", "CANCELLED by 2002", "TIMEOUT", "RUNNING", "PENDING"]),
        st.sampled_from(["Unknown", "None"]),  # 22.05 and newer say "not yet" differently
    ),
    max_size=20,
)


@given(jobs_strategy)
def test_gpu_seconds_of_parsed_sacct_records_are_elapsed_times_gpus(jobs: list[tuple]) -> None:  # type: ignore[type-arg]
    now = T0 + 40 * 86400
    lines, expected, by_user = [], 0, {}
    for i, (shape, gpus, start_after, elapsed, user, state, never) in enumerate(jobs):
        start = T0 + start_after
        tres = SHAPES[shape].format(n=gpus) if gpus else "billing=1,cpu=1,mem=8G,node=1"
        if state == "PENDING":
            lines.append(sacct_line(1000 + i, user, tres, never, never, state))
            continue
        end = never if state == "RUNNING" else str(start + elapsed)
        used = gpus * ((now - start) if state == "RUNNING" else elapsed)
        expected += used
        by_user[user] = by_user.get(user, 0) + used
        lines.append(sacct_line(1000 + i, user, tres, str(start), end, state))

    found = parse_sacct_text("\n".join(lines) + "\n")
    use = gpu_seconds(found.values(), now)

    assert not found.skipped
    assert use.total_s == expected
    assert {u: s for u, s in use.by_user_s.items() if s} == {u: s for u, s in by_user.items() if s}


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300))
def test_a_bad_record_is_skipped_and_the_others_still_count(junk: str) -> None:
    good = sacct_line(
        7, "rxalice", SHAPES["22.05"].format(n=2), str(T0), str(T0 + 3600), "COMPLETED"
    )
    found = parse_sacct_text(junk.replace("\n", " ") + "\n" + good + "\n")

    assert gpu_seconds([found[7]], T0 + 7200).total_s == 2 * 3600


def test_project_gpu_hours_sums_its_jobs_per_user(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    first = w.add_job("alpha", "RUNNING")
    second = w.add_job("alpha", "RUNNING")
    w.slurm.jobs[first] = replace(
        w.slurm.jobs[first], gpus=2, start_time=T0, end_time=T0 + 3 * 3600, user="rxalice"
    )
    w.slurm.jobs[second] = replace(
        w.slurm.jobs[second], gpus=1, start_time=T0, end_time=T0 + 1800, user="rxbob"
    )
    w.slurm.end(first, "COMPLETED")
    w.slurm.end(second, "CANCELLED")

    used = project_gpu_hours(w.ledger, w.slurm, OWNER, "alpha", T0 + 86400)

    assert used == {
        "gpu_hours": 6.5,
        "by_user": {"rxalice": 6.0, "rxbob": 0.5},
        "jobs": 2,
        "skipped": 0,
    }
    assert gpu_usage_line(used) == "GPU-hours: 6.50 over 2 job(s) (rxalice 6.00, rxbob 0.50)"


def test_no_accounting_is_an_answer_and_a_stranger_sees_nothing(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    w.add_job("alpha", "RUNNING")
    w.slurm.answering = False

    used = project_gpu_hours(w.ledger, w.slurm, OWNER, "alpha", T0)

    assert set(used) == {"unavailable"}
    assert gpu_usage_line(used).startswith("GPU-hours: unknown (")
    with pytest.raises(NotFound):
        project_gpu_hours(w.ledger, w.slurm, STRANGER_ACTOR, "alpha", T0)


def test_a_project_without_jobs_used_no_gpu_hours(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "stopped"))

    used = project_gpu_hours(w.ledger, w.slurm, OWNER, "alpha", T0)

    assert used["gpu_hours"] == 0 and used["jobs"] == 0
