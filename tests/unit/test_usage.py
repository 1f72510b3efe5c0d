"""Live usage in `rxctl status`: sstat's and squeue's text parsed record by record (Hypothesis:
the shapes of Slurm 22.05 to 25.x, any text never raising, one bad record never losing the
others), the steps squeue lists, the cache and the CPU rate, and a status that never fails when
sstat does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.cli.render import size_text, status_lines, usage_text
from rxslurm.daemon.containers.usage import LiveUsage
from rxslurm.slurm.errors import SlurmUnavailable
from rxslurm.slurm.steps import parse_step_exits, parse_step_lines
from rxslurm.slurm.usage import (
    JobUsage,
    StepUsage,
    amount_bytes,
    cpu_seconds,
    parse_alloc_gpus,
    parse_sstat,
)
from tests.support.fakes import FakeClock, FakeScheduler
from tests.unit.test_reconciler_edges import OWNER, running, world

JOB = 16834

# -- the text: what each version prints ---------------------------------------------------------

# Real lines from this cluster (22.05, jobacct_gather/linux).
SSTAT_2205 = (
    "16834.batch|1|cpu=00:00:00,energy=0,fs/disk=324860,mem=4680K,pages=0,vmem=6956K\n"
    "16834.0|1|cpu=00:00:05,energy=0,fs/disk=154367,mem=67452K,pages=52,vmem=126632K\n"
)
# 24.x and 25.x add GPU TRES and may print memory in bytes or larger units; an extern step.
SSTAT_25 = (
    "16834.extern|1|cpu=00:00:00,energy=0,fs/disk=2012,mem=0,pages=0,vmem=0\n"
    "16834.batch|1|cpu=1-02:03:04,energy=0,fs/disk=1,gres/gpumem=0,gres/gpuutil=0,"
    "mem=1.50G,pages=0,vmem=2G\n"
    "16834.1|4|cpu=01:02.500,energy=0,fs/disk=1,mem=1048576,pages=0,vmem=1M\n"
)


def test_the_22_05_lines_of_this_cluster() -> None:
    usage = parse_sstat(SSTAT_2205, JOB)

    assert [s.step for s in usage.steps] == ["batch", "0"]
    assert usage.cpu_s == 5
    assert usage.memory_bytes == (4680 + 67452) * 1024
    assert usage.skipped == 0


def test_the_25_x_shape_with_gpu_tres_bytes_and_days() -> None:
    usage = parse_sstat(SSTAT_25, JOB)

    assert [s.step for s in usage.steps] == ["extern", "batch", "1"]
    assert usage.cpu_s == pytest.approx(26 * 3600 + 3 * 60 + 4 + 62.5)
    assert usage.memory_bytes == int(1.5 * (1 << 30)) + (1 << 20)


def test_lines_of_other_jobs_are_not_counted_and_not_skipped() -> None:
    usage = parse_sstat("99.0|1|cpu=00:01:00,mem=1K\n" + SSTAT_2205, JOB)

    assert len(usage.steps) == 2 and usage.skipped == 0


units = st.sampled_from(["", "K", "M", "G"])


@st.composite
def step_records(draw: st.DrawFn) -> tuple[str, float, int]:
    """One sstat line in any version's shape, with the CPU seconds and bytes it says."""
    step = draw(st.sampled_from(["batch", "extern", "interactive"]) | st.integers(0, 999).map(str))
    days, hours = draw(st.integers(0, 30)), draw(st.integers(0, 23))
    minutes, seconds = draw(st.integers(0, 59)), draw(st.integers(0, 59))
    millis = draw(st.integers(0, 999))
    if days:
        cpu_text, cpu = f"{days}-{hours:02d}:{minutes:02d}:{seconds:02d}", None
    elif hours:
        cpu_text, cpu = f"{hours:02d}:{minutes:02d}:{seconds:02d}", None
    else:
        cpu_text, cpu = f"{minutes:02d}:{seconds:02d}.{millis:03d}", millis / 1000
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds + (cpu or 0)
    amount, unit = draw(st.integers(0, 10**6)), draw(units)
    memory = amount * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit]
    extra = draw(st.sampled_from(["", ",gres/gpumem=0,gres/gpuutil=0", ",gres/gpumem=123M"]))
    tres = f"cpu={cpu_text},energy=0,fs/disk=1{extra},mem={amount}{unit},pages=0,vmem=1K"
    tasks = draw(st.integers(1, 64))
    return f"{JOB}.{step}|{tasks}|{tres}", total, memory


garbage = st.sampled_from(
    [
        "",
        "sstat: error: something",
        f"{JOB}.0|1|cpu=99:99:99,mem=1K",
        f"{JOB}.0|1|cpu=00:00:01,mem=lots",
        f"{JOB}.0|1",
        f"²{JOB}.0|1|cpu=00:00:01,mem=1K",
        "|||",
    ]
)


