"""The SPANK plugin (slurm/spank/rx_spank.c) without Slurm: it builds with every warning an error
and exports only what Slurm looks up; and, driven by a stand-in for Slurm's side of the SPANK API
(tests/spank/harness.c), it hands a task to exactly `rxctl run --project P -- ARGV...` with the
task's environment, leaves the batch script on the host but passes the project to its srun
steps, and fails a task it cannot hand on with one line and status 125, never running it on the
host. Slurm 23.11's path (spank_prepend_task_argv) is compiled and driven too, over the installed
22.05 headers with 23.11's version number (tests/spank/slurm-23.11). The real thing on the real
cluster: tests/test_spank_e2e.py."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_rxd import short_tmp_dir

ROOT = Path(__file__).parent.parent
SOURCE = ROOT / "slurm" / "spank"
HARNESS = ROOT / "tests" / "spank" / "harness.c"
# Slurm 23.11's version over the installed headers: the spank_prepend_task_argv path.
SLURM_2311 = ROOT / "tests" / "spank" / "slurm-23.11"
SPANK_H = Path("/usr/include/slurm/spank.h")
PROJECT_FOR_SRUN = "SLURM_SPANK__SLURM_SPANK_OPTION_rx_spank_rx_project"
OWN_FAILURE = 125
# Stands in for rxctl: its pid and the task environment it got, then each argument on a line.
SHOW = '#!/bin/sh\necho "pid $$ $RX_TASK_ENV"\nfor a in "$@"; do printf "%s\\n" "$a"; done\n'


def needs_a_compiler() -> None:
    # CI (.ci/run) and tests/cluster/setup.sh install both: a missing one is a failure.
    found = {"gcc": shutil.which("gcc") is not None, str(SPANK_H): SPANK_H.exists()}
    missing = [name for name, there in found.items() if not there]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: install gcc and libslurm-dev", pytrace=False)


@pytest.fixture(scope="module")
def built() -> Iterator[Path]:
    needs_a_compiler()
    with short_tmp_dir() as folder:
        plugin = folder / "rx_spank.so"
        make = subprocess.run(
            ["make", "-s", "-C", str(SOURCE), f"OUT={plugin}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert make.returncode == 0, make.stdout + make.stderr
        for name, include in (("harness", []), ("harness-2311", [f"-I{SLURM_2311}"])):
            cc = subprocess.run(
                ["gcc", "-std=gnu11", "-Wall", "-Wextra", "-Werror", *include,
                 "-o", str(folder / name), str(HARNESS), str(SOURCE / "rx_spank.c")],
                capture_output=True,
                text=True,
                timeout=120,
            )  # fmt: skip
            assert cc.returncode == 0, cc.stderr
        show = folder / "rxctl"
        show.write_text(SHOW)
        show.chmod(0o755)
        yield folder


def drive(
    folder: Path,
    context: str,
    step: str,
    project: str,
    *config: str,
    task: tuple[str, ...] = (),
    harness: str = "harness",
) -> subprocess.CompletedProcess[str]:
    argv = [str(folder / harness), context, step, project, *config, "--", *task]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_the_plugin_builds_with_warnings_as_errors_and_exports_only_slurms_symbols(
    built: Path,
) -> None:
    symbols = subprocess.run(
        ["nm", "-D", "--defined-only", str(built / "rx_spank.so")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = {line.split()[-1].split("@")[0] for line in symbols.splitlines() if line.strip()}
    names.discard("RX_SPANK_1")  # the version node itself
    assert names == {
        "plugin_name",
        "plugin_type",
        "plugin_version",
        "slurm_spank_init",
        "slurm_spank_task_init",
        "slurm_spank_exit",
    }


def test_a_task_of_a_step_becomes_rxctl_run_with_its_argv_and_environment(built: Path) -> None:
    rxctl = built / "rxctl"
    done = drive(built, "remote", "0", "alpha", f"rxctl={rxctl}", task=("python3", "-c", "a b"))
    assert done.returncode == 0, done.stderr
    first, *argv = done.stdout.splitlines()
    # execve in the task's process: the task's environment, nothing continues after it.
    assert first.split()[2:] == ["yes"]
    assert argv == ["run", "--project", "alpha", "--", "python3", "-c", "a b"]
    assert "continued" not in done.stdout


def test_on_slurm_23_11_the_words_are_prepended_and_slurmstepd_goes_on(built: Path) -> None:
    rxctl = built / "rxctl"
    done = drive(
        built, "remote", "0", "alpha", f"rxctl={rxctl}", task=("python3",), harness="harness-2311"
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [f"prepend {rxctl} run --project alpha --", "continued"]
    batch = drive(built, "remote", "batch", "alpha", f"rxctl={rxctl}", harness="harness-2311")
    assert batch.stdout.splitlines() == [f"setenv {PROJECT_FOR_SRUN}=alpha", "continued"]


def test_the_batch_script_stays_on_the_host_and_passes_the_project_to_its_sruns(
    built: Path,
) -> None:
    done = drive(built, "remote", "batch", "alpha", f"rxctl={built / 'rxctl'}", task=("job.sh",))
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [f"setenv {PROJECT_FOR_SRUN}=alpha", "continued"]


@pytest.mark.parametrize(("step", "project"), [("extern", "alpha"), ("0", "-"), ("7", "-")])
def test_other_special_steps_and_jobs_without_a_project_are_left_alone(
    built: Path, step: str, project: str
) -> None:
    done = drive(built, "remote", step, project, f"rxctl={built / 'rxctl'}", task=("true",))
    assert (done.returncode, done.stdout, done.stderr) == (0, "continued\n", "")


@pytest.mark.parametrize(
    ("config", "line"),
    [
        (("bogus",), "rx: plugstack.conf: 'bogus' for rx_spank.so is not rxctl=/absolute/path"),
        (("rxctl=rxctl",), "rx: plugstack.conf: 'rxctl=rxctl' for rx_spank.so is not "
         "rxctl=/absolute/path"),
        ((), "rx: --rx-project: plugstack.conf names no rxctl=/path for rx_spank.so"),
        (("rxctl=/nonexistent/rxctl",), "rx: task: cannot run /nonexistent/rxctl: "
         "No such file or directory"),
    ],
)  # fmt: skip
def test_a_task_that_cannot_be_handed_on_fails_with_one_line_never_on_the_host(
    built: Path, config: tuple[str, ...], line: str
) -> None:
    done = drive(built, "remote", "3", "alpha", *config, task=("true",))
    # The plugin is `optional` in plugstack.conf, so Slurm would ignore its error and run the
    # task on the host: it ends the task itself.
    assert (done.returncode, done.stdout, done.stderr) == (OWN_FAILURE, "", line + "\n")


def test_a_bad_config_in_slurmstepd_fails_only_tasks_that_asked_for_a_project(
    built: Path,
) -> None:
    done = drive(built, "remote", "3", "-", "bogus", task=("true",))
    assert (done.returncode, done.stdout, done.stderr) == (0, "continued\n", "")


@pytest.mark.parametrize("context", ["local", "allocator"])
def test_a_bad_config_stops_srun_sbatch_and_salloc_with_one_line(built: Path, context: str) -> None:
    done = drive(built, context, "0", "-", "rxctl=/x", "extra", task=("true",))
    assert done.stdout == "init failed\n"
    assert (
        done.stderr == "rx: plugstack.conf: 'extra' for rx_spank.so is not rxctl=/absolute/path\n"
    )


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("", "rx: --rx-project needs a project name"),
        ("--help", "rx: --rx-project: '--help' is not a project name (they start with a-z)"),
        ("Alpha", "rx: --rx-project: 'Alpha' is not a project name (they start with a-z)"),
    ],
)
def test_a_name_that_is_no_project_name_is_refused(built: Path, name: str, line: str) -> None:
    done = drive(built, "local", "0", name, f"rxctl={built / 'rxctl'}", task=("true",))
    assert (done.stdout, done.stderr) == ("option refused\n", line + "\n")
