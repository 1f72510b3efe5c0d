"""Finding 2: root reads the holder's status file from a folder its runtime user owns.

A FIFO, a symlink to /dev/zero or to a root-only file, or a huge sparse file at job-N.status
must change nothing for other containers, keep rxd's memory bounded, and leave the container
whose file it is in error with a reason. Fast tests of daemon/holder_status first (no root, no
Slurm), then the recipe on the real cluster as rxdave and rxalice.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rxslurm.daemon.runtime.holder_status import (
    MAX_BYTES,
    HolderStatus,
    Kind,
    StatusReader,
    parse_status,
    read_status_file,
)
from tests.hostile.fake_slurm import rig
from tests.support.cli import ok
from tests.support.cluster import run_as, wait_for
from tests.support.daemon import Rxd
from tests.support.lifecycle import lifecycle_rxd, make_project, status, wait_state

ME = os.getuid()
JOB = 42


def finishes(call: Callable[[], HolderStatus]) -> HolderStatus:
    """Run call on a thread; a read that blocks fails the test instead of hanging it."""
    box: list[HolderStatus] = []
    thread = threading.Thread(target=lambda: box.append(call()), daemon=True)
    thread.start()
    thread.join(30)
    assert box, "the read blocked"
    return box[0]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path


def status_file(state_dir: Path) -> Path:
    return state_dir / f"job-{JOB}.status"


def read(state_dir: Path, uid: int = ME) -> HolderStatus:
    return finishes(lambda: read_status_file(str(state_dir), JOB, uid))


# ----------------------------------------------------------------------- fast: the reader


def test_the_holders_line_is_read(state_dir: Path) -> None:
    status_file(state_dir).write_text("running rx-p-42\n")
    assert read(state_dir) == HolderStatus(Kind.LINE, "running rx-p-42")


def test_no_file_yet_is_missing_not_refused(state_dir: Path) -> None:
    assert read(state_dir).kind == Kind.MISSING


def test_a_fifo_is_refused_without_blocking(state_dir: Path) -> None:
    os.mkfifo(status_file(state_dir))
    got = read(state_dir)
    assert got == HolderStatus(Kind.REFUSED, f"job-{JOB}.status is not a regular file")


@pytest.mark.parametrize("target", ["/dev/zero", "/etc/shadow", "/etc/hostname"])
def test_a_symlink_is_never_followed(state_dir: Path, target: str) -> None:
    status_file(state_dir).symlink_to(target)
    assert read(state_dir) == HolderStatus(Kind.REFUSED, f"job-{JOB}.status is a symbolic link")


def test_a_huge_sparse_file_is_refused_unread(state_dir: Path) -> None:
    with status_file(state_dir).open("wb") as f:
        f.write(b"running x\n")
        f.truncate(64 << 30)  # 64 GiB of nothing
    got = read(state_dir)
    assert got == HolderStatus(Kind.REFUSED, f"job-{JOB}.status is larger than {MAX_BYTES} bytes")


def test_a_file_of_another_owner_is_refused(state_dir: Path) -> None:
    status_file(state_dir).write_text("running rx-p-42\n")
    got = read(state_dir, uid=ME + 1)
    # The folder is checked first: it must be the runtime user's too.
    assert got.kind == Kind.REFUSED and f"not {ME + 1}" in got.text


def test_a_folder_that_is_a_symlink_is_refused(state_dir: Path) -> None:
    real = state_dir / "real"
    real.mkdir()
    (real / f"job-{JOB}.status").write_text("running x\n")
    (state_dir / "link").symlink_to(real)
    got = finishes(lambda: read_status_file(str(state_dir / "link"), JOB, ME))
    assert got.kind == Kind.REFUSED and got.text.endswith("link is not a folder")


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"starting\n", Kind.LINE),
        (b"error: FATAL: no such image\n", Kind.LINE),
        (b"running rx-p-42\nmore\n", Kind.LINE),
        (b"", Kind.MISSING),
        (b"\0" * 4096, Kind.REFUSED),
        (b"root:x:0:0:root:/root:/bin/bash\n", Kind.REFUSED),
        (b"\xff\xfe running", Kind.REFUSED),
    ],
)
def test_only_lines_the_holder_writes_are_believed(data: bytes, kind: Kind) -> None:
    assert parse_status(data).kind == kind


def test_control_characters_never_reach_the_line() -> None:
    got = parse_status(b"error: \x1b]0;owned\x07\x1b[2J gone\n")
    assert got.kind == Kind.LINE and "\x1b" not in got.text and "\x07" not in got.text


def test_a_read_that_hangs_stalls_only_its_own_user() -> None:
    release = threading.Event()
    calls: list[int] = []

    def read_file(state_dir: str, job_id: int, uid: int) -> HolderStatus:
        calls.append(uid)
        if uid == 666:
            release.wait()
        return HolderStatus(Kind.LINE, f"running {uid}")

    reader = StatusReader(timeout_s=0.2, read=read_file)
    assert reader.read("/x", 1, 666).kind == Kind.STUCK
    assert reader.stuck_uids() == {666}
    # Others are served by a fresh worker; the stalled user gets no second hanging read.
    assert reader.read("/y", 2, 1000) == HolderStatus(Kind.LINE, "running 1000")
    assert reader.read("/x", 3, 666).kind == Kind.STUCK
    assert calls == [666, 1000]
    release.set()
    wait_for(lambda: not reader.stuck_uids(), timeout=30, what="the stalled read to end")
    assert reader.read("/x", 4, 666) == HolderStatus(Kind.LINE, "running 666")


def test_a_reader_that_raises_is_a_refusal_not_a_dead_worker() -> None:
    def read_file(state_dir: str, job_id: int, uid: int) -> HolderStatus:
        raise RuntimeError("boom")

    reader = StatusReader(timeout_s=5, read=read_file)
    assert reader.read("/x", 1, 1).kind == Kind.REFUSED
    assert reader.read("/x", 2, 1).kind == Kind.REFUSED


def test_a_hanging_status_read_leaves_the_pass_and_other_containers_going(
    tmp_path: Path,
) -> None:
    release = threading.Event()

    def read_file(state_dir: str, job_id: int, uid: int) -> HolderStatus:
        if state_dir == "/hangs":
            release.wait()
        return HolderStatus(Kind.LINE, f"running rx-{job_id}")

    r = rig(
        tmp_path,
        {"name": "rx-a", "state": "starting", "job_id": 10, "state_dir": "/hangs"},
        # Another user: a hanging read stalls only the containers of the user it reads for.
        {
            "name": "rx-b",
            "state": "starting",
            "job_id": 11,
            "state_dir": "/fine",
            "runtime_user": "rxbob",
        },
    )
    r.reconciler.service.runtime.status_reader = StatusReader(timeout_s=0.2, read=read_file)
    r.slurm.add(10, "rxalice", "rx-a", 1, state="RUNNING", reason="None")
    r.slurm.add(11, "rxbob", "rx-b", 2, state="RUNNING", reason="None")
    try:
        for _ in range(3):
            assert r.reconciler.reconcile_once().ok
        hanging, fine = r.container(1), r.container(2)
        assert (hanging["state"], hanging["reason"]) == (
            "starting",
            "its status file does not answer",
        )
        assert (fine["state"], fine["instance"]) == ("running", "rx-11")
    finally:
        release.set()


# ----------------------------------------------------------------------- the recipe on the cluster


def queued_ids() -> list[str]:
    listed = subprocess.run(
        ["squeue", "-h", "--all", "-o", "%i"], capture_output=True, text=True, check=True
    )
    return listed.stdout.split()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def daemon() -> Iterator[Rxd]:
    with lifecycle_rxd() as rxd:
        yield rxd


def make_hostile(kind: str, path: Path, secret: Path) -> None:
    """As rxdave, in his own state folder: replace the holder's status file."""
    commands = {
        "fifo": f"rm -f {path} && mkfifo {path}",
        "dev-zero": f"ln -sf /dev/zero {path}",
        "root-only": f"ln -sf {secret} {path}",
        "sparse": f"rm -f {path} && truncate -s 64G {path}",
    }
    ok(run_as("rxdave", ["sh", "-c", commands[kind]]))


