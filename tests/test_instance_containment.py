"""No Apptainer instance outlives its job, whatever ended the job (issue 10, item 6).

The test cluster keeps each job's processes in its cgroup (proctrack/cgroup, task/cgroup), so a
daemonized instance ends with its job even when the holder's trap never runs; the node Epilog
(rxslurm-node-epilog) is the second line for sites that track processes less strictly, checked
here against a real instance's starter. Instance processes are found here by their process title
and parentage, not by the Epilog's own selection, so the two cannot share a blind spot.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import ok
from tests.support.cluster import run_as, run_setup, wait_for
from tests.support.daemon import VENV_BIN, Rxd
from tests.support.lifecycle import lifecycle_rxd, make_project, status, wait_state
from tests.support.real_apptainer import APPTAINER, BASE_IMAGE

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("container_runtime")]

TITLE = "Apptainer instance: "
# Slurm's periodic time-limit check runs every 30 s: a 1-minute job ends within about 2 minutes.
TIME_LIMIT_WAIT_S = 240
GONE_WAIT_S = 60


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    with lifecycle_rxd() as daemon:
        yield daemon


def proc_table() -> dict[int, tuple[int, int, str, str]]:
    """pid -> (ppid, start time, state, command line) for every live process."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
            cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        table[int(entry.name)] = (
            int(fields[1]),
            int(fields[19]),
            fields[0],
            cmdline.replace(b"\0", b" ").decode(errors="replace").strip(),
        )
    return table


def instance_processes(job_id: int) -> set[tuple[int, int]]:
    """(pid, start time) of the job's instance (titled `...[<name>-<job id>]`) and everything
    under it, zombies left out: what must be gone once the job has ended."""
    table = {pid: row for pid, row in proc_table().items() if row[2] != "Z"}
    roots = [
        pid
        for pid, (_, _, _, cmd) in table.items()
        if cmd.startswith(TITLE) and cmd.endswith(f"-{job_id}]")
    ]
    found = set(roots)
    todo = list(roots)
    while todo:
        parent = todo.pop()
        for pid, (ppid, *_rest) in table.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                todo.append(pid)
    return {(pid, table[pid][1]) for pid in found}


def assert_all_gone(job_id: int, before: set[tuple[int, int]], how: str) -> None:
    def gone() -> bool:
        alive = {(pid, row[1]) for pid, row in proc_table().items() if row[2] != "Z"}
        return not instance_processes(job_id) and not before & alive

    try:
        wait_for(gone, timeout=GONE_WAIT_S, what=f"job {job_id}'s instance to end after {how}")
    except TimeoutError:
        left = sorted(instance_processes(job_id))
        table = proc_table()
        raise AssertionError(
            f"after {how}, job {job_id}'s instance processes outlived it: "
            + "; ".join(f"{p} ppid={table[p][0]} {table[p][3]!r}" for p, _ in left if p in table)
        ) from None


def running_instance(rxd: Rxd, project: str, *options: str) -> dict:
    make_project(rxd, project, *options)
    ok(rxd.rxctl("rxalice", "enable", "--project", project))
    running = wait_state(rxd, project, "running", timeout=180)
    procs = wait_for(
        lambda: instance_processes(running["job_id"]),
        timeout=30,
        what=f"{project}'s instance processes",
    )
    running["procs"] = procs
    return running


def rest(rxd: Rxd, project: str) -> None:
    rxd.rxctl("rxalice", "stop", "--project", project)
    wait_state(rxd, project, "stopped", "error", timeout=90)


def holder_pid(job_id: int, node: str) -> int:
    # With several slurmd on one host, listpids asks the one named, else the host's first (n1).
    listed = subprocess.run(
        ["scontrol", "listpids", str(job_id), node], capture_output=True, text=True, check=True
    ).stdout.splitlines()[1:]
    pids = [int(line.split()[0]) for line in listed if line.split()]
    table = proc_table()
    scripts = [pid for pid in pids if pid in table and table[pid][3].endswith("/slurm_script")]
    assert len(scripts) == 1, f"job {job_id}: holder not found among {listed}"
    return scripts[0]


def test_scancel_leaves_no_instance(rxd: Rxd) -> None:
    running = running_instance(rxd, "ct-scancel")
    ok(subprocess.run(["scancel", str(running["job_id"])], capture_output=True, text=True))
    assert_all_gone(running["job_id"], running["procs"], "scancel")
    rest(rxd, "ct-scancel")