@given(st.lists(step_records(), max_size=8), st.lists(garbage, max_size=4), st.randoms())
def test_every_readable_record_counts_and_bad_ones_are_skipped(
    records: list[tuple[str, float, int]], bad: list[str], rnd: Any
) -> None:
    lines = [line for line, _, _ in records] + bad
    rnd.shuffle(lines)

    usage = parse_sstat("\n".join(lines) + "\n", JOB)

    assert len(usage.steps) == len(records)
    assert usage.cpu_s == pytest.approx(sum(cpu for _, cpu, _ in records))
    assert usage.memory_bytes == sum(mem for _, _, mem in records)
    assert usage.skipped == len([b for b in bad if b.strip()])


@given(st.text())
def test_any_text_is_an_answer_never_an_exception(text: str) -> None:
    usage = parse_sstat(text, JOB)
    assert usage.cpu_s >= 0 and usage.memory_bytes >= 0


@given(st.integers(0, 10**9), units)
def test_amounts_in_every_unit(amount: int, unit: str) -> None:
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit]
    assert amount_bytes(f"{amount}{unit}") == amount * scale


@pytest.mark.parametrize("text", ["", "K", "1X", "-1K", "1e3", "12:00"])
def test_what_is_not_an_amount(text: str) -> None:
    with pytest.raises(ValueError):
        amount_bytes(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("00:00", 0), ("01:02.500", 62.5), ("02:03:04", 7384), ("1-00:00:01", 86401)],
)
def test_cpu_times(text: str, seconds: float) -> None:
    assert cpu_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "1", "00:60", "1-24:00:00", "a:b", "00:00:00:00"])
def test_what_is_not_a_cpu_time(text: str) -> None:
    with pytest.raises(ValueError):
        cpu_seconds(text)


@pytest.mark.parametrize(
    ("text", "gpus"),
    [
        ("cpu=1,mem=1000M,node=1,billing=1   \n", 0),
        ("cpu=2,mem=8G,node=1,billing=2,gres/gpu=2,gres/gpu:a100=2\n", 2),
        ("", None),
        ("N/A\n", None),
    ],
)
def test_the_gpus_a_job_holds(text: str, gpus: int | None) -> None:
    assert parse_alloc_gpus(text) == gpus


# -- squeue --steps -------------------------------------------------------------------------------


def test_the_exec_steps_of_squeue_steps() -> None:
    text = "16834.0|1796084904|rx-exec-2f09baa409d15d08\n16834.batch|1796084901|batch\n"

    steps, skipped = parse_step_lines(text)

    assert [(s.step_id, s.name, s.start) for s in steps] == [
        ("16834.0", "rx-exec-2f09baa409d15d08", 1796084904)
    ]
    assert skipped == 0


def _one_line(text: str) -> bool:
    # str.splitlines splits at more than \n; squeue's lines are split the same way.
    return len(text.splitlines()) <= 1 and text == text.strip() and "\n" not in text


@given(
    st.lists(
        st.tuples(st.integers(1, 10**9), st.integers(0, 10**6), st.text().filter(_one_line)),
        max_size=6,
    ),
    st.lists(st.sampled_from(["junk", "1.x|1|n", "|", "0.1|1|n"]), max_size=3),
)
def test_every_step_line_is_read_whatever_its_name_holds(
    steps: list[tuple[int, int, str]], bad: list[str]
) -> None:
    text = "\n".join([f"{j}.{s}|1700000000|{name}" for j, s, name in steps] + bad)

    found, skipped = parse_step_lines(text)

    names = [name for _, _, name in steps]
    assert [s.name for s in found] == names
    assert [s.step_id for s in found] == [f"{j}.{s}" for j, s, _ in steps]
    assert skipped == len(bad)


# -- the cache and the rate -----------------------------------------------------------------------


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def usage_with(cpu: float, memory: int = 1 << 20, gpus: int | None = 1) -> JobUsage:
    return JobUsage(JOB, [StepUsage("batch", cpu, memory)], gpus=gpus)


def test_answers_are_cached_briefly_and_the_rate_comes_from_two_samples() -> None:
    slurm, ticks = FakeScheduler(FakeClock()), Ticks()
    live = LiveUsage(slurm, ttl=5, clock=ticks)
    slurm.usages[JOB] = usage_with(100.0)

    first = live.of(JOB)
    ticks.now += 2
    assert live.of(JOB) is first and slurm.usage_calls == 1
    ticks.now += 8
    slurm.usages[JOB] = usage_with(115.0)
    second = live.of(JOB)

    assert first["cpus_busy"] is None and first["cpu_s"] == 100
    assert second["cpus_busy"] == 1.5 and slurm.usage_calls == 2
    assert (second["memory_bytes"], second["gpus"]) == (1 << 20, 1)


