"""`rxctl run` without rxd or Apptainer: the batch plan as rxd answers it (checked field by
field), the one `apptainer exec` argv made from it, and rxctl replacing itself with it (a stand-in
program that prints what it got, started by execve in rxctl's own process)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rxslurm.cli import batch_run
from rxslurm.cli.client import ApiError
from rxslurm.protocol import batch_plan
from rxslurm.protocol.batch_plan import BadPlan, exec_argv, granted_gpus, parse
from tests.support.fake_rxd import http_answer, serve, short_tmp_dir

PLAN: dict[str, Any] = {
    "project": "alpha",
    "image": "/var/lib/rxslurm/images/alpha.sif",
    "snapshot": {
        "path": "/var/lib/rxslurm/snapshots/alpha/3.img",
        "taken_at": "2026-12-01T00:10:00Z",
        "id": 3,
    },
    "workspace": "/srv/rxslurm/workspaces/alpha",
    "workspace_target": "/workspace",
    "binds": ["/datasets:/datasets:ro"],
    "gpu_driver": "nvidia",
    "apptainer": "/usr/bin/apptainer",
}
OWN_FAILURE = 125


def plan(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(PLAN)
    data.update(changes)
    return data


def test_a_plan_becomes_apptainer_exec_with_the_snapshot_read_only_and_the_workspace() -> None:
    argv = exec_argv(parse(PLAN), ["python3", "-c", "print(1)"], gpus=True)
    assert argv == [
        "/usr/bin/apptainer",
        "--quiet",
        "exec",
        "--nv",
        "--overlay",
        "/var/lib/rxslurm/snapshots/alpha/3.img:ro",
        "-B",
        "/srv/rxslurm/workspaces/alpha:/workspace",
        "-B",
        "/datasets:/datasets:ro",
        "/var/lib/rxslurm/images/alpha.sif",
        "python3",
        "-c",
        "print(1)",
    ]


def test_without_a_snapshot_the_bare_image_and_without_gpus_no_driver() -> None:
    argv = exec_argv(parse(plan(snapshot=None, binds=[])), ["true"], gpus=False)
    assert argv == [
        "/usr/bin/apptainer",
        "--quiet",
        "exec",
        "-B",
        "/srv/rxslurm/workspaces/alpha:/workspace",
        "/var/lib/rxslurm/images/alpha.sif",
        "true",
    ]


@pytest.mark.parametrize(
    ("driver", "flag"), [("nvidia", ["--nv"]), ("rocm", ["--rocm"]), ("amd", ["--rocm"]), ("", [])]
)
def test_the_gpu_driver_flag_only_with_granted_gpus(driver: str, flag: list[str]) -> None:
    with_gpus = exec_argv(parse(plan(gpu_driver=driver)), ["true"], gpus=True)
    assert with_gpus[3 : 3 + len(flag)] == flag
    assert not {"--nv", "--rocm"} & set(
        exec_argv(parse(plan(gpu_driver=driver)), ["t"], gpus=False)
    )


def test_rxd_naming_no_program_means_apptainer_on_path() -> None:
    assert exec_argv(parse(plan(apptainer="")), ["true"], gpus=False)[0] == "apptainer"


@pytest.mark.parametrize(
    ("env", "granted"),
    [
        ({}, False),
        ({"SLURM_STEP_GPUS": "0"}, True),
        ({"SLURM_JOB_GPUS": "0,1"}, True),
        ({"SLURM_STEP_GPUS": "", "SLURM_JOB_GPUS": " "}, False),
        # CUDA's own variable is not Slurm's word that the job has GPUs.
        ({"CUDA_VISIBLE_DEVICES": "0"}, False),
    ],
)
def test_gpus_are_granted_when_slurm_says_so(env: dict[str, str], granted: bool) -> None:
    assert granted_gpus(env) is granted


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"project": ""}, "'project'"),
        ({"image": "alpha.sif"}, "'image'"),
        ({"image": "/images/a:b.sif"}, "'image'"),
        ({"workspace": None}, "'workspace'"),
        ({"workspace": "/srv/a,/etc"}, "'workspace'"),
        ({"workspace_target": "workspace"}, "'workspace_target'"),
        ({"snapshot": "/snap.img"}, "'snapshot'"),
        ({"snapshot": {"path": "snap.img", "taken_at": "", "id": 1}}, "'path'"),
        ({"snapshot": {"path": "/s.img", "taken_at": "", "id": True}}, "'id'"),
        ({"binds": "/data"}, "'binds'"),
        ({"binds": ["/data,/etc"]}, "'binds'"),
        ({"binds": ["data"]}, "'binds'"),
        ({"gpu_driver": "intel"}, "'gpu_driver'"),
        ({"apptainer": "apptainer"}, "'apptainer'"),
        ({"image": "/a\x00b"}, "'image'"),
    ],
)
def test_a_bad_field_is_refused_by_name(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(BadPlan, match=field):
        parse(plan(**changes))


@pytest.mark.parametrize("data", [None, [], "plan", 3])
def test_an_answer_that_is_no_object_is_refused(data: Any) -> None:
    with pytest.raises(BadPlan):
        parse(data)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


# No per-example deadline: on a shared 2-core machine one slow example is load, not a finding.
@settings(deadline=None)
@given(changes=st.dictionaries(st.sampled_from(sorted(PLAN)), JSON, max_size=3))
def test_any_answer_is_a_plan_or_badplan_never_another_error(changes: dict[str, Any]) -> None:
    try:
        parsed = parse(plan(**changes))
    except BadPlan:
        return
    # What passed is what rxd said, field for field.
    assert parsed.project == plan(**changes)["project"]
    assert parsed.image.startswith("/") and ":" not in parsed.image


WORD = st.text(st.characters(exclude_characters="\x00"), max_size=12)
PATH = st.lists(st.text("abcxyz019-_. ", min_size=1, max_size=6), min_size=1, max_size=3).map(
    lambda parts: "/" + "/".join(parts)
)


@settings(deadline=None)
@given(
    command=st.lists(WORD, min_size=1, max_size=5),
    workspace=PATH,
    image=PATH,
    snapshot=st.none() | PATH,
    binds=st.lists(PATH, max_size=3),
    driver=st.sampled_from(sorted(batch_plan.GPU_FLAGS) + [""]),
    gpus=st.booleans(),
)
def test_every_word_of_the_command_is_one_item_after_the_image(
    command: list[str],
    workspace: str,
    image: str,
    snapshot: str | None,
    binds: list[str],
    driver: str,
    gpus: bool,
) -> None:
    data = plan(
        workspace=workspace,
        image=image,
        snapshot=None if snapshot is None else {"path": snapshot, "taken_at": "", "id": "s"},
        binds=binds,
        gpu_driver=driver,
    )
    argv = exec_argv(parse(data), command, gpus=gpus)
    # The command comes last, word for word, right after the image: nothing of it is an option
    # of Apptainer's, and nothing is joined or split.
    assert argv[-len(command) - 1 :] == [image, *command]
    options = argv[: -len(command) - 1]
    assert options[:3] == ["/usr/bin/apptainer", "--quiet", "exec"]
    assert "--fakeroot" not in options and "--writable" not in options
    assert (f"{snapshot}:ro" in options) is (snapshot is not None)
    assert options.count("-B") == 1 + len(binds)
    assert f"{workspace}:/workspace" in options


class BusyRxd:
    """Stands in for the client: turned away `busy` times for too many connections, then the
    plan (or always, busy=-1)."""

    def __init__(self, busy: int, code: str = "too_many_connections") -> None:
        self.busy, self.code, self.asked = busy, code, 0

    def get(self, route: str) -> Any:
        self.asked += 1
        if self.busy < 0 or self.asked <= self.busy:
            raise ApiError(503, self.code, "too many connections from uid 2001")
        return plan()


def test_a_task_turned_away_for_too_many_connections_asks_again() -> None:
    waits: list[float] = []
    rxd = BusyRxd(busy=3)
    got = batch_run.plan_for(rxd, "alpha", sleep=waits.append)  # type: ignore[arg-type]
    assert got == parse(plan()) and rxd.asked == 4
    # Random waits that grow, so the tasks of a step spread out.
    assert len(waits) == 3 and all(0 < w <= 2.0 for w in waits)


def test_it_gives_up_after_a_while_and_other_refusals_at_once() -> None:
    waits: list[float] = []
    with pytest.raises(ApiError):
        batch_run.plan_for(BusyRxd(busy=-1), "alpha", sleep=waits.append)  # type: ignore[arg-type]
    assert batch_run.BUSY_RETRY_S <= sum(waits) <= batch_run.BUSY_RETRY_S + 2.0
    refused = BusyRxd(busy=1, code="not_found")
    with pytest.raises(ApiError):
        batch_run.plan_for(refused, "alpha", sleep=waits.append)  # type: ignore[arg-type]
    assert refused.asked == 1


# -- rxctl run, the program ----------------------------------------------------------------------

# Stands in for Apptainer: prints its pid, then each argument on its own line.
SHOW_ARGV = '#!/bin/sh\necho "pid $$"\nfor a in "$@"; do printf "%s\\n" "$a"; done\n'


@pytest.fixture
def folder() -> Iterator[Path]:
    with short_tmp_dir() as path:
        yield path


def fake_apptainer(folder: Path) -> str:
    program = folder / "apptainer"
    program.write_text(SHOW_ARGV)
    program.chmod(0o755)
    return str(program)


def rxctl_run(
    folder: Path, *command: str, env: dict[str, str] | None = None, project: str = "alpha"
) -> tuple[subprocess.CompletedProcess[str], int]:
    """rxctl run against the API socket in `folder`; its result and its process id."""
    argv = [sys.executable, "-c", "from rxslurm.cli.fastpath import main; main()"]
    argv += ["--socket", str(folder / "rxd.sock"), "run", "--project", project, "--", *command]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RX"))}
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**base, **(env or {})},
    )
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err), proc.pid


def test_rxctl_run_becomes_apptainer_in_its_own_process(folder: Path) -> None:
    program = fake_apptainer(folder)
    served = serve(folder / "rxd.sock", http_answer(plan(apptainer=program)))
    result, pid = rxctl_run(folder, "python3", "-c", "a b", env={"SLURM_STEP_GPUS": "1"})
    assert result.returncode == 0, result.stderr
    assert served.received.startswith(b"GET /v1/projects/alpha/batch-plan HTTP/1.1\r\n")
    first, *args = result.stdout.splitlines()
    # execve: the program runs in rxctl's process, no process of rxctl's stays between.
    assert first == f"pid {pid}"
    assert (
        args == exec_argv(parse(plan(apptainer=program)), ["python3", "-c", "a b"], gpus=True)[1:]
    )
    assert result.stderr == ""


def test_without_a_snapshot_one_note_on_stderr_and_the_bare_image(folder: Path) -> None:
    program = fake_apptainer(folder)
    serve(folder / "rxd.sock", http_answer(plan(apptainer=program, snapshot=None)))
    result, _ = rxctl_run(folder, "true")
    assert result.returncode == 0, result.stderr
    assert "--overlay" not in result.stdout.splitlines()
    assert result.stderr == (
        "rxctl run: alpha has no snapshot of its container yet; running in its bare image "
        "(software installed in the container is missing)\n"
    )


def test_the_environment_and_working_folder_reach_the_program(folder: Path) -> None:
    program = folder / "apptainer"
    program.write_text('#!/bin/sh\necho "$CUDA_VISIBLE_DEVICES $(pwd)"\n')
    program.chmod(0o755)
    serve(folder / "rxd.sock", http_answer(plan(apptainer=str(program))))
    result, _ = rxctl_run(folder, "true", env={"CUDA_VISIBLE_DEVICES": "1", "PWD": "/"})
    assert result.stdout == f"1 {Path.cwd()}\n", result.stderr


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (
            http_answer(
                {"error": {"code": "not_found", "message": "no project named 'beta'"}},
                "404 Not Found",
            ),
            "Error: no project named 'beta'\n",
        ),
        (
            http_answer(
                {"error": {"code": "forbidden", "message": "run needs role editor"}}, "403"
            ),
            "Error: run needs role editor\n",
        ),
        (http_answer(plan(image="x.sif")), None),
    ],
)
def test_rxd_refusing_is_one_line_and_rxctls_own_status(
    folder: Path, answer: bytes, message: str | None
) -> None:
    serve(folder / "rxd.sock", answer)
    result, _ = rxctl_run(folder, "true")
    assert (result.returncode, result.stdout) == (OWN_FAILURE, "")
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("Error: ")
    if message is not None:
        assert result.stderr == message


def test_no_rxd_is_one_line_and_rxctls_own_status(folder: Path) -> None:
    result, _ = rxctl_run(folder, "true")
    assert (result.returncode, result.stdout) == (OWN_FAILURE, "")
    assert result.stderr == f"Error: rxd is not running (nothing listens on {folder}/rxd.sock)\n"


def test_apptainer_that_cannot_run_is_one_line_and_rxctls_own_status(folder: Path) -> None:
    serve(folder / "rxd.sock", http_answer(plan(apptainer=str(folder / "missing"))))
    result, _ = rxctl_run(folder, "true")
    assert (result.returncode, result.stdout) == (OWN_FAILURE, "")
    assert result.stderr == f"Error: cannot run {folder}/missing: No such file or directory\n"