def test_a_holder_killed_with_sigkill_leaves_no_instance(rxd: Rxd) -> None:
    # SIGKILL: the holder's trap never runs, so only Slurm's tracking (or the Epilog) can help.
    running = running_instance(rxd, "ct-sigkill")
    os.kill(holder_pid(running["job_id"], running["node"]), signal.SIGKILL)
    assert_all_gone(running["job_id"], running["procs"], "SIGKILL of the holder")
    rest(rxd, "ct-sigkill")


def test_the_time_limit_leaves_no_instance(rxd: Rxd) -> None:
    running = running_instance(rxd, "ct-limit", "--time-limit", "1")
    job = running["job_id"]
    wait_for(
        lambda: status(rxd, "rxalice", "ct-limit").get("job_id") != job,
        timeout=TIME_LIMIT_WAIT_S,
        what=f"job {job} to reach its time limit",
    )
    assert_all_gone(job, running["procs"], "the time limit")
    rest(rxd, "ct-limit")


def slurmd_pids(node: str) -> list[int]:
    return [
        pid
        for pid, (_, _, st, cmd) in proc_table().items()
        if cmd == f"slurmd -N {node}" and st != "Z"
    ]


@pytest.mark.alone(reason="kills a slurmd: every job on its node fails")
def test_a_killed_slurmd_leaves_no_instance_once_it_is_back(rxd: Rxd) -> None:
    # The node "fails": its slurmd dies (the job's slurmstepd and instance go on, as on a node cut
    # off from the controller). Slurm ends the job; the restarted slurmd must end what is left.
    running = running_instance(rxd, "ct-slurmd")
    node, job = running["node"], running["job_id"]
    pids = slurmd_pids(node)
    assert pids, f"no slurmd for {node}"
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_state(rxd, "ct-slurmd", "error", timeout=180)
        # As setup.sh starts it: it daemonizes, so nothing may hold its output.
        subprocess.run(
            ["slurmd", "-N", node],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
            check=True,
        )
        assert_all_gone(job, running["procs"], f"slurmd on {node} was killed and came back")
    finally:
        if not slurmd_pids(node):
            run_setup()
    rest(rxd, "ct-slurmd")


@pytest.fixture
def alice_folder() -> Iterator[Path]:
    """A folder of rxalice's own (pytest's tmp_path is root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="rx-containment-", dir="/var/tmp"))
    user = pwd.getpwnam("rxalice")
    os.chown(folder, user.pw_uid, user.pw_gid)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_the_node_epilog_stops_a_real_instance_of_its_job_only(
    alice_folder: Path, tmp_path: Path
) -> None:
    """The Epilog against real Apptainer's starter (its environment is its engine configuration),
    run the way slurmd runs it: as root, with the job's id and uid."""
    job, other = "9" + str(uuid.uuid4().int)[:8], "8" + str(uuid.uuid4().int)[:8]
    names = {job_id: f"ct-epilog-{job_id}" for job_id in (job, other)}

    def as_alice(job_id: str, *argv: str) -> subprocess.CompletedProcess[str]:
        env = {"SLURM_JOB_ID": job_id, "APPTAINER_CONFIGDIR": str(alice_folder / job_id)}
        return run_as("rxalice", argv, env=env, cwd="/")

    try:
        for job_id, name in names.items():
            ok(as_alice(job_id, "mkdir", "-p", str(alice_folder / job_id)))
            ok(
                as_alice(
                    job_id,
                    APPTAINER,
                    "instance",
                    "start",
                    "--fakeroot",
                    "--no-mount",
                    "cwd",
                    str(BASE_IMAGE),
                    name,
                )
            )
        mine = wait_for(lambda: instance_processes(int(job)), timeout=30, what="the instance")
        theirs = wait_for(lambda: instance_processes(int(other)), timeout=30, what="the other")
        log = tmp_path / "epilog.log"
        uid = str(pwd.getpwnam("rxalice").pw_uid)
        result = subprocess.run(
            [str(VENV_BIN / "rxslurm-node-epilog"), "--log", str(log)],
            env={"SLURM_JOB_ID": job, "SLURM_JOB_UID": uid, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert_all_gone(int(job), mine, "the node Epilog")
        assert instance_processes(int(other)) == theirs
        assert f"job {job} uid {uid}: {len(mine)} instance process(es)" in log.read_text()
    finally:
        for job_id, name in names.items():
            as_alice(job_id, APPTAINER, "instance", "stop", name)
