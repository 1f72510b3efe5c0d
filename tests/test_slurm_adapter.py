"""rxslurm.slurm.adapter.SlurmCli: with fake Slurm binaries, then against the real test cluster."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rxslurm.slurm.adapter import JobSpec, SlurmCli
from rxslurm.slurm.errors import AccountingDisabled, SlurmError, SlurmRejected, SlurmUnavailable
from rxslurm.slurm.jobs import JobInfo
from rxslurm.slurm.runas import RunAs
from rxslurm.slurm.script import render_batch_script
from tests.support.cluster import wait_for

FIXTURES = Path(__file__).parent / "fixtures" / "slurm"
FIXTURE_NONCE = "0123456789abcdef"
needs_root = pytest.mark.root(reason="acting as test users needs root")


def shared_dir(prefix: str) -> Path:
    """A fresh folder under /tmp that the test users can use (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o1777)
    return path


class FakeBin:
    """A folder of small scripts standing in for Slurm's commands (SlurmCli's ``bin_dir``).

    Each script can record what it got under ``log/`` (writable by the test users too).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.logs = root / "log"
        self.logs.mkdir()
        self.logs.chmod(0o777)

    def add(self, name: str, body: str, interpreter: str = "/bin/bash") -> None:
        path = self.root / name
        path.write_text(f"#!{interpreter}\n" + textwrap.dedent(body))
        path.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)

    def fail(self, name: str, stderr: str, status: int = 1) -> None:
        self.add(name, f"cat >&2 <<'EOF'\n{stderr}\nEOF\nexit {status}\n")

    def recording(self, name: str, stdout: str = "") -> None:
        """A fake that logs argv (one per line), uid, stdin and environment, then prints."""
        self.add(
            name,
            f"""\
            log=$(dirname "$0")/log/{name}
            printf '%s\\n' "$@" > "$log.argv"
            id -u > "$log.uid"
            cat > "$log.stdin"
            env > "$log.env"
            printf '%s' '{stdout}'
            """,
        )

    def read(self, name: str) -> str:
        return (self.logs / name).read_text()

    def cli(self, timeout: float = 10.0) -> SlurmCli:
        return SlurmCli(bin_dir=str(self.root), timeout=timeout)


@pytest.fixture
def fake() -> Iterator[FakeBin]:
    root = shared_dir("rxslurm-fakebin-")
    root.chmod(0o755)
    try:
        yield FakeBin(root)
    finally:
        shutil.rmtree(root)


@pytest.fixture
def alice() -> RunAs:
    return RunAs.for_user("rxalice")


def fixture_replaying(name: str) -> str:
    """Python for a fake squeue/sacct that prints a text fixture; squeue's with the nonce of the
    format the caller put in the environment (SQUEUE_FORMAT2)."""
    path = FIXTURES / name
    return f"""\
    import os, re, sys
    match = re.search(r"\\|rx([0-9a-f]+)\\|", os.environ.get("SQUEUE_FORMAT2", ""))
    log = os.path.join(os.path.dirname(sys.argv[0]), "log", os.path.basename(sys.argv[0]))
    with open(log + ".argv", "w") as f:
        f.write("\\n".join(sys.argv[1:]))
    with open(log + ".timefmt", "w") as f:
        f.write(os.environ.get("SLURM_TIME_FORMAT", ""))
    with open(log + ".format", "w") as f:
        f.write(os.environ.get("SQUEUE_FORMAT2", ""))
    text = open({str(path)!r}).read()
    sys.stdout.write(text.replace({FIXTURE_NONCE!r}, match.group(1)) if match else text)
    """


# ======================================================================= fake binaries

SPEC = JobSpec(
    name="rx-proj",
    comment="rx:c|a b",
    partition="gpu",
    cpus=2,
    mem_mb=3000,
    gres="gpu:a100:1",
    time_limit_min=90,
    workdir="/home/rxalice",
    output="/home/rxalice/rx-%j.out",
    singleton=True,
    hold=True,
)


@needs_root
def test_submit_runs_sbatch_as_the_user_with_the_script_on_stdin(
    fake: FakeBin, alice: RunAs
) -> None:
    fake.recording("sbatch", stdout="4242;rxcluster\n")
    job_id = fake.cli().submit("#!/bin/bash\necho hi\n", SPEC, alice)
    assert job_id == 4242
    assert fake.read("sbatch.argv").splitlines() == [
        "--parsable",
        "--job-name=rx-proj",
        "--nodes=1",
        "--ntasks=1",
        "--cpus-per-task=2",
        "--comment=rx:c|a b",
        "--partition=gpu",
        "--mem=3000M",
        "--gres=gpu:a100:1",
        "--time=90",
        "--chdir=/home/rxalice",
        "--output=/home/rxalice/rx-%j.out",
        "--dependency=singleton",
        "--hold",
        "--export=NONE",
    ]
    assert fake.read("sbatch.uid").strip() == "2001"
    assert fake.read("sbatch.stdin") == "#!/bin/bash\necho hi\n"
    env = dict(line.split("=", 1) for line in fake.read("sbatch.env").splitlines() if "=" in line)
    assert env["USER"] == "rxalice" and env["HOME"] == "/home/rxalice"


@needs_root
def test_submit_leaves_out_what_was_not_asked_for(fake: FakeBin, alice: RunAs) -> None:
    fake.recording("sbatch", stdout="17\n")
    assert fake.cli().submit("#!/bin/bash\n", JobSpec(name="rx-min"), alice) == 17
    argv = fake.read("sbatch.argv").splitlines()
    assert argv == [
        "--parsable",
        "--job-name=rx-min",
        "--nodes=1",
        "--ntasks=1",
        "--cpus-per-task=1",
        "--export=NONE",
    ]


@needs_root
def test_submit_without_a_job_id_is_unknown_not_rejected(fake: FakeBin, alice: RunAs) -> None:
    fake.recording("sbatch", stdout="sbatch: warning: something\n")
    with pytest.raises(SlurmUnavailable, match="printed no job id"):
        fake.cli().submit("#!/bin/bash\n", JobSpec(name="rx-x"), alice)


def test_submit_needs_an_identity(fake: FakeBin) -> None:
    fake.recording("sbatch", stdout="1\n")
    with pytest.raises(TypeError):
        fake.cli().submit("#!/bin/bash\n", JobSpec(name="rx-x"), None)  # type: ignore[arg-type]


@needs_root
@pytest.mark.parametrize(
    ("stderr", "exc", "message"),
    [
        (
            "sbatch: error: Batch job submission failed: Invalid partition name specified",
            SlurmRejected,
            "Batch job submission failed: Invalid partition name specified",
        ),
        (
            "sbatch: error: Batch job submission failed: Invalid generic resource (gres) "
            "specification",
            SlurmRejected,
            "Invalid generic resource (gres) specification",
        ),
        (
            "sbatch: error: Batch job submission failed: Invalid account or account/partition "
            "combination specified",
            SlurmRejected,
            "Invalid account",
        ),
        (
            "sbatch: error: Batch job submission failed: Unable to contact slurm controller "
            "(connect failure)",
            SlurmUnavailable,
            "Unable to contact slurm controller",
        ),
        (
            'sbatch: error: Munge encode failed: Failed to access "/run/munge/munge.socket.2": '
            "No such file or directory (retrying ...)\nsbatch: error: auth_g_create: "
            "authentication failure",
            SlurmUnavailable,
            "Munge encode failed",
        ),
        (
            "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation",
            SlurmUnavailable,
            "Socket timed out",
        ),
    ],
)
def test_submit_errors_are_classified(
    fake: FakeBin, alice: RunAs, stderr: str, exc: type[Exception], message: str
) -> None:
    fake.fail("sbatch", stderr)
    with pytest.raises(exc) as info:
        fake.cli().submit("#!/bin/bash\n", JobSpec(name="rx-x"), alice)
    assert message in info.value.message
    assert not info.value.message.startswith("sbatch:")
    assert info.value.stderr.strip() == stderr  # the whole text is kept
    assert info.value.returncode == 1


def test_a_command_that_hangs_is_unavailable(fake: FakeBin) -> None:
    fake.add("squeue", "exec sleep 60\n")
    with pytest.raises(SlurmUnavailable, match="did not answer within 0.5 s"):
        fake.cli(timeout=0.5).queue()


def test_a_command_killed_by_a_signal_is_unavailable(fake: FakeBin) -> None:
    fake.add("squeue", "kill -9 $$\n")
    with pytest.raises(SlurmUnavailable, match="signal 9"):
        fake.cli().queue()


def test_a_missing_command_is_unavailable(fake: FakeBin) -> None:
    with pytest.raises(SlurmUnavailable, match="squeue not found"):
        fake.cli().queue()


def test_controller_down_while_listing_the_queue(fake: FakeBin) -> None:
    fake.fail(
        "squeue", "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"
    )
    with pytest.raises(SlurmUnavailable, match="Unable to contact slurm controller"):
        fake.cli().queue()


def test_unreadable_queue_output_is_unavailable(fake: FakeBin) -> None:
    fake.add("squeue", "echo 'something else entirely'\n")
    with pytest.raises(SlurmUnavailable, match="could not read"):
        fake.cli().queue()


def test_queue_reads_the_text_format_with_a_fresh_marker(fake: FakeBin) -> None:
    fake.add("squeue", fixture_replaying("squeue-22.05-finished.txt"), "/usr/bin/python3")
    cli = fake.cli()
    found = cli.queue()
    first_format = fake.read("squeue.format")
    assert found[20].exit_code == 5 and found[19].comment == "rx:c|with pipes | and  spaces"
    assert fake.read("squeue.timefmt") == "%s"
    assert "--states=all" in fake.read("squeue.argv").splitlines()
    cli.queue()
    assert fake.read("squeue.format") != first_format  # a new nonce every call


def test_queue_keeps_its_marker_out_of_argv_and_asks_for_no_array_expansion(
    fake: FakeBin,
) -> None:
    # Any local user can read /proc/PID/cmdline; the environment only squeue's owner can.
    fake.add("squeue", fixture_replaying("squeue-22.05-finished.txt"), "/usr/bin/python3")
    fake.cli().queue(name_prefix="rx-")
    nonce = re.search(r"\|rx([0-9a-f]+)\|", fake.read("squeue.format")).group(1)
    argv = fake.read("squeue.argv")
    assert len(nonce) >= 32 and nonce not in argv
    assert "--Format" not in argv and "-O" not in argv.splitlines()
    # --array prints a pending array once per task, all under one job id.
    assert "--array" not in argv.splitlines() and "-r" not in argv.splitlines()


@needs_root
def test_the_environment_hides_the_marker_from_other_users_where_argv_would_not() -> None:
    # What queue() relies on: another user reads a root process's cmdline, not its environ.
    from tests.support.cluster import run_as

    marker = "rx" + "5" * 32
    proc = subprocess.Popen(
        ["sh", "-c", "sleep 60; :", marker],
        env={"SQUEUE_FORMAT2": marker},
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # Until the child has exec'd sh, its cmdline is not sh's yet (it read empty once).
        own = Path(f"/proc/{proc.pid}/cmdline")
        wait_for(lambda: marker in own.read_text(), 10, interval=0.01, what="sh to start")
        cmdline = run_as("rxdave", ["cat", f"/proc/{proc.pid}/cmdline"])
        environ = run_as("rxdave", ["cat", f"/proc/{proc.pid}/environ"])
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert marker in cmdline.stdout
    assert environ.returncode != 0 and marker not in environ.stdout


def test_queue_skips_a_record_it_cannot_read_and_answers_the_rest(fake: FakeBin) -> None:
    fake.add(
        "squeue",
        """\
        import os, re, sys
        m = re.search(r"\\|rx[0-9a-f]+\\|", os.environ["SQUEUE_FORMAT2"]).group(0)
        fixed = "|RUNNING|None|rxalice|cpu|n1|N/A|{limit}|1|2|N/A|0|"
        for job_id, limit in (("5", "UNLIMITED"), ("6", "INVALID"), ("²", "1")):
            sys.stdout.write(job_id + fixed.format(limit=limit) + "rx-a" + m + "c" + m + "\\n")
        """,
        "/usr/bin/python3",
    )
    found = fake.cli().queue(name_prefix="rx-")
    assert sorted(found) == [5, 6]
    assert found[6].time_limit_min is None
    assert [s.job_id for s in found.skipped] == [None]


def test_queue_filters_by_name_prefix_and_passes_the_user(fake: FakeBin) -> None:
    fake.add("squeue", fixture_replaying("squeue-22.05-finished.txt"), "/usr/bin/python3")
    found = fake.cli().queue(name_prefix="rx-fixture-", user="rxbob")
    assert sorted(found) == list(range(19, 27))
    assert "--user=rxbob" in fake.read("squeue.argv").splitlines()
    with pytest.raises(ValueError):
        fake.cli().queue(user="bob;rm")


def test_history_reads_sacct_text(fake: FakeBin) -> None:
    fake.add("sacct", fixture_replaying("sacct-22.05.txt"), "/usr/bin/python3")
    found = fake.cli().history([20, 4, 19])
    assert (found[20].exit_code, found[4].exit_code, found[19].state) == (5, 7, "COMPLETED")
    assert sorted(found) == [4, 19, 20]  # the fixture's other jobs were not asked for
    argv = fake.read("sacct.argv").splitlines()
    assert "--jobs=4,19,20" in argv and "--allocations" in argv
    assert not [a for a in argv if a.startswith("--delimiter")]
    assert fake.read("sacct.timefmt") == "%s"


def test_history_with_a_line_slurm_garbled_is_unavailable(fake: FakeBin) -> None:
    fake.add("sacct", "echo 'sacct: something unexpected'\n")
    with pytest.raises(SlurmUnavailable, match="could not read"):
        fake.cli().history([1])


def test_history_of_nothing_runs_nothing(fake: FakeBin) -> None:
    assert fake.cli().history([]) == {}  # no sacct in bin_dir: it would raise


def test_history_without_accounting_is_a_clear_unavailable(fake: FakeBin) -> None:
    fake.fail("sacct", "sacct: error: Slurm accounting storage is disabled")
    with pytest.raises(AccountingDisabled, match="accounting storage is disabled") as info:
        fake.cli().history([1])
    assert isinstance(info.value, SlurmUnavailable)


def test_history_with_slurmdbd_down_is_unavailable(fake: FakeBin) -> None:
    fake.fail(
        "sacct",
        "sacct: error: slurm_persist_conn_open_without_init: failed to open persistent "
        "connection to host:localhost:6819: Connection refused\n"
        "sacct: error: Problem talking to the database: Connection refused",
    )
    with pytest.raises(SlurmUnavailable):
        fake.cli().history([1])


@needs_root
def test_cancel_runs_scancel_as_the_user(fake: FakeBin, alice: RunAs) -> None:
    fake.recording("scancel")
    fake.cli().cancel(77, as_user=alice, signal="term", full=True)
    assert fake.read("scancel.argv").splitlines() == ["--signal=TERM", "--full", "77"]
    assert fake.read("scancel.uid").strip() == "2001"


def test_cancel_of_an_ended_job_is_fine(fake: FakeBin) -> None:
    fake.fail(
        "scancel",
        "scancel: error: Kill job error on job id 5: Job/step already completing or completed",
    )
    fake.cli().cancel(5)


def test_cancel_someone_elses_job_is_rejected(fake: FakeBin) -> None:
    fake.fail("scancel", "scancel: error: Kill job error on job id 2: Access/permission denied")
    with pytest.raises(SlurmRejected, match="Access/permission denied"):
        fake.cli().cancel(2)


@pytest.mark.parametrize("bad", ["TERM;id", "-9", "$(id)", ""])
def test_cancel_refuses_odd_signals_before_running_anything(fake: FakeBin, bad: str) -> None:
    with pytest.raises(ValueError):
        fake.cli().cancel(1, signal=bad)


def test_ping_up_and_down(fake: FakeBin) -> None:
    fake.add(
        "scontrol",
        """\
        if [[ $1 == --version ]]; then echo "slurm-wlm 22.05.8"; exit 0; fi
        echo "Slurmctld(primary) at ctl1 is DOWN"
        echo "Slurmctld(backup) at ctl2 is UP"
        """,
    )
    result = fake.cli().ping()
    assert result and result.up and result.version == "22.05.8"
    assert [(c.role, c.host, c.up) for c in result.controllers] == [
        ("primary", "ctl1", False),
        ("backup", "ctl2", True),
    ]
    fake.add(
        "scontrol",
        """\
        if [[ $1 == --version ]]; then echo "slurm 23.11.4"; exit 0; fi
        echo "Slurmctld(primary) at ctl1 is DOWN"; exit 1
        """,
    )
    down = fake.cli().ping()
    assert not down and down.version == "23.11.4" and "DOWN" in down.message


def test_ping_when_scontrol_hangs_is_down_not_an_exception(fake: FakeBin) -> None:
    fake.add("scontrol", "exec sleep 60\n")
    result = fake.cli(timeout=0.5).ping()
    assert not result and "did not answer" in result.message


def test_partitions_from_sinfo(fake: FakeBin) -> None:
    fake.add("sinfo", f"cat {FIXTURES / 'sinfo-22.05.txt'}\n")
    parts = fake.cli().partitions()
    assert parts["cpu"].default and parts["gpu"].max_gpus_per_node == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": ""},
        {"name": "rx", "comment": "two\nlines"},
        {"name": "rx\x1b[31m"},
        {"name": "rx", "gres": "gpu:a100:one"},
        {"name": "rx", "gres": "gpu a100"},
        {"name": "rx", "workdir": "relative/dir"},
        {"name": "rx", "cpus": 0},
        {"name": "rx", "mem_mb": 0},
        {"name": "rx", "time_limit_min": 0},
        {"name": "rx", "account": "a,b"},
    ],
)
def test_jobspec_refuses_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        JobSpec(**kwargs)  # type: ignore[arg-type]


# ======================================================================= the real cluster


class ClusterJobs:
    """Submits probe jobs under unique names; cancels whatever is left at the end."""

    def __init__(self, cli: SlurmCli, workdir: Path) -> None:
        self.cli = cli
        self.workdir = workdir
        self.tag = uuid.uuid4().hex[:8]
        self.submitted: list[int] = []

    def name(self, what: str) -> str:
        return f"rxt-{what}-{self.tag}"

    def release_file(self, what: str) -> Path:
        return self.workdir / f"release-{what}"

    def submit(
        self,
        who: RunAs,
        what: str,
        *,
        exit_code: int = 0,
        message: str = "probe",
        wait: bool = True,
        **spec: object,
    ) -> int:
        script = render_batch_script(
            "probe.sh",
            message=message,
            wait_for=str(self.release_file(what)) if wait else "",
            max_wait_s=300,
            exit_code=exit_code,
        )
        spec.setdefault("name", self.name(what))
        spec.setdefault("output", str(self.workdir / "%j.out"))
        spec.setdefault("time_limit_min", 10)
        job_id = self.cli.submit(script, JobSpec(**spec), who)  # type: ignore[arg-type]
        self.submitted.append(job_id)
        return job_id

    def release(self, what: str) -> None:
        self.release_file(what).touch()

    def state(self, job_id: int) -> JobInfo | None:
        return self.cli.queue().get(job_id)

    def wait_state(self, job_id: int, states: set[str], timeout: float = 60) -> JobInfo:
        def reached() -> JobInfo | None:
            info = self.state(job_id)
            return info if info is not None and info.state in states else None

        return wait_for(reached, timeout, what=f"job {job_id} to reach {states}")

    def wait_finished(self, job_id: int, timeout: float = 60) -> JobInfo:
        def ended() -> JobInfo | None:
            info = self.state(job_id)
            return info if info is not None and info.is_finished else None

        return wait_for(ended, timeout, what=f"job {job_id} to end")

    def output(self, job_id: int) -> str:
        path = self.workdir / f"{job_id}.out"
        wait_for(
            lambda: path.exists() and "done" in path.read_text(), 30, what=f"{path} to be written"
        )
        return path.read_text()


@pytest.fixture
def cluster_jobs(slurm_cluster: object) -> Iterator[ClusterJobs]:
    workdir = shared_dir("rxslurm-adapter-")
    helper = ClusterJobs(SlurmCli(timeout=30), workdir)
    try:
        yield helper
    finally:
        for job_id in helper.submitted:
            with contextlib.suppress(SlurmError):  # best-effort clean-up
                helper.cli.cancel(job_id)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.cluster
def test_cluster_submit_watch_and_history(cluster_jobs: ClusterJobs, alice: RunAs) -> None:
    job_id = cluster_jobs.submit(alice, "life", comment="rx:life")
    seen = cluster_jobs.state(job_id)
    assert seen is not None and seen.state in {"PENDING", "CONFIGURING", "RUNNING"}
    running = cluster_jobs.wait_state(job_id, {"RUNNING"})
    assert running.user == "rxalice" and running.nodes in {"n1", "n2", "n3"}
    cluster_jobs.release("life")
    ended = cluster_jobs.wait_finished(job_id)
    assert (ended.state, ended.exit_code) == ("COMPLETED", 0)
    assert "user=rxalice uid=2001" in cluster_jobs.output(job_id)

    def recorded() -> JobInfo | None:
        info = cluster_jobs.cli.history([job_id]).get(job_id)
        return info if info is not None and info.state == "COMPLETED" else None

    final = wait_for(recorded, 30, what="sacct to record the job")
    assert isinstance(final, JobInfo)
    assert (final.state, final.exit_code, final.user) == ("COMPLETED", 0, "rxalice")
    assert final.end_time is not None and final.start_time is not None


@pytest.mark.cluster
def test_cluster_failed_job_keeps_its_exit_code(cluster_jobs: ClusterJobs, alice: RunAs) -> None:
    job_id = cluster_jobs.submit(alice, "fail", exit_code=3, wait=False)
    ended = cluster_jobs.wait_finished(job_id)
    assert (ended.state, ended.exit_code) == ("FAILED", 3)

    def recorded() -> JobInfo | None:
        info = cluster_jobs.cli.history([job_id]).get(job_id)
        return info if info is not None and info.state == "FAILED" else None

    final = wait_for(recorded, 30, what="sacct to record the job")
    assert isinstance(final, JobInfo) and final.exit_code == 3


@pytest.mark.cluster
def test_cluster_gpu_job_sees_two_gpus(cluster_jobs: ClusterJobs, alice: RunAs) -> None:
    job_id = cluster_jobs.submit(alice, "gpu", partition="gpu", gres="gpu:a100:2")
    # Other tests may hold the GPUs for a while: wait longer than for a CPU job.
    running = cluster_jobs.wait_state(job_id, {"RUNNING"}, timeout=180)
    assert (running.gres, running.gpus, running.partition) == ("gpu:a100:2", 2, "gpu")
    cluster_jobs.release("gpu")
    cluster_jobs.wait_finished(job_id)
    out = cluster_jobs.output(job_id)
    assert "cuda_visible_devices=0,1" in out
    assert "slurm_job_gpus=0,1" in out


@pytest.mark.cluster
def test_cluster_bad_partition_and_gres_are_rejected(
    cluster_jobs: ClusterJobs, alice: RunAs
) -> None:
    with pytest.raises(SlurmRejected, match="Invalid partition name specified") as info:
        cluster_jobs.submit(alice, "badpart", partition="no-such-partition")
    assert "sbatch" not in info.value.message.split(":")[0]
    with pytest.raises(SlurmRejected, match="Invalid generic resource"):
        cluster_jobs.submit(alice, "badgres", partition="gpu", gres="fpga:1")
    # A GPU type or count no node has: Slurm's words for it.
    with pytest.raises(SlurmRejected, match="Requested node configuration is not available"):
        cluster_jobs.submit(alice, "toomany", partition="gpu", gres="gpu:a100:3")
    rxsys = RunAs.for_user("rxsys")  # a user without a Slurm association
    with pytest.raises(SlurmRejected, match="Invalid account"):
        cluster_jobs.submit(rxsys, "noassoc", output="/tmp/rxslurm-never-%j.out")


@pytest.mark.cluster
def test_cluster_cancel_and_history_shows_cancelled(
    cluster_jobs: ClusterJobs, alice: RunAs
) -> None:
    job_id = cluster_jobs.submit(alice, "cancel")
    cluster_jobs.wait_state(job_id, {"RUNNING"})
    bob = RunAs.for_user("rxbob")
    with pytest.raises(SlurmRejected, match="Access/permission denied"):
        cluster_jobs.cli.cancel(job_id, as_user=bob)
    cluster_jobs.cli.cancel(job_id, as_user=alice)
    ended = cluster_jobs.wait_finished(job_id)
    assert ended.state == "CANCELLED"

    def recorded() -> JobInfo | None:
        info = cluster_jobs.cli.history([job_id]).get(job_id)
        return info if info is not None and info.state == "CANCELLED" else None

    final = wait_for(recorded, 30, what="sacct to record the cancellation")
    assert isinstance(final, JobInfo) and final.user == "rxalice"
    cluster_jobs.cli.cancel(job_id, as_user=alice)  # again: not an error


@pytest.mark.cluster
def test_cluster_singleton_second_job_waits_for_the_first(
    cluster_jobs: ClusterJobs, alice: RunAs
) -> None:
    first = cluster_jobs.submit(alice, "single", singleton=True)
    second = cluster_jobs.submit(alice, "single", singleton=True)
    cluster_jobs.wait_state(first, {"RUNNING"})
    waiting = cluster_jobs.wait_state(second, {"PENDING"})
    assert waiting.reason == "Dependency"
    # It keeps waiting while the first one runs.
    again = cluster_jobs.state(second)
    assert again is not None and (again.state, again.reason) == ("PENDING", "Dependency")
    cluster_jobs.release("single")  # both probes wait for the same file
    cluster_jobs.wait_finished(first)
    ended = cluster_jobs.wait_finished(second)
    assert ended.state == "COMPLETED"


@pytest.mark.cluster
def test_cluster_comment_with_pipes_and_spaces_round_trips(
    cluster_jobs: ClusterJobs, alice: RunAs
) -> None:
    comment = "rx:proj=a|b |  c ; $(not run) 'q'"
    job_id = cluster_jobs.submit(alice, "comment", comment=comment, hold=True)
    found = cluster_jobs.cli.queue(name_prefix=cluster_jobs.name("comment"))
    assert list(found) == [job_id]
    assert found[job_id].comment == comment
    assert (found[job_id].state, found[job_id].reason) == ("PENDING", "JobHeldUser")


@pytest.mark.cluster
def test_cluster_unknown_job_has_no_history(cluster_jobs: ClusterJobs) -> None:
    assert cluster_jobs.cli.history([2_000_000_000]) == {}


@pytest.mark.cluster
def test_cluster_ping_and_partitions(cluster_jobs: ClusterJobs) -> None:
    result = cluster_jobs.cli.ping()
    assert result.up and result.version is not None and result.version.startswith("22.")
    parts = cluster_jobs.cli.partitions()
    assert parts["cpu"].default and not parts["gpu"].default
    assert parts["gpu"].nodes == ("n1", "n2", "n3")
    assert (parts["gpu"].max_gpus_per_node, parts["gpu"].gpu_type) == (2, "a100")
    # The declared node size (tests/cluster/slurm.conf.in).
    assert (parts["gpu"].max_cpus_per_node, parts["gpu"].max_mem_mb_per_node) == (2, 4000)
