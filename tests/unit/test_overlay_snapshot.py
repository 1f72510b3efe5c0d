"""The overlay snapshot script (runtime/overlay_snapshot.py), run here as the test's own user in a
temp folder: the copy is whole, sparse and read-only; nothing is copied while the overlay's lock is
held; an unchanged overlay is not copied again; older snapshots and leftovers go, links are never
followed; the ACLs give the granted uids read on the snapshots and traverse-only above."""

from __future__ import annotations

import fcntl
import os
import stat
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.daemon.runtime import overlay_snapshot
from rxslurm.daemon.runtime.overlay_snapshot import Outcome, SnapshotError, parse_output

MIB = 1 << 20
READER = 4242  # any uid: the owner of a file may name any uid in its ACL


def container_folder(tmp_path: Path, size: int = 64 * MIB) -> Path:
    """A container's folder with a sparse overlay: a little data at three places, holes between."""
    folder = tmp_path / "rx-alpha"
    folder.mkdir(mode=0o700)
    overlay = folder / "overlay.img"
    with overlay.open("wb") as f:
        f.truncate(size)
        for offset, text in ((0, b"superblock"), (10 * MIB, b"/opt/tool"), (size - 5, b"tail!")):
            f.seek(offset)
            f.write(text)
    overlay.chmod(0o600)
    (folder / "overlay.lock").touch()
    return folder


def take(folder: Path, name: str = "snap-1.img", **kw: object) -> Outcome:
    args: dict[str, object] = {"keep": (), "uids": (READER,), "last_mtime_ns": None}
    args.update(kw)
    return overlay_snapshot.take(
        str(folder),
        name,
        args["keep"],  # type: ignore[arg-type]
        args["uids"],  # type: ignore[arg-type]
        args["last_mtime_ns"],  # type: ignore[arg-type]
        None,
        keep_if_unchanged=args.get("keep_if_unchanged", ()),  # type: ignore[arg-type]
    )


def acl_of(path: Path) -> list[str]:
    shown = subprocess.run(
        ["getfacl", "-cpn", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in shown.splitlines() if line and not line.startswith("#")]


def test_a_snapshot_is_the_whole_overlay_sparse_read_only_and_readable_by_the_granted(
    tmp_path: Path,
) -> None:
    folder = container_folder(tmp_path)
    overlay = folder / "overlay.img"

    outcome = take(folder)

    snap = folder / "snapshots" / "snap-1.img"
    assert outcome.taken == "snap-1.img" and outcome.size == overlay.stat().st_size
    assert outcome.mtime_ns == overlay.stat().st_mtime_ns
    assert snap.read_bytes() == overlay.read_bytes()
    assert stat.S_IMODE(snap.stat().st_mode) & 0o777 in (0o400, 0o440)  # 0440: the ACL mask
    assert not os.access(snap, os.W_OK) or os.getuid() == 0
    # Sparse: 64 MiB apparent, a few blocks on disk.
    assert snap.stat().st_blocks * 512 < 4 * MIB
    assert f"user:{READER}:r--" in acl_of(snap)
    assert f"user:{READER}:--x" in acl_of(folder / "snapshots")
    assert f"user:{READER}:--x" in acl_of(folder)
    assert not list((folder / "snapshots").glob(".tmp-*"))


def test_nothing_is_copied_while_a_job_holds_the_overlay_lock(tmp_path: Path) -> None:
    folder = container_folder(tmp_path)
    with (folder / "overlay.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as holder.sh does for its job's life
        outcome = take(folder)
    assert outcome.busy and outcome.taken is None
    assert not list((folder / "snapshots").iterdir())


def test_nothing_is_copied_while_apptainer_has_the_overlay_mounted_writable(
    tmp_path: Path,
) -> None:
    # An instance that outlived its holder: no overlay.lock, but Apptainer's own write lock
    # (an OFD lock over the image, as /proc/locks shows for a running container).
    folder = container_folder(tmp_path)
    fd = os.open(folder / "overlay.img", os.O_RDWR)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 64 << 20, 0))
        outcome = take(folder)
    finally:
        os.close(fd)
    assert outcome.busy and outcome.taken is None
    assert take(folder).taken == "snap-1.img"  # once it lets go


def test_an_unchanged_overlay_is_not_copied_again(tmp_path: Path) -> None:
    folder = container_folder(tmp_path)
    first = take(folder)

    again = take(
        folder,
        "snap-2.img",
        keep=(),
        keep_if_unchanged=("snap-1.img",),
        last_mtime_ns=first.mtime_ns,
    )

    assert again.unchanged and again.taken is None
    assert sorted(p.name for p in (folder / "snapshots").iterdir()) == ["snap-1.img"]


