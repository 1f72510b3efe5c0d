"""`rxctl status`'s countdowns: open work, time until idle sleep and until the job's time limit,
from the ledger (with fake ports), and the lines that show them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from rxslurm.cli.render import status_lines
from rxslurm.daemon.containers.countdowns import Countdowns, countdowns
from rxslurm.daemon.containers.sessions import DetachedCommands, LiveSession
from tests.unit.test_reconciler_edges import OWNER, running, world

NOW = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)


def test_idle_sleep_counts_from_the_last_activity_and_the_limit_from_the_jobs_start() -> None:
    c = countdowns(
        NOW,
        sessions=0,
        detached=0,
        idle_timeout_min=60,
        last_activity=NOW - timedelta(minutes=15),
        time_limit_min=120,
        job_started=NOW - timedelta(minutes=30),
    )

    assert (c.idle_sleep_in_s, c.time_limit_in_s) == (45 * 60, 90 * 60)


def test_open_work_or_no_timeout_stops_the_idle_countdown() -> None:
    def at(detached: int, timeout_min: int) -> Countdowns:
        return countdowns(
            NOW,
            sessions=0,
            detached=detached,
            idle_timeout_min=timeout_min,
            last_activity=NOW,
            time_limit_min=None,
            job_started=NOW,
        )

    busy, never = at(1, 60), at(0, 0)

    assert busy.idle_sleep_in_s is None and never.idle_sleep_in_s is None
    assert busy.time_limit_in_s is None


@given(
    st.integers(min_value=-10_000, max_value=10_000_000),
    st.integers(min_value=1, max_value=100_000),
)
def test_a_countdown_is_never_negative_nor_longer_than_its_timeout(
    ago_s: int, minutes: int
) -> None:
    since = NOW - timedelta(seconds=ago_s)
    c = countdowns(
        NOW,
        sessions=0,
        detached=0,
        idle_timeout_min=minutes,
        last_activity=since,
        time_limit_min=minutes,
        job_started=since,
    )

    assert c.idle_sleep_in_s is not None and c.idle_sleep_in_s >= 0
    assert c.idle_sleep_in_s == c.time_limit_in_s
    assert c.idle_sleep_in_s <= minutes * 60 + max(0, -ago_s)


def test_status_of_a_running_container_carries_its_countdowns(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"), idle_timeout_min=30, time_limit_min=240)
    job_id = running(w, "alpha")
    w.clock.advance(10 * 60)

    quiet = w.service.status(OWNER, "alpha").to_dict()["countdowns"]

    assert quiet["sessions"] == 0 and quiet["detached"] == 0
    assert quiet["idle_sleep_in_s"] == 20 * 60
    assert quiet["time_limit_min"] == 240 and 0 < quiet["time_limit_in_s"] <= 240 * 60

    commands = DetachedCommands(w.service, w.reconciler.sessions)
    commands.live.add(
        LiveSession(w.row("alpha")["id"], job_id, "rx-exec-1", "ada", ("bash",), "t", True)
    )
    busy = w.service.status(OWNER, "alpha").to_dict()["countdowns"]

    assert busy["sessions"] == 1 and busy["idle_sleep_in_s"] is None


def test_status_of_a_stopped_container_has_no_countdowns(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "stopped"))

    assert "countdowns" not in w.service.status(OWNER, "alpha").to_dict()


def test_status_lines_show_the_countdowns() -> None:
    answer = {
        "project": "alpha",
        "state": "running",
        "name": "rx-alpha",
        "gpus": 0,
        "workspace": "/w",
        "countdowns": {
            "sessions": 1,
            "detached": 2,
            "idle_timeout_min": 60,
            "idle_sleep_in_s": None,
            "time_limit_min": 240,
            "time_limit_in_s": 3 * 3600 + 120,
        },
    }

    text = "\n".join(status_lines(answer))

    assert "1 session(s), 2 detached command(s)" in text
    assert "not while sessions or detached commands are open" in text
    assert "in 3h02m (of 240 min)" in text
