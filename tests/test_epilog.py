"""The node Epilog stops a job's leftover Apptainer instance, and nothing of anyone else's.

Selection runs against a fake /proc tree shaped like what real Apptainer 1.4 leaves behind (the
starter's environment replaced by its engine configuration); stopping runs against real children.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.slurm.hooks import node_epilog

ALICE, BOB = 2001, 2002
JOB = "4242"


def engine_environ(job: str | None, instance: bool = True, chunks: int = 1) -> bytes:
    """A starter's environment: Apptainer's configuration, split over ENGINE_CONFIG1..N."""
    container_env = ["PATH=/usr/bin", "SLURM_JOB_USER=rxalice"]
    if job is not None:
        container_env.append(f"SLURM_JOB_ID={job}")
    config = json.dumps(
        {
            "engineName": "apptainer",
            "containerID": f"rx-demo-{job}",
            "engineConfig": {
                "jsonConfig": {"instance": instance, "fakeroot": True},
                "ociConfig": {"process": {"env": container_env}},
            },
        }
    )
    size = -(-len(config) // chunks)
    parts = [config[i * size : (i + 1) * size] for i in range(chunks)]
    entries = [f"ENGINE_CONFIG{n}={part}" for n, part in enumerate(parts, 1)]
    return "\0".join([*entries, f"ENGINE_CONFIG_CHUNKS={chunks}", ""]).encode()


def plain_environ(**env: str) -> bytes:
    return b"".join(f"{k}={v}\0".encode() for k, v in env.items())


class FakeProc:
    """A /proc tree with stat, status and environ for each made-up process."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self.make(1, 0, 0, b"", comm="init")

    def make(
        self, pid: int, ppid: int, uid: int, environ: bytes, comm: str = "x", start: int = 100
    ) -> None:
        d = self.root / str(pid)
        d.mkdir()
        # 52 fields as the kernel writes them: ppid 4th, starttime 22nd.
        fields = ["S", str(ppid), *["0"] * 17, str(start), *["0"] * 29]
        (d / "stat").write_text(f"{pid} ({comm}) {' '.join(fields)}\n")
        (d / "status").write_text(f"Name:\t{comm}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
        (d / "environ").write_bytes(environ)
        (d / "cmdline").write_bytes(comm.encode() + b"\0")


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    return FakeProc(tmp_path / "proc")


def chosen(proc: FakeProc, job: str = JOB, uid: int = ALICE) -> list[int]:
    return [p.pid for p in node_epilog.select_leftovers(node_epilog.scan(proc.root), job, uid)]


def real_instance(proc: FakeProc, base: int, job: str = JOB, uid: int = ALICE) -> None:
    """What `apptainer instance start --fakeroot` leaves: starter, appinit, a FUSE mount helper,
    and a process the container daemonized (reparented to appinit, the container's PID 1)."""
    proc.make(base, 1, uid, engine_environ(job), comm=f"Apptainer instance: rxalice [rx-d-{job}]")
    proc.make(base + 1, base, uid, engine_environ(job), comm="appinit")
    proc.make(base + 2, base, uid, plain_environ(PATH="/usr/bin"), comm="squashfuse_ll")
    inside = plain_environ(SLURM_JOB_ID=job, APPTAINER_INSTANCE=f"rx-d-{job}")
    proc.make(base + 3, base + 1, uid, inside, comm="sleep")


def test_the_jobs_instance_and_everything_under_it_are_chosen(proc: FakeProc) -> None:
    real_instance(proc, 100)
    assert chosen(proc) == [100, 101, 102, 103]


def test_a_starter_config_in_several_chunks_is_read(proc: FakeProc) -> None:
    proc.make(100, 1, ALICE, engine_environ(JOB, chunks=3))
    assert chosen(proc) == [100]


def test_another_job_of_the_same_user_is_left_alone(proc: FakeProc) -> None:
    real_instance(proc, 100)
    real_instance(proc, 200, job="4243")
    assert chosen(proc) == [100, 101, 102, 103]
    assert chosen(proc, job="4243") == [200, 201, 202, 203]


def test_another_user_forging_the_job_id_is_left_alone(proc: FakeProc) -> None:
    real_instance(proc, 100, uid=BOB)
    proc.make(300, 1, BOB, plain_environ(SLURM_JOB_ID=JOB, APPTAINER_INSTANCE="x"))
    assert chosen(proc) == []


def test_root_and_other_users_under_the_instance_are_left_alone(proc: FakeProc) -> None:
    real_instance(proc, 100)
    proc.make(110, 101, 0, plain_environ(SLURM_JOB_ID=JOB, APPTAINER_INSTANCE="x"))
    proc.make(111, 110, ALICE, b"")  # only reachable through root's process
    proc.make(120, 101, BOB, b"")
    assert chosen(proc) == [100, 101, 102, 103]


def test_a_name_or_command_line_proves_nothing(proc: FakeProc) -> None:
    proc.make(100, 1, ALICE, b"", comm=f"Apptainer instance: rxalice [rx-d-{JOB}]")
    proc.make(101, 1, ALICE, plain_environ(PATH="/usr/bin"), comm="appinit")
    assert chosen(proc) == []


def test_a_job_leftover_that_is_no_instance_is_left_alone(proc: FakeProc) -> None:
    proc.make(100, 1, ALICE, plain_environ(SLURM_JOB_ID=JOB), comm="sleep")
    proc.make(101, 1, ALICE, engine_environ(JOB, instance=False), comm="starter")
    assert chosen(proc) == []


def test_pid_1_and_this_process_are_never_chosen(proc: FakeProc) -> None:
    inside = plain_environ(SLURM_JOB_ID=JOB, APPTAINER_INSTANCE="x")
    (proc.root / "1" / "environ").write_bytes(inside)
    (proc.root / "1" / "status").write_text(f"Uid:\t{ALICE}\t{ALICE}\t{ALICE}\t{ALICE}\n")
    proc.make(os.getpid(), 1, ALICE, inside)
    assert chosen(proc) == []


@pytest.mark.parametrize(
    "environ",
    [
        b"",
        b"\0\0=\0SLURM_JOB_ID\0",
        plain_environ(SLURM_JOB_ID="42 ", APPTAINER_INSTANCE="x"),
        plain_environ(SLURM_JOB_ID="\u0664\u0662", APPTAINER_INSTANCE="x"),
        plain_environ(ENGINE_CONFIG1='{"engineConfig":', ENGINE_CONFIG_CHUNKS="1"),
        plain_environ(ENGINE_CONFIG1="[]", ENGINE_CONFIG_CHUNKS="1"),
        plain_environ(ENGINE_CONFIG1="{}", ENGINE_CONFIG_CHUNKS="999999999999"),
        plain_environ(
            ENGINE_CONFIG1='{"engineConfig":{"jsonConfig":{"instance":true},'
            '"ociConfig":{"process":{"env":"SLURM_JOB_ID=42"}}}}',
            ENGINE_CONFIG_CHUNKS="1",
        ),
    ],
)
def test_malformed_environments_are_skipped(proc: FakeProc, environ: bytes) -> None:
    proc.make(100, 1, ALICE, environ)
    assert chosen(proc, job="42") == []


def test_a_process_gone_or_half_readable_is_skipped(proc: FakeProc) -> None:
    real_instance(proc, 100)
    (proc.root / "101" / "environ").unlink()  # exited between listing and reading
    (proc.root / "102" / "stat").write_text("102 (x")
    (proc.root / "notapid").mkdir()
    assert chosen(proc) == [100, 103]


def test_a_name_with_parentheses_and_spaces_does_not_shift_stat(proc: FakeProc) -> None:
    proc.make(100, 1, ALICE, engine_environ(JOB), comm="a) 7 9 (b")
    assert [(p.pid, p.ppid, p.start) for p in node_epilog.scan(proc.root) if p.pid == 100] == [
        (100, 1, 100)
    ]


@given(st.binary(max_size=2000))
def test_any_environment_bytes_parse_without_error(raw: bytes) -> None:
    job, instance = node_epilog.job_and_instance(raw)
    assert job is None or (job.isascii() and job.isdigit())
    assert isinstance(instance, bool)


def test_main_exits_0_and_does_nothing_without_a_usable_job(proc: FakeProc, tmp_path: Path) -> None:
    real_instance(proc, 100, uid=0)
    log = tmp_path / "epilog.log"
    args = ["--proc", str(proc.root), "--log", str(log)]
    assert node_epilog.main(args, env={}) == 0
    assert node_epilog.main(args, env={"SLURM_JOB_ID": "x", "SLURM_JOB_UID": "2001"}) == 0
    # A root job's processes are never stopped, even when they look like an instance.
    assert node_epilog.main(args, env={"SLURM_JOB_ID": JOB, "SLURM_JOB_UID": "0"}) == 0
    assert node_epilog.main(["--bogus"], env={}) == 0
    assert not log.exists()


# Stopping: real processes of this test's own uid, tagged with a job id no real job has.
FAKE_JOB = "999999937"
NOBODY = 65534


def start_instance_like(ignore_term: bool, user: int | None = None) -> subprocess.Popen[str]:
    code = (
        "import signal, time\n"
        + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else "")
        + "print('ready', flush=True)\n"
        + "time.sleep(600)\n"
    )
    env = {"SLURM_JOB_ID": FAKE_JOB, "APPTAINER_INSTANCE": "rx-t", "PATH": os.environ["PATH"]}
    child = subprocess.Popen(
        [sys.executable, "-c", code], env=env, user=user, cwd="/", stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    return child


@pytest.mark.parametrize("ignore_term", [False, True])
def test_stop_ends_the_process_with_sigterm_then_sigkill(tmp_path: Path, ignore_term: bool) -> None:
    child = start_instance_like(ignore_term)
    try:
        leftovers = node_epilog.select_leftovers(node_epilog.scan(), FAKE_JOB, os.getuid())
        assert [p.pid for p in leftovers] == [child.pid]
        signalled, killed = node_epilog.stop(leftovers, grace_s=0.5)
        assert signalled == [child.pid]
        assert killed == ([child.pid] if ignore_term else [])
        assert child.wait(timeout=10) == (-9 if ignore_term else -15)
    finally:
        child.kill()
        child.wait()


def test_stop_never_signals_a_pid_that_now_names_another_process(tmp_path: Path) -> None:
    child = start_instance_like(ignore_term=False)
    try:
        (found,) = node_epilog.select_leftovers(node_epilog.scan(), FAKE_JOB, os.getuid())
        reused = node_epilog.Proc(found.pid, found.ppid, found.uid, found.start + 1, FAKE_JOB, True)
        assert node_epilog.stop([reused], grace_s=0.1) == ([], [])
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


def test_main_logs_what_it_stopped(tmp_path: Path) -> None:
    # main never stops root's processes: as root, the "job" runs as nobody.
    uid = NOBODY if os.getuid() == 0 else os.getuid()
    child = start_instance_like(ignore_term=False, user=uid)
    log = tmp_path / "epilog.log"
    try:
        env = {"SLURM_JOB_ID": FAKE_JOB, "SLURM_JOB_UID": str(uid)}
        assert node_epilog.main(["--log", str(log), "--grace", "5"], env=env) == 0
        assert child.wait(timeout=10) == -15
        assert f"job {FAKE_JOB} uid {uid}: 1 instance process(es)" in log.read_text()
        assert f"SIGTERM [{child.pid}]; SIGKILL none" in log.read_text()
    finally:
        child.kill()
        child.wait()


def test_an_unexpected_error_is_logged_and_still_exits_0(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A failing Epilog drains the node in Slurm: nothing may escape main.
    def broken(proc: Path) -> list[node_epilog.Proc]:
        raise RuntimeError("boom")

    monkeypatch.setattr(node_epilog, "scan", broken)
    log = tmp_path / "epilog.log"
    env = {"SLURM_JOB_ID": JOB, "SLURM_JOB_UID": str(ALICE)}
    assert node_epilog.main(["--log", str(log)], env=env) == 0
    assert "rxslurm-node-epilog: error: RuntimeError('boom')" in log.read_text()
