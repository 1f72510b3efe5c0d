"""Batch jobs in a project's environment, end to end: real rxd, real cluster, real Apptainer.

The SPANK plugin as tests/cluster/setup.sh installs it (plugstack.conf.d/rxslurm.conf), and
`rxctl run` without it: a researcher's own `sbatch` job whose `srun` tasks import a package
installed in the project's container (from its newest snapshot, read-only), see /workspace and
only the job's GPU, while the batch script itself stays on the host. A compute node does not see
rxd's socket (tests/cluster/setup.sh), so every step reaches rxd through its MUNGE network door,
as on a real cluster; handed only the socket, a step fails saying so. A non-member's job fails
with one clear line per task and cannot read the project's files; and a batch job reads the
snapshot, not the live overlay, while the container is awake and writing, neither failing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import lifecycle
from tests.support.cli import ok, refused
from tests.support.cluster import run_as, wait_for
from tests.support.daemon import RXCTL, Rxd, free_port, running_rxd

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("container_runtime")]

PROJECT = "sp-alpha"  # this module's own: a project's job is a Slurm singleton
SPANK_CONF = Path("/etc/slurm/plugstack.conf.d/rxslurm.conf")
PACKAGE = "rxbatchpkg"
OWN_FAILURE = 125
# Each task prints one JSON line: what it imports, sees and may open.
PROBE = f"""
import errno, glob, json, os
def how(path):
    try:
        os.close(os.open(path, os.O_RDONLY))
        return "open"
    except OSError as exc:
        return errno.errorcode[exc.errno]