@pytest.mark.cluster
def test_hostile_status_files_change_nothing_for_others(daemon: Rxd, tmp_path: Path) -> None:
    # A root-only file whose content would reach last_error if root followed the link.
    secret_dir = daemon.root / "secret"
    secret_dir.mkdir(mode=0o700)
    secret = secret_dir / "token"
    secret.write_text("error: SECRET-4711\n")
    secret.chmod(0o600)
    assert daemon.proc is not None
    rss_before = rss_kib(daemon.proc.pid)
    make_project(daemon, "dv", user="rxdave")
    ok(daemon.rxctl("rxdave", "enable", "--project", "dv"))
    make_project(daemon, "al")
    for round_, kind in enumerate(("fifo", "dev-zero", "root-only", "sparse")):
        if round_:
            ok(daemon.rxctl("rxdave", "retry", "--project", "dv"))
        job_id = wait_state(daemon, "dv", "running", user="rxdave")["job_id"]
        path = daemon.root / "containers" / "rx-dv" / f"job-{job_id}.status"
        make_hostile(kind, path, secret)
        # The hostile container ends in error with the reason, and its job is ended.
        broken = wait_state(daemon, "dv", "error", user="rxdave", timeout=60)
        assert broken["reason"] == "its status file is unsafe to read", kind
        assert broken["last_error"].startswith("rx-slurm refused the holder's status file: ")
        assert "SECRET" not in broken["last_error"]
        # Meanwhile the reconciler keeps serving rxalice.
        ok(daemon.rxctl("rxalice", "start" if round_ else "enable", "--project", "al"))
        wait_state(daemon, "al", "running")
        ok(daemon.rxctl("rxalice", "stop", "--project", "al"))
        wait_state(daemon, "al", "stopped")
        wait_for(
            lambda job=job_id: str(job) not in queued_ids(),
            timeout=60,
            what="the hostile container's job to end",
        )
    # Reading /dev/zero or 64 GiB would have grown rxd by gigabytes; 64 MiB is noise.
    assert rss_kib(daemon.proc.pid) - rss_before < 64 * 1024
    assert status(daemon, "rxdave", "dv")["state"] == "error"
    assert "SECRET" not in daemon.log_text()