def test_a_changed_overlay_is_copied_and_snapshots_not_kept_go(tmp_path: Path) -> None:
    folder = container_folder(tmp_path)
    first = take(folder, "snap-1.img")
    take(folder, "snap-2.img", keep=("snap-1.img",))
    with (folder / "overlay.img").open("r+b") as f:
        f.seek(20 * MIB)
        f.write(b"new package")

    third = take(folder, "snap-3.img", keep=("snap-2.img",), last_mtime_ns=first.mtime_ns)

    assert third.taken == "snap-3.img" and third.removed == ("snap-1.img",)
    assert sorted(p.name for p in (folder / "snapshots").iterdir()) == ["snap-2.img", "snap-3.img"]
    assert b"new package" in (folder / "snapshots" / "snap-3.img").read_bytes()
    assert b"new package" not in (folder / "snapshots" / "snap-2.img").read_bytes()


def test_leftovers_go_links_are_neither_followed_nor_removed(tmp_path: Path) -> None:
    folder = container_folder(tmp_path)
    shots = folder / "snapshots"
    shots.mkdir(mode=0o700)
    secret = tmp_path / "secret"
    secret.write_text("the runtime user's key\n")
    (shots / "snap-7.img").symlink_to(secret)
    (shots / ".tmp-snap-8.img").write_bytes(b"half a copy")
    (shots / "notes.txt").write_text("not ours to remove\n")

    outcome = take(folder, "snap-9.img")

    assert outcome.skipped == ("snap-7.img",) and outcome.removed == (".tmp-snap-8.img",)
    assert secret.read_text() == "the runtime user's key\n"
    assert (shots / "snap-7.img").is_symlink() and (shots / "notes.txt").exists()
    assert f"user:{READER}" not in " ".join(acl_of(secret))


@pytest.mark.parametrize("swap", ["overlay.img", "snapshots"])
def test_a_link_in_place_of_the_overlay_or_the_snapshots_folder_is_refused(
    tmp_path: Path, swap: str
) -> None:
    folder = container_folder(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = folder / swap
    if target.exists():
        target.rename(elsewhere / "moved")
    target.symlink_to(elsewhere / "moved" if swap == "overlay.img" else elsewhere)

    with pytest.raises(SnapshotError, match="overlay snapshot failed"):
        take(folder)
    assert list(elsewhere.iterdir()) == ([elsewhere / "moved"] if swap == "overlay.img" else [])


def test_a_fifo_in_place_of_the_lock_fails_at_once_instead_of_hanging(tmp_path: Path) -> None:
    folder = container_folder(tmp_path)
    (folder / "overlay.lock").unlink()
    os.mkfifo(folder / "overlay.lock")

    with pytest.raises(SnapshotError, match="overlay snapshot failed"):
        overlay_snapshot.take(str(folder), "snap-1.img", (), (), None, None, timeout=30)
    assert not (folder / "snapshots" / "snap-1.img").exists()


def test_access_alone_revokes_those_no_longer_granted_and_removes_nothing(tmp_path: Path) -> None:
    folder = container_folder(tmp_path)
    take(folder)
    # A copy under way beside it (a change of members during a snapshot) keeps its file.
    (folder / "snapshots" / ".tmp-snap-2.img").write_bytes(b"being copied")

    overlay_snapshot.set_access(str(folder), ["snap-1.img"], [7777], None)

    assert (folder / "snapshots" / ".tmp-snap-2.img").exists()

    snap = folder / "snapshots" / "snap-1.img"
    assert f"user:{READER}:r--" not in acl_of(snap) and "user:7777:r--" in acl_of(snap)
    overlay_snapshot.set_access(str(folder), ["snap-1.img"], [], None)
    assert not any(line.startswith("user:7777") for line in acl_of(folder))
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_clear_removes_every_snapshot_and_leftover(tmp_path: Path) -> None:
    folder = container_folder(tmp_path)
    take(folder)
    (folder / "snapshots" / ".tmp-snap-2.img").write_bytes(b"half a copy")

    outcome = overlay_snapshot.clear(str(folder), None)

    assert outcome.removed == (".tmp-snap-2.img", "snap-1.img")
    assert list((folder / "snapshots").iterdir()) == []


def test_a_name_that_could_reach_another_argument_is_refused() -> None:
    with pytest.raises(ValueError, match="no ','"):
        overlay_snapshot.snapshot_argv("/c", "take", "snap-1.img", ["a,b"], [], None)


@given(st.text(max_size=200), st.integers(min_value=-1, max_value=3))
def test_any_script_output_is_an_outcome_or_a_snapshot_error(stdout: str, code: int) -> None:
    try:
        outcome = parse_output(code, stdout)
    except SnapshotError as exc:
        assert str(exc).startswith("overlay snapshot failed")
    else:
        assert isinstance(outcome, Outcome) and code == 0


def test_a_malformed_answer_is_an_error_not_a_crash() -> None:
    with pytest.raises(SnapshotError, match="malformed"):
        parse_output(0, '{"taken": 5}')
    with pytest.raises(SnapshotError, match="malformed"):
        parse_output(0, '{"busy": "yes"}')
    assert parse_output(0, '{"busy": true}').busy