import {PACKAGE}
print(json.dumps({{
    "task": int(os.environ["SLURM_PROCID"]),
    "package": {PACKAGE}.VALUE,
    "workspace": sorted(os.listdir("/workspace")),
    "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
    "granted": os.environ.get("SLURM_STEP_GPUS") or os.environ.get("SLURM_JOB_GPUS"),
    "gpus": {{path: how(path) for path in sorted(glob.glob("/dev/fakegpu*"))}},
    "cwd": os.getcwd(),
    "container": os.path.isdir("/.singularity.d"),
}}), flush=True)
"""
# The batch script's own line: on the host, not in the container.
WHERE = 'echo "batch: $(test -d /.singularity.d && echo container || echo host)"'


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    # setup.sh writes "optional PLUGIN rxctl=RXCTL": both must be there for any task to run.
    words = SPANK_CONF.read_text().split() if SPANK_CONF.is_file() else []
    plugin, rxctl = (words[1], words[2].removeprefix("rxctl=")) if len(words) == 3 else ("", "")
    if not (Path(plugin).is_file() and os.access(rxctl, os.X_OK)):
        pytest.fail(
            f"{SPANK_CONF} names no installed plugin and rxctl: run tests/cluster/setup.sh",
            pytrace=False,
        )
    # Also on a network door: compute nodes reach rxd that way (MUNGE proves the job's user).
    door = f'listen = "127.0.0.1:{free_port()}"\n'
    config = lambda root: door + lifecycle.lifecycle_config(root)  # noqa: E731
    with running_rxd(config, bind=("rxalice", "rxbob", "rxcarol", "rxdave")) as daemon:
        try:
            yield daemon
        finally:
            daemon.rxctl("rxalice", "stop", "--project", PROJECT)


@pytest.fixture(scope="module")
def project(rxd: Rxd) -> dict[str, Any]:
    """PROJECT with PACKAGE installed in its container and a file in its workspace, asleep with
    a snapshot taken; rxbob an editor (who may run batch steps), rxdave a viewer (who may not),
    rxcarol in no project."""
    lifecycle.make_project(rxd, PROJECT)
    ok(
        rxd.rxctl(
            "rxalice", "project", "member", "add", "--project", PROJECT, "rxbob", "--role", "editor"
        )
    )
    ok(
        rxd.rxctl(
            "rxalice",
            "project",
            "member",
            "add",
            "--project",
            PROJECT,
            "rxdave",
            "--role",
            "viewer",
        )
    )
    ok(rxd.rxctl("rxalice", "enable", "--project", PROJECT))
    lifecycle.wait_state(rxd, PROJECT, "running", timeout=180)
    install = (
        "import site, pathlib; "
        f"pathlib.Path(site.getsitepackages()[0], '{PACKAGE}.py').write_text('VALUE = 42\\n'); "
        "pathlib.Path('/workspace/data.txt').write_text('data\\n')"
    )
    argv = ("exec", "--project", PROJECT, "--", "python3", "-c", install)
    ok(rxd.rxctl("rxalice", *argv))
    ok(rxd.rxctl("rxalice", "stop", "--project", PROJECT))
    lifecycle.wait_state(rxd, PROJECT, "stopped", timeout=120)
    seen: dict[str, Any] = {}

    def snapshot_taken() -> bool:
        seen.update(lifecycle.status(rxd, "rxalice", PROJECT))
        return bool(seen.get("snapshot"))

    wait_for(snapshot_taken, timeout=120, what=f"a snapshot of {PROJECT} after it slept")
    return seen


@pytest.fixture
def job_dir(rxd: Rxd) -> Iterator[Path]:
    """A folder the test users may write their job scripts and output in."""
    folder = rxd.root / "jobs"
    folder.mkdir(mode=0o1777, exist_ok=True)
    folder.chmod(0o1777)
    yield folder


def door_env(rxd: Rxd) -> dict[str, str]:
    """What a login node's rxctl.toml (or $RXSLURM_SERVER) names: rxd's network door."""
    return {"RXSLURM_SERVER": tomllib.loads(rxd.config.read_text())["daemon"]["listen"]}


def submit(
    rxd: Rxd, user: str, folder: Path, body: str, *options: str, env: dict[str, str] | None = None
) -> tuple[int, subprocess.CompletedProcess[str]]:
    """sbatch a script as `user` with rxd's network door in its environment (as any job's
    environment comes from the submitter's; or `env` instead), wait until it ended; its job id
    and its output."""
    script = folder / f"{user}-{len(list(folder.iterdir()))}.sh"
    script.write_text(f"#!/bin/bash\n{body}\n")
    script.chmod(0o755)
    out = script.with_suffix(".out")
    argv = ["sbatch", "--parsable", "-o", str(out), *options, str(script)]
    submitted = ok(run_as(user, argv, env=door_env(rxd) if env is None else env, cwd=folder))
    job_id = int(submitted.stdout.strip().split(";")[0])

    def ended() -> bool:
        listed = subprocess.run(
            ["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True
        )
        return listed.returncode != 0 or listed.stdout.strip() == ""

    try:
        wait_for(ended, timeout=240, interval=0.5, what=f"job {job_id} of {user} to end")
    finally:
        # Not a job of rxd's (its shutdown cancels only those): never leave it to the cluster.
        subprocess.run(["scancel", str(job_id)], capture_output=True, timeout=30)
    text = out.read_text() if out.exists() else ""
    return job_id, subprocess.CompletedProcess(argv, 0, text, "")


def task_reports(output: str) -> list[dict[str, Any]]:
    return sorted(
        (json.loads(line) for line in output.splitlines() if line.startswith("{")),
        key=lambda report: report["task"],
    )


def assert_in_the_project(output: str, folder: Path) -> None:
    reports = task_reports(output)
    assert [r["task"] for r in reports] == [0, 1], output
    for report in reports:
        assert report["container"] is True
        # Installed in the container, read from its snapshot.
        assert report["package"] == 42
        assert report["workspace"] == ["data.txt"]
        assert report["cwd"] == str(folder)
        # Only the job's GPU: Slurm numbers what a job sees from 0, and the device cgroup lets
        # it open only its own (no driver behind the fake GPUs: ENXIO) and no other (EPERM).
        assert report["cuda"] == "0"
        granted = f"/dev/fakegpu{report['granted']}"
        assert report["gpus"][granted] == "ENXIO", report
        others = {path: why for path, why in report["gpus"].items() if path != granted}
        assert others and set(others.values()) == {"EPERM"}, report


def test_sbatch_rx_project_runs_the_srun_tasks_in_the_project_and_the_script_on_the_host(
    rxd: Rxd, project: dict[str, Any], job_dir: Path
) -> None:
    probe = job_dir / "probe.py"
    probe.write_text(PROBE)
    body = f"{WHERE}\nsrun python3 {probe}"
    options = (f"--rx-project={PROJECT}", "-n", "2", "--gres=gpu:1", "-p", "gpu")
    _, job = submit(rxd, "rxbob", job_dir, body, *options)
    assert job.stdout.splitlines()[0] == "batch: host", job.stdout
    assert_in_the_project(job.stdout, job_dir)


def test_steps_on_every_node_mount_the_same_snapshot_at_once(
    rxd: Rxd, project: dict[str, Any], job_dir: Path
) -> None:
    probe = f"import os, {PACKAGE}; print(os.environ['SLURMD_NODENAME'], {PACKAGE}.VALUE)"
    (job_dir / "node.py").write_text(probe)
    body = f"srun python3 {job_dir / 'node.py'}"
    # One CPU on each node: the cluster is shared, a whole node may well be busy.
    options = (f"--rx-project={PROJECT}", "-N", "3", "-n", "3", "--ntasks-per-node=1")
    _, job = submit(rxd, "rxbob", job_dir, body, *options)
    assert sorted(job.stdout.splitlines()) == ["n1 42", "n2 42", "n3 42"], job.stdout


def test_sbatch_rx_project_in_the_script_reaches_its_srun_steps(
    rxd: Rxd, project: dict[str, Any], job_dir: Path
) -> None:
    body = f"#SBATCH --rx-project={PROJECT}\n{WHERE}\nsrun -n 1 cat /workspace/data.txt"
    _, job = submit(rxd, "rxbob", job_dir, body, "-n", "1")
    assert job.stdout.splitlines() == ["batch: host", "data"], job.stdout


def test_salloc_rx_project_reaches_the_steps_inside_the_allocation(
    rxd: Rxd, project: dict[str, Any]
) -> None:
    inside = "srun -n 1 cat /workspace/data.txt; test -d /.singularity.d || echo 'shell: host'"
    name = f"sp-salloc-{rxd.root.name}"
    argv = ["salloc", "-J", name, "-n", "1", f"--rx-project={PROJECT}", "sh", "-c", inside]
    try:
        result = ok(run_as("rxbob", argv, env=door_env(rxd), timeout=240))
    finally:
        # A salloc killed by the time-out cannot give its allocation back itself.
        subprocess.run(["scancel", "-u", "rxbob", "-n", name], capture_output=True, timeout=30)
    assert result.stdout.splitlines() == ["data", "shell: host"], result.stderr


def test_rxctl_run_does_the_same_without_the_plugin(
    rxd: Rxd, project: dict[str, Any], job_dir: Path
) -> None:
    probe = job_dir / "probe.py"
    probe.write_text(PROBE)
    body = f"{WHERE}\nsrun {RXCTL} run --project {PROJECT} -- python3 {probe}"
    _, job = submit(rxd, "rxalice", job_dir, body, "-n", "2", "--gres=gpu:1", "-p", "gpu")
    assert job.stdout.splitlines()[0] == "batch: host", job.stdout
    assert_in_the_project(job.stdout, job_dir)


def test_a_step_handed_only_rxds_socket_fails_on_the_node(
    rxd: Rxd, project: dict[str, Any], job_dir: Path
) -> None:
    # The socket is there on rxd's host; the batch script (on a node) and its steps do not see
    # it, so the plugin's rxctl cannot reach rxd without the door.
    assert rxd.socket.is_socket()
    body = (
        f"test -e {rxd.socket} && echo 'batch: sees the socket'\n"
        f'srun -n 1 python3 -c \'print("ran")\'\necho "srun: $?"'
    )
    env = {"RXCTL_SOCKET": str(rxd.socket)}
    _, job = submit(rxd, "rxbob", job_dir, body, f"--rx-project={PROJECT}", "-n", "1", env=env)
    lines = job.stdout.splitlines()
    stale = f"a slurmd does not hide rxd's folders: run tests/cluster/setup.sh\n{job.stdout}"
    assert "ran" not in lines and "batch: sees the socket" not in lines, stale
    assert f"Error: rxd is not running (nothing listens on {rxd.socket})" in lines, job.stdout
    assert "srun: 0" not in lines, job.stdout


def test_rxctl_run_outside_a_job(rxd: Rxd, project: dict[str, Any]) -> None:
    argv = [RXCTL, "--socket", str(rxd.socket), "run", "--project", PROJECT, "--"]
    argv += ["python3", "-c", f"import {PACKAGE}; print({PACKAGE}.VALUE)"]
    result = ok(run_as("rxbob", argv))
    assert result.stdout == "42\n"


def test_a_viewer_may_not_run_in_the_project(rxd: Rxd, project: dict[str, Any]) -> None:
    argv = [RXCTL, "--socket", str(rxd.socket), "run", "--project", PROJECT, "--", "true"]
    line = refused(run_as("rxdave", argv), OWN_FAILURE)
    assert line.startswith(f"Error: run in project {PROJECT} needs role ") and line.endswith(
        "; you are viewer"
    ), line


def test_a_non_members_job_fails_with_one_line_and_cannot_read_the_files(
    rxd: Rxd, project: dict[str, Any], job_dir: Path
) -> None:
    files = [f"{project['workspace']}/data.txt", project["snapshot"]["path"]]
    peek = "; ".join(f"test -r {path} && echo 'readable {path}'" for path in files)
    body = f'{peek}\nsrun -n 2 python3 -c \'print("ran")\'\necho "srun: $?"'
    _, job = submit(rxd, "rxcarol", job_dir, body, f"--rx-project={PROJECT}", "-n", "2")
    lines = job.stdout.splitlines()
    assert not [line for line in lines if line.startswith("readable")], job.stdout
    refusal = f"Error: no project named '{PROJECT}' (or you are not a member)"
    assert lines.count(refusal) == 2, job.stdout
    assert "ran" not in lines
    assert "srun: 125" in lines or any("exit code 125" in line for line in lines), job.stdout
    # And not by hand either: the plan's files stay closed to them.
    for path in files:
        assert run_as("rxcarol", ["cat", path]).returncode != 0, path


def test_a_wrong_project_fails_the_step_not_the_host(
    rxd: Rxd, project: dict[str, Any], job_dir: Path
) -> None:
    body = 'srun -n 1 true; echo "srun: $?"'
    _, job = submit(rxd, "rxalice", job_dir, body, "--rx-project=sp-nosuch", "-n", "1")
    assert "Error: no project named 'sp-nosuch' (or you are not a member)" in job.stdout
    assert "srun: 125" in job.stdout.splitlines(), job.stdout


@pytest.fixture(autouse=True)
def _tidy(job_dir: Path) -> Iterator[None]:
    yield
    # Job scripts and output of the test, not the folder (the next test's).
    for path in job_dir.iterdir():
        if path.is_file():
            path.unlink()
        else:
            shutil.rmtree(path, ignore_errors=True)


# Last in the module: it wakes the container, and its writes reach the next snapshot.
def test_a_batch_job_reads_the_snapshot_while_the_container_is_awake_and_writing(
    rxd: Rxd, project: dict[str, Any], job_dir: Path
) -> None:
    ok(rxd.rxctl("rxalice", "start", "--project", PROJECT))
    lifecycle.wait_state(rxd, PROJECT, "running", timeout=180)
    # The container rewrites the package and grows a file in its own overlay until told to
    # stop (a file in the workspace), while the batch job runs.
    stop_flag = "/workspace/stop-writing"
    writer_code = (
        "import os, pathlib, site, time\n"
        f"pkg = pathlib.Path(site.getsitepackages()[0], '{PACKAGE}.py')\n"
        "log = open('/opt/writing.log', 'a')\n"
        "print('writing', flush=True)\n"
        "n = 0\n"
        f"while not os.path.exists('{stop_flag}') and n < 3000:\n"
        "    n += 1\n"
        "    pkg.write_text(f'VALUE = {43 + n}\\n')\n"
        "    log.write('x' * 4096); log.flush()\n"
        "    time.sleep(0.01)\n"
        "print(n)\n"
    )
    writer = subprocess.Popen(
        ["runuser", "-u", "rxalice", "--", RXCTL, "--socket", str(rxd.socket), "exec",
         "--project", PROJECT, "--", "python3", "-c", writer_code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        # The batch job starts only once the container writes.
        assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
        body = (
            "srun python3 -c 'import os, rxbatchpkg; "
            'print(rxbatchpkg.VALUE, os.path.exists("/opt/writing.log"))\''
        )
        _, job = submit(rxd, "rxbob", job_dir, body, f"--rx-project={PROJECT}", "-n", "2")
    finally:
        ok(rxd.rxctl("rxalice", "exec", "--project", PROJECT, "--", "touch", stop_flag))
        out, err = writer.communicate(timeout=120)
    # The container kept writing throughout, and its command ended well.
    assert writer.returncode == 0, err
    assert int(out.strip()) > 1
    # Both tasks read the snapshot taken before: its package, none of the live writes.
    assert job.stdout.splitlines() == ["42 False", "42 False"], job.stdout
    assert lifecycle.status(rxd, "rxalice", PROJECT)["state"] == "running"
