"""`rxctl logs` without rxd: following a job by offsets until it ends, what stderr says about a
cut or an empty log, which jobs `--since` picks, and the span it reads."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.cli.commands_logs import jobs_since, logs, logs_route, show
from rxslurm.cli.units import MAX_SECONDS
from rxslurm.cli.units import seconds as span_seconds

NOW = datetime(2026, 11, 30, 22, 0, tzinfo=UTC)


def piece(text: str, start: int, size: int, live: bool, job: int = 42) -> dict[str, Any]:
    return {
        "job_id": job,
        "text": text,
        "start": start,
        "end": start + len(text),
        "size": size,
        "live": live,
        "missing": False,
        "state": "running" if live else "stopped",
    }


class FakeRxd:
    """Answers each (job, offset) request with the next prepared piece, and records them."""

    def __init__(self, *answers: dict[str, Any]) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[int | None, int | None]] = []

    def __call__(self, job: int | None, offset: int | None) -> Mapping[str, Any]:
        self.asked.append((job, offset))
        return self.answers.pop(0)


def run_show(fetch: FakeRxd, first: dict[str, Any], follow: bool) -> tuple[str, list[str], int]:
    out: list[str] = []
    notes: list[str] = []
    sleeps: list[float] = []
    show(fetch, first, follow, out.append, notes.append, sleeps.append)
    return "".join(out), notes, len(sleeps)


def test_following_asks_from_each_end_and_stops_once_the_ended_job_is_read() -> None:
    rxd = FakeRxd(
        piece("", 6, 6, live=True),  # nothing new: wait a poll
        piece("two\n", 6, 14, live=True),  # more is there already: ask again at once
        piece("three\n", 10, 16, live=False),  # ended; all read
    )

    text, notes, sleeps = run_show(rxd, piece("one\n", 2, 6, live=True), follow=True)

    assert text == "one\ntwo\nthree\n"
    assert rxd.asked == [(42, 6), (42, 6), (42, 10)]
    assert sleeps == 2
    assert notes == [
        "the first 2 bytes of job 42's output are not shown",
        "job 42 has ended; the container is stopped",
    ]


def test_without_follow_one_piece_is_shown_and_nothing_more_is_asked() -> None:
    rxd = FakeRxd()

    text, notes, sleeps = run_show(rxd, piece("all of it\n", 0, 10, live=True), follow=False)

    assert (text, notes, sleeps, rxd.asked) == ("all of it\n", [], 0, [])


def test_a_job_without_output_says_so_on_stderr() -> None:
    empty = {**piece("", 0, 0, live=False), "missing": True}

    text, notes, _ = run_show(FakeRxd(), empty, follow=False)

    assert (text, notes) == ("", ["job 42 left no output"])


def test_since_picks_the_jobs_still_running_or_ended_within_the_span_oldest_first() -> None:
    jobs = [
        {"job_id": 9, "ended_at": None},
        {"job_id": 8, "ended_at": "2026-11-30T21:30:00.000000Z"},
        {"job_id": 7, "ended_at": "2026-11-30T20:00:00.000000Z"},
    ]

    assert jobs_since(jobs, 3600, NOW) == [8, 9]
    assert jobs_since(jobs, 3 * 3600, NOW) == [7, 8, 9]


def test_the_route_quotes_the_project_and_carries_job_and_offset() -> None:
    assert logs_route("a b") == "/v1/projects/a%20b/logs"
    assert logs_route("p", 5, 0) == "/v1/projects/p/logs?job=5&offset=0"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--json", "-f"], "--json and --follow cannot be used together"),
        (["--since", "1h", "--job", "3"], "--since and --job cannot be used together"),
        (["--since", "soon"], "'soon' is not a duration like 90s, 10m, 2h, 1d12h"),
        (["--job", "0"], "0 is not in the range x>=1"),
    ],
)
def test_bad_options_are_one_usage_error(argv: list[str], message: str) -> None:
    result = CliRunner().invoke(logs, ["--project", "p", *argv], obj=None)

    assert result.exit_code == 2
    assert message in result.output


@given(st.integers(0, 10**6), st.sampled_from("smhd"))
def test_a_span_is_its_number_times_its_unit(number: int, unit: str) -> None:
    seconds = number * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    if seconds > MAX_SECONDS:
        with pytest.raises(ValueError, match="longer than ten years"):
            span_seconds(f"{number}{unit}")
    else:
        assert span_seconds(f"{number}{unit}") == seconds


@given(st.text())
def test_any_span_text_is_a_number_of_seconds_or_a_value_error(text: str) -> None:
    try:
        seconds = span_seconds(text)
    except ValueError:
        return
    assert 0 <= seconds <= MAX_SECONDS
    assert text.strip().isascii()


def test_a_services_output_is_asked_for_with_service_1() -> None:
    assert logs_route("alpha", service=True) == "/v1/projects/alpha/logs?service=1"
    assert logs_route("alpha", 7, 10, service=True).endswith("?job=7&offset=10&service=1")
    assert "service" not in logs_route("alpha", 7)


def test_a_capped_output_says_when_older_output_was_dropped_or_is_not_shown() -> None:
    service = {**piece("newest\n", 0, 7, live=True), "service": True, "earlier": 0}
    assert run_show(FakeRxd(), service, follow=False)[1] == []
    _, notes, _ = run_show(FakeRxd(), {**service, "dropped": True}, follow=False)
    assert notes == [
        "older output of job 42's service was dropped (its output is capped); the newest is shown"
    ]
    _, notes, _ = run_show(FakeRxd(), {**service, "older_unshown": True}, follow=False)
    assert notes == ["the start of job 42's service's output is not shown"]
    command = {**piece("x\n", 9, 11, live=False), "exec": "0a0a0a0a", "dropped": True}
    _, notes, _ = run_show(FakeRxd(), command, follow=False)
    assert notes == [
        "older output of command 0a0a0a0a was dropped (its output is capped); the newest is shown"
    ]


def test_service_goes_with_neither_exec_nor_instance() -> None:
    for extra in (["--exec", "0a0a0a0a"], ["--instance", "out"]):
        result = CliRunner().invoke(logs, ["--service", *extra], obj=None)
        assert result.exit_code == 2 and "--service" in result.output
