"""The step path's launcher (agent/launcher.py) on this host: it runs a command in a process group
of its own, its `signal` mode finds it by the step's name and the signal reaches the command's
group only, its trap runs and the status is the command's; a TERM is followed by a SIGKILL."""

from __future__ import annotations

import ast
import glob
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rxslurm.agent import launcher
from rxslurm.daemon.runtime.apptainer import launcher_argv, launcher_source

TRAP = "trap 'echo trapped; kill $!; exit 42' {sig}; echo ready; sleep 300 & wait; echo not-reached"


def python(code: str, *args: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(  # noqa: S603 - argv list
        [sys.executable, "-I", "-S", "-B", "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,  # type: ignore[call-overload]
    )


def with_settings(**settings: object) -> str:
    """The launcher's own text with some of its constants changed (as rxd passes the text)."""
    text = launcher_source()
    for name, value in settings.items():
        text = text.replace(f"\n{name} = ", f"\n{name} = {value!r}  # ", 1)
    return text


@pytest.fixture
def name() -> str:
    return "rx-exec-" + secrets.token_hex(8)


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    """The launchers a test started, killed if it failed half-way."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"


def signal_it(name: str, sig: str, source: str | None = None) -> int:
    proc = python(source or launcher_source(), "signal", name, sig)
    proc.communicate(timeout=60)
    return proc.returncode


@pytest.mark.parametrize("sig", ["INT", "TERM", "QUIT"])
def test_a_signal_reaches_the_command_and_its_trap_runs(
    name: str, started: list[subprocess.Popen[str]], sig: str
) -> None:
    proc = python(launcher_source(), "run", name, "--", "sh", "-c", TRAP.format(sig=sig))
    started.append(proc)
    ready(proc)
    assert signal_it(name, sig) == 0
    out, _ = proc.communicate(timeout=60)
    assert out == "trapped\n"
    assert proc.returncode == 42


def test_the_command_runs_in_a_group_of_its_own(
    name: str, started: list[subprocess.Popen[str]]
) -> None:
    script = "echo $$; sleep 300"
    proc = python(launcher_source(), "run", name, "--", "sh", "-c", script)
    started.append(proc)
    assert proc.stdout is not None
    pid = int(proc.stdout.readline())
    assert os.getpgid(pid) == pid != os.getpgid(proc.pid)
    assert signal_it(name, "INT") == 0
    proc.communicate(timeout=60)
    # Killed by SIGINT: the status a shell gives, as `apptainer exec` did.
    assert proc.returncode == 128 + signal.SIGINT


def test_a_command_that_ignores_term_is_killed_after_the_grace(
    name: str, started: list[subprocess.Popen[str]]
) -> None:
    source = with_settings(KILL_AFTER_S=1)
    proc = python(source, "run", name, "--", "sh", "-c", "trap '' TERM; echo ready; sleep 300")
    started.append(proc)
    ready(proc)
    assert signal_it(name, "TERM") == 0
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGKILL


def test_signal_finds_no_launcher_of_another_name(name: str) -> None:
    source = with_settings(FIND_TIMEOUT_S=0.2)
    assert signal_it(name, "INT", source) == 1


def test_a_signal_it_does_not_pass_on_is_refused(name: str) -> None:
    assert signal_it(name, "KILL") == 2


def test_a_command_that_cannot_start_fails_as_apptainer_exec_says(name: str) -> None:
    proc = python(launcher_source(), "run", name, "--", "no-such-program-rx")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == launcher.START_FAILED_STATUS == 255
    assert err == 'FATAL:   "no-such-program-rx": executable file not found in $PATH\n'


@pytest.mark.parametrize(
    "args", [[], ["run", "x"], ["run", "x", "--"], ["run", "x", "-t", "--", "true"], ["signal"]]
)
def test_bad_arguments_are_a_usage_error(args: list[str]) -> None:
    assert launcher.main(args) == 2


def test_rxd_passes_the_launcher_as_text_to_an_isolated_python3() -> None:
    argv = launcher_argv("run", "rx-exec-00")
    assert argv[:5] == ["python3", "-I", "-S", "-B", "-c"]
    assert argv[5] == Path(launcher.__file__).read_text(encoding="utf-8")
    assert argv[6:] == ["run", "rx-exec-00"]


def test_rxd_sends_inside_exactly_the_signals_the_launcher_passes_on() -> None:
    # Three lists name them (the layers keep the launcher from importing Slurm's side): a signal
    # rxd sends inside that the launcher refuses would be lost, not delivered by scancel instead.
    from rxslurm.protocol.commands import KILL_SIGNALS
    from rxslurm.slurm.step_signal import ENDING_SIGNALS, INSIDE_SIGNALS

    assert INSIDE_SIGNALS == launcher.FORWARDED
    assert set(ENDING_SIGNALS) <= set(INSIDE_SIGNALS)
    assert set(KILL_SIGNALS) - set(INSIDE_SIGNALS) == {"KILL"}


# The container's python3 runs the launcher wherever it runs the exec agent, which imports on
# Python 3.8 (Ubuntu 20.04's, the base of many CUDA images): nothing newer may be used.
NEWER_THAN_38 = {"removeprefix", "removesuffix"}  # str, 3.9


def older_pythons() -> list[str]:
    found = [shutil.which(f"python3.{minor}") for minor in (8, 9)]
    found += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.[89].*/bin/python3")))
    working = []
    for path in filter(None, found):
        probe = subprocess.run([path, "-c", "pass"], capture_output=True, check=False)
        if probe.returncode == 0:
            working.append(path)
    return working


def test_the_launcher_uses_nothing_newer_than_python_38() -> None:
    tree = ast.parse(launcher_source())
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not used & NEWER_THAN_38


@pytest.mark.parametrize("interpreter", [sys.executable, *older_pythons()])
def test_a_signal_right_after_the_command_started_reaches_its_trap(
    name: str, interpreter: str
) -> None:
    # The signal comes as soon as the command runs, which may be before Popen returned its pid
    # to the launcher (it used to drop such a signal); and on an older Python than rxd's.
    proc = subprocess.Popen(  # noqa: S603 - argv list
        [interpreter, "-I", "-S", "-B", "-c", launcher_source(), "run", name, "--"]
        # A short sleep: should the signal be lost, the command's own group ends soon anyway.
        + ["sh", "-c", TRAP.format(sig="INT").replace("sleep 300", "sleep 20")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready(proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=40)
    finally:
        proc.kill()
        proc.wait()
    assert (out, proc.returncode) == ("trapped\n", 42), err
