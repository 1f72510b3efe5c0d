"""Fast tests (no Slurm) of the folder rules behind findings 3 and 9: ACL entries, the getfacl
parser, claiming a folder, quarantine."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.daemon.projects.workspaces import Grant, WorkspaceError, acl_specs, claim, named_uids
from rxslurm.daemon.quarantine import QUARANTINE, QuarantineError, quarantine
from rxslurm.slurm.runas import RunAs

ME = RunAs("me", os.getuid() or 12345, os.getgid() or 12345, (os.getgid() or 12345,))
ROOT_ONLY = pytest.mark.root(reason="gives folders to other users")


def test_top_folder_entries_grant_by_role_and_keep_the_runtime_identity_a_default() -> None:
    grants = [Grant("alice", True), Grant("bob", True), Grant("carol", False)]
    assert acl_specs(grants, "alice", recursive=False) == [
        "u:bob:rwx",
        "d:u:bob:rwx",
        "u:carol:r-x",
        "d:u:carol:r-x",
        "m::rwx",
        "d:m::rwx",
        "d:u:alice:rwx",
    ]


def test_entries_below_never_make_a_plain_file_executable() -> None:
    specs = acl_specs([Grant("alice", True), Grant("carol", False)], "alice", recursive=True)
    assert specs == ["u:carol:r-X", "d:u:carol:r-X", "d:u:alice:rwX"]
    assert not any(s.startswith("m::") for s in specs)  # setfacl recomputes each file's mask


def test_named_uids_reads_access_and_default_entries_only() -> None:
    listed = (
        "user::rwx\nuser:2002:rwx\t#effective:r-x\ngroup::---\ngroup:2000:r-x\nmask::rwx\n"
        "other::---\ndefault:user::rwx\ndefault:user:2003:r-x\ndefault:mask::rwx\n"
    )
    assert named_uids(listed) == {2002, 2003}


entry = st.tuples(
    st.booleans(), st.integers(min_value=1, max_value=2**32 - 2), st.sampled_from(["rwx", "r-x"])
)


@given(st.lists(entry, max_size=20))
def test_named_uids_finds_exactly_the_named_users(entries: list[tuple[bool, int, str]]) -> None:
    lines = ["user::rwx", "group::r-x", "mask::rwx", "other::---"]
    lines += [f"{'default:' if d else ''}user:{uid}:{perms}" for d, uid, perms in entries]
    assert named_uids("\n".join(lines)) == {uid for _, uid, _ in entries}


@given(st.text())
def test_named_uids_never_fails_on_any_text(text: str) -> None:
    assert all(isinstance(uid, int) for uid in named_uids(text))


def test_claim_makes_a_missing_folder_the_owners(tmp_path: Path) -> None:
    claim(tmp_path / "ws", ME, None)
    info = (tmp_path / "ws").stat()
    assert info.st_uid == ME.uid and stat.S_IMODE(info.st_mode) == 0o700


def test_claim_keeps_the_owners_folder(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "data").write_text("kept")
    os.chown(tmp_path / "ws", ME.uid, ME.gid)
    claim(tmp_path / "ws", ME, ME.uid)
    assert (tmp_path / "ws" / "data").read_text() == "kept"


@pytest.mark.parametrize("recorded", [None, 4242])
def test_claim_refuses_a_folder_nobody_gave_the_project(
    tmp_path: Path, recorded: int | None
) -> None:
    (tmp_path / "ws").mkdir()
    if os.geteuid() == 0:
        os.chown(tmp_path / "ws", 2002, 2002)  # someone's, not root's (root's means parked)
    owner = (tmp_path / "ws").stat().st_uid
    stranger = RunAs("stranger", 54321, 54321, (54321,))
    with pytest.raises(WorkspaceError, match="never gave it to"):
        claim(tmp_path / "ws", stranger, recorded)
    assert (tmp_path / "ws").stat().st_uid == owner  # untouched


@ROOT_ONLY
@pytest.mark.parametrize("parked_as", [2001, 0])
def test_claim_hands_over_a_folder_it_gave_away_or_parked(tmp_path: Path, parked_as: int) -> None:
    (tmp_path / "ws").mkdir()
    os.chown(tmp_path / "ws", parked_as, parked_as)
    claim(tmp_path / "ws", RunAs("bob", 2002, 2002, (2002,)), 2001)
    assert (tmp_path / "ws").stat().st_uid == 2002


def test_claim_refuses_a_symlink_or_file_at_the_path(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "ws").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(WorkspaceError, match="is not a folder"):
        claim(tmp_path / "ws", ME, None)


def test_quarantine_refuses_a_root_others_may_write(tmp_path: Path) -> None:
    root = tmp_path / "open"
    root.mkdir()
    root.chmod(0o777)
    (root / "thesis").mkdir()
    with pytest.raises(QuarantineError, match="must be owned by root"):
        quarantine(root, "thesis")
    assert (root / "thesis").is_dir()


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", QUARANTINE])
def test_quarantine_takes_only_a_plain_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        quarantine(tmp_path, name)


@ROOT_ONLY
def test_quarantine_moves_the_folder_out_of_reach_and_keeps_its_data(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir(mode=0o755)
    (root / "thesis").mkdir(mode=0o777)
    (root / "thesis" / "key").write_text("s3cret")
    os.chown(root / "thesis", 2002, 2002)
    moved = quarantine(root, "thesis")
    assert moved is not None and moved.parent == root / QUARANTINE
    assert not (root / "thesis").exists()
    for path in (moved, moved.parent):
        info = path.lstat()
        assert info.st_uid == 0 and stat.S_IMODE(info.st_mode) == 0o700
    assert (moved / "key").read_text() == "s3cret"
    assert quarantine(root, "thesis") is None  # nothing there any more