def test_slurm_not_answering_is_an_answer_not_an_error() -> None:
    slurm = FakeScheduler(FakeClock())
    slurm.answering = False

    answer = LiveUsage(slurm).of(JOB)

    assert "unavailable" in answer and "Unable to contact" in answer["unavailable"]


def test_a_failure_of_any_kind_is_unavailable() -> None:
    class Broken(FakeScheduler):
        def usage(self, job_id: int, timeout: float = 5.0) -> JobUsage:
            raise RuntimeError("boom")

    assert LiveUsage(Broken(FakeClock())).of(JOB) == {
        "unavailable": "reading it failed; see rxd's log"
    }


def test_only_unreadable_lines_say_so() -> None:
    slurm = FakeScheduler(FakeClock())
    slurm.usages[JOB] = JobUsage(JOB, [], skipped=2, gpus=0)

    answer = LiveUsage(slurm).of(JOB)

    assert answer == {"unavailable": "sstat's 2 line(s) for the job could not be read", "gpus": 0}


# -- status -------------------------------------------------------------------------------------


def test_status_of_an_awake_container_carries_its_usage(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    job_id = running(w, "alpha")
    w.slurm.usages[job_id] = usage_with(42.0, 3 << 30, 2)

    view = w.service.status(OWNER, "alpha").to_dict()

    assert view["usage"]["cpu_s"] == 42 and view["usage"]["memory_bytes"] == 3 << 30
    lines = status_lines(view)
    assert "usage         CPU 0m42s used, memory 3.0 GiB, GPUs 2" in lines


def test_status_stays_when_sstat_fails_and_says_usage_unavailable(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    job_id = running(w, "alpha")
    assert job_id not in w.slurm.usages  # the fake's sstat fails for it

    view = w.service.status(OWNER, "alpha").to_dict()

    assert view["state"] == "running" and "unavailable" in view["usage"]
    assert any(line.startswith("usage         unavailable: ") for line in status_lines(view))


def test_a_resting_container_shows_no_usage_and_asks_slurm_nothing(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "stopped"))

    view = w.service.status(OWNER, "alpha").to_dict()

    assert "usage" not in view and w.slurm.usage_calls == 0
    assert not any(line.startswith("usage") for line in status_lines(view))


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (69_070_848, "65.9 MiB"), (None, "-")],
)
def test_sizes_for_people(count: Any, text: str) -> None:
    assert size_text(count) == text


def test_a_usage_line_with_a_rate() -> None:
    line = usage_text({"cpu_s": 302.0, "cpus_busy": 1.98, "memory_bytes": 1 << 30, "gpus": 0})
    assert line == "CPU 1.98 busy (5m02s used), memory 1.0 GiB, GPUs 0"


def test_slurm_unavailable_is_a_slurm_error() -> None:
    # LiveUsage catches SlurmError: the adapter's "not answering" must be one.
    from rxslurm.slurm.errors import SlurmError

    assert issubclass(SlurmUnavailable, SlurmError)


def test_callers_at_once_share_one_sample() -> None:
    import threading

    class Slow(FakeScheduler):
        def usage(self, job_id: int, timeout: float = 5.0) -> JobUsage:
            entered.set()
            release.wait(10)
            return super().usage(job_id, timeout)

    entered, release = threading.Event(), threading.Event()
    slurm = Slow(FakeClock())
    slurm.usages[JOB] = usage_with(1.0)
    live = LiveUsage(slurm)
    answers: list[dict[str, Any]] = []
    callers = [threading.Thread(target=lambda: answers.append(live.of(JOB))) for _ in range(5)]
    for caller in callers:
        caller.start()
    entered.wait(10)
    release.set()
    for caller in callers:
        caller.join(10)

    assert slurm.usage_calls == 1 and len(answers) == 5
    assert all(a is answers[0] for a in answers)


def test_how_steps_ended_from_sacct() -> None:
    # Real lines of this cluster: step 0 was killed by SIGTERM.
    text = (
        "16834|0:0|rx-dt-procs\n16834.batch|0:0|batch\n16834.0|0:15|rx-exec-2f09baa409d15d08\n"
        "16834.1|3:0|rx-exec-00000000000000aa\n99.0|0:0|rx-exec-other\n16834.2|x|broken\n"
    )

    assert parse_step_exits(text, 16834) == {
        "rx-exec-2f09baa409d15d08": 143,
        "rx-exec-00000000000000aa": 3,
    }


@given(st.text())
def test_any_sacct_text_is_an_answer(text: str) -> None:
    assert all(isinstance(v, int) for v in parse_step_exits(text, JOB).values())


def test_status_asks_no_sstat_while_slurm_is_not_answering(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    job_id = running(w, "alpha")
    w.slurm.usages[job_id] = usage_with(1.0)
    w.slurm.answering = False
    w.reconcile()

    view = w.service.status(OWNER, "alpha").to_dict()

    assert view["usage"] == {"unavailable": "Slurm did not answer rxd's last look"}
    assert w.slurm.usage_calls == 0
