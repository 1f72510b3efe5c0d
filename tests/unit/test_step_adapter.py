"""The Slurm adapter's calls for exec steps and live usage, with a runner that records argv:
`squeue --steps` for the jobs asked, `scancel --signal` on one step as the runtime user (bad
ids and signals refused before anything runs, an ended step no error), `sstat` and squeue's
allocated TRES for usage, each within its short deadline."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from rxslurm.slurm.adapter import SlurmCli
from rxslurm.slurm.errors import SlurmError
from rxslurm.slurm.runas import RunAs


class Runner:
    def __init__(self, *answers: tuple[int, str, str]) -> None:
        self.answers = list(answers)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append({"argv": argv, **kw})
        code, out, err = self.answers.pop(0)
        return subprocess.CompletedProcess(argv, code, out, err)


def cli(runner: Runner) -> SlurmCli:
    # No Slurm here: each command "found" at /slurm/<name>; only the argv counts.
    slurm = SlurmCli(runner=runner)
    slurm._binary = lambda name: f"/slurm/{name}"  # type: ignore[method-assign]
    return slurm


def test_steps_asks_squeue_for_the_jobs_steps_once() -> None:
    runner = Runner((0, "142.3|1796084904|rx-exec-aa\n142.batch|1796084901|batch\n", ""))

    steps = cli(runner).steps([142, 7])

    assert [s.step_id for s in steps] == ["142.3"]
    argv = runner.calls[0]["argv"]
    assert argv == [
        "/slurm/squeue",
        "--steps",
        "--jobs=7,142",
        "--noheader",
        "--format=%i|%S|%j",
    ]
    assert runner.calls[0]["env_extra"] == {"SLURM_TIME_FORMAT": "%s"}


def test_signal_step_runs_scancel_on_the_step_as_the_user() -> None:
    runner = Runner((0, "", ""))
    who = RunAs.for_user("nobody")

    cli(runner).signal_step("142.3", "term", as_user=who)

    assert runner.calls[0]["argv"] == ["/slurm/scancel", "--quiet", "--signal=TERM", "142.3"]
    assert runner.calls[0]["as_user"] == who


def test_a_step_that_already_ended_is_not_an_error() -> None:
    runner = Runner((1, "", "scancel: error: Kill job error on job id 142.3: Invalid job id\n"))

    cli(runner).signal_step("142.3", "TERM")


def test_another_scancel_failure_is_raised() -> None:
    runner = Runner((1, "", "scancel: error: Access/permission denied\n"))

    with pytest.raises(SlurmError):
        cli(runner).signal_step("142.3", "TERM")


@pytest.mark.parametrize(
    ("step", "signal"), [("142", "TERM"), ("142.3;x", "TERM"), ("142.3", "TERM --full")]
)
def test_bad_steps_and_signals_are_refused_before_anything_runs(step: str, signal: str) -> None:
    runner = Runner()

    with pytest.raises(ValueError):
        cli(runner).signal_step(step, signal)

    assert runner.calls == []


def test_usage_is_one_sstat_and_one_squeue_with_the_short_deadline() -> None:
    runner = Runner(
        (0, "142.batch|1|cpu=00:00:02,mem=1M\n142.0|1|cpu=00:00:05,mem=2M\n", ""),
        (0, "cpu=2,mem=8G,node=1,billing=2,gres/gpu=2,gres/gpu:a100=2   \n", ""),
    )

    usage = cli(runner).usage(142, timeout=3.0)

    assert (usage.cpu_s, usage.memory_bytes, usage.gpus) == (7.0, 3 << 20, 2)
    sstat, squeue = (c["argv"] for c in runner.calls)
    assert sstat == [
        "/slurm/sstat",
        "--noheader",
        "--parsable2",
        "--allsteps",
        "--jobs=142",
        "--format=JobID,NTasks,TRESUsageInTot",
    ]
    assert squeue == ["/slurm/squeue", "--noheader", "--jobs=142", "--Format=tres-alloc:500"]
    assert [c["timeout"] for c in runner.calls] == [3.0, 3.0]


def test_usage_without_the_gpus_when_squeue_fails() -> None:
    runner = Runner((0, "142.0|1|cpu=00:00:05,mem=2M\n", ""), (1, "", "squeue: error: x\n"))

    assert cli(runner).usage(142).gpus is None


def test_a_failed_sstat_is_an_error_for_the_caller_to_word() -> None:
    runner = Runner((1, "", "sstat: error: couldn't get steps for job 142\n"))

    with pytest.raises(SlurmError):
        cli(runner).usage(142)


def test_step_exits_is_one_sacct_of_the_jobs_steps() -> None:
    runner = Runner((0, "142.3|0:15|rx-exec-aa\n", ""))

    assert cli(runner).step_exits(142) == {"rx-exec-aa": 143}
    assert runner.calls[0]["argv"] == [
        "/slurm/sacct",
        "--noheader",
        "--parsable2",
        "--allusers",
        "--jobs=142",
        "--format=JobID,ExitCode,JobName",
    ]
