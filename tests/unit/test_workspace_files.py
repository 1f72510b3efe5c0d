"""A workspace's files as the platform reads and writes them (projects/workspace_files.py): the
path check (Hypothesis: nothing it accepts leaves the workspace) and the walking scripts, run as
this process in a folder of the test's: links are refused at every step, never followed."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.daemon.errors import NotFound
from rxslurm.daemon.projects.workspace_files import (
    BadPath,
    FileTooBig,
    Workspace,
    check_path,
    read_file,
    write_file,
)

names = st.text(st.characters(exclude_characters="/\0"), min_size=1, max_size=20)
paths = st.lists(names | st.sampled_from(["..", ".", "", "/"]), min_size=1, max_size=6).map(
    "/".join
) | st.text(max_size=40)


@given(paths)
def test_an_accepted_path_stays_inside_the_workspace(path: str) -> None:
    try:
        checked = check_path(path)
    except BadPath as exc:
        assert str(exc)
        return
    joined = posixpath.normpath(posixpath.join("/workspace", checked))
    assert joined.startswith("/workspace/")
    assert joined == "/workspace/" + checked  # nothing in it was normalized away
    assert ".." not in checked.split("/")


@pytest.mark.parametrize(
    "path", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "a/", "a\0b", "x" * 256]
)
def test_a_path_that_is_not_plainly_below_the_workspace_is_refused(path: str) -> None:
    with pytest.raises(BadPath):
        check_path(path)


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    (tmp_path / "ws").mkdir()
    return Workspace(str(tmp_path / "ws"), None)


def test_a_written_file_reads_back_folders_made_on_the_way(workspace: Workspace) -> None:
    data = bytes(range(256)) * 10
    assert write_file(workspace, "out/deep/blob.bin", data, most=1 << 20) == len(data)
    assert read_file(workspace, "out/deep/blob.bin") == data
    assert (Path(workspace.folder) / "out/deep/blob.bin").read_bytes() == data
    write_file(workspace, "out/deep/blob.bin", b"new", most=1 << 20)
    assert read_file(workspace, "out/deep/blob.bin") == b"new"
    # Nothing of the write is left beside the file.
    assert os.listdir(Path(workspace.folder) / "out/deep") == ["blob.bin"]


def test_links_are_refused_never_followed(workspace: Workspace, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root's")
    outside = tmp_path / "outside"
    outside.mkdir()
    root = Path(workspace.folder)
    (root / "file-link").symlink_to(secret)
    (root / "dir-link").symlink_to(outside)
    for path in ("file-link", "dir-link/x"):
        with pytest.raises(BadPath, match="symbolic link"):
            read_file(workspace, path)
        with pytest.raises(BadPath, match="symbolic link|not a regular file"):
            write_file(workspace, path, b"written through", most=1 << 20)
    assert secret.read_text() == "root's"
    assert os.listdir(outside) == []
    assert (root / "file-link").is_symlink()


def test_a_missing_file_a_folder_and_a_big_file_are_refused(workspace: Workspace) -> None:
    with pytest.raises(NotFound):
        read_file(workspace, "nothing/here")
    (Path(workspace.folder) / "folder").mkdir()
    with pytest.raises(BadPath, match="not a regular file"):
        read_file(workspace, "folder")
    with pytest.raises(BadPath, match="not a regular file"):
        write_file(workspace, "folder", b"x", most=10)
    write_file(workspace, "big", b"x" * 11, most=20)
    with pytest.raises(FileTooBig):
        read_file(workspace, "big", most=10)
    with pytest.raises(FileTooBig):
        write_file(workspace, "big", b"x" * 11, most=10)
