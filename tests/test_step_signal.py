"""Ctrl-C for an exec step: found by its name, signalled once through scancel (no Slurm here)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from rxslurm.slurm import step_signal
from rxslurm.slurm.step_signal import StepSignaller, new_step_name, parse_steps


def test_the_named_step_is_found_among_others() -> None:
    text = "7.batch|batch\n7.0|rx-exec-aa\n7.1|rx-exec-bb\n7.extern|extern\n"
    assert parse_steps(text, "rx-exec-bb") == "7.1"
    assert parse_steps(text, "rx-exec-cc") is None
    # Only a numbered step is a step rxd started; a batch or extern step is never signalled.
    assert parse_steps("7.batch|rx-exec-aa\n", "rx-exec-aa") is None


@given(st.text(max_size=200), st.text(min_size=1, max_size=30))
def test_parse_steps_returns_only_a_numbered_step_id_of_that_name(text: str, name: str) -> None:
    found = parse_steps(text, name)
    if found is not None:
        job, _, step = found.partition(".")
        assert job.isdigit() and step.isdigit()
        assert f"{found}|{name}" in text


def test_step_names_differ() -> None:
    names = {new_step_name() for _ in range(100)}
    assert len(names) == 100 and all(n.startswith("rx-exec-") for n in names)


def fake_slurm(tmp_path: Path, appears_after: int) -> Path:
    """squeue shows the step only from its Nth call on; scancel logs its argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "squeue-calls"
    scripts = {
        "squeue": f"""#!/bin/sh
echo x >> {calls}
echo "5.batch|batch"
if [ "$(wc -l < {calls})" -ge {appears_after} ]; then echo "5.3|rx-exec-me"; fi
""",
        "scancel": f'#!/bin/sh\necho "$@" >> {tmp_path}/scancel-log\n',
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def test_a_ctrl_c_before_the_step_shows_waits_for_it_and_is_sent_once(tmp_path, monkeypatch):
    monkeypatch.setattr(step_signal, "FIND_POLL_S", 0.01)
    bin_dir = fake_slurm(tmp_path, appears_after=3)
    signaller = StepSignaller(5, "rx-exec-me", bin_dir=str(bin_dir))
    signaller.send("INT")
    signaller.wait(30)
    signaller.send("INT")  # a second Ctrl-C: one more SIGINT, the step is not looked up again
    signaller.wait(30)
    log = (tmp_path / "scancel-log").read_text().splitlines()
    assert log == ["--quiet --signal=INT 5.3", "--quiet --signal=INT 5.3"]
    assert len((tmp_path / "squeue-calls").read_text().splitlines()) == 3


def test_a_step_whose_srun_ended_is_not_signalled(tmp_path: Path) -> None:
    bin_dir = fake_slurm(tmp_path, appears_after=1)
    signaller = StepSignaller(5, "rx-exec-me", bin_dir=str(bin_dir), alive=lambda: False)
    signaller.send("INT")
    signaller.wait(30)
    assert not os.path.exists(tmp_path / "scancel-log")


def test_under_a_launcher_each_signal_is_one_signal_step_in_order(tmp_path: Path) -> None:
    bin_dir = fake_slurm(tmp_path, appears_after=1)
    srun = bin_dir / "srun"
    srun.write_text(f'#!/bin/sh\necho "$APPTAINER_CONFIGDIR $*" >> {tmp_path}/srun-log\n')
    srun.chmod(0o755)
    inside = [
        "srun",
        "--jobid=5",
        "--",
        "apptainer",
        "exec",
        "instance://x",
        "signal",
        "rx-exec-me",
    ]
    signaller = StepSignaller(
        5, "rx-exec-me", bin_dir=str(bin_dir), inside=inside, env={"APPTAINER_CONFIGDIR": "/c"}
    )
    for name in ("INT", "INT", "QUIT"):
        signaller.send(name)
    signaller.wait(30)
    signaller.send("WINCH")  # not the launcher's: to the step, as before
    signaller.wait(30)

    steps = (tmp_path / "srun-log").read_text().splitlines()
    prefix = "/c --jobid=5 -- apptainer exec instance://x signal rx-exec-me"
    assert steps == [f"{prefix} INT", f"{prefix} INT", f"{prefix} QUIT"]
    assert (tmp_path / "scancel-log").read_text().splitlines() == ["--quiet --signal=WINCH 5.3"]


def test_no_signal_step_runs_once_the_srun_has_ended(tmp_path: Path) -> None:
    bin_dir = fake_slurm(tmp_path, appears_after=1)
    inside = [str(bin_dir / "scancel"), "signal", "rx-exec-me"]
    signaller = StepSignaller(
        5, "rx-exec-me", bin_dir=str(bin_dir), inside=inside, alive=lambda: False
    )
    signaller.send("INT")
    signaller.wait(30)
    assert not os.path.exists(tmp_path / "scancel-log")


def test_a_term_no_launcher_took_goes_to_the_fallback_but_never_an_int(tmp_path: Path) -> None:
    bin_dir = fake_slurm(tmp_path, appears_after=1)
    srun = bin_dir / "srun"
    srun.write_text("#!/bin/sh\necho no launcher >&2; exit 1\n")
    srun.chmod(0o755)
    fell_back: list[str] = []
    signaller = StepSignaller(
        5, "rx-exec-me", bin_dir=str(bin_dir), inside=["srun"], fallback=fell_back.append
    )
    for name in ("INT", "TERM", "QUIT", "HUP"):
        signaller.send(name)
    signaller.wait(30)
    # srun's own SIGINT (and QUIT) handling would end the step: those are dropped instead.
    assert fell_back == ["TERM", "HUP"]
