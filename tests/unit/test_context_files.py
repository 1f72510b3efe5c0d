"""Build contexts uploaded through the API (images/context_files.py): chunks parsed and checked,
then written by the constant scripts, run as this process in a folder of the test's: a file
appears whole only with its last chunk, a chunk must start where the file ends, the context's
size is capped, links are never followed."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from rxslurm.daemon.errors import BadRequest, Conflict, NotFound
from rxslurm.daemon.images.context_files import (
    Chunk,
    parse_chunk,
    put_chunk,
    remove_folder,
)
from rxslurm.daemon.projects.workspace_files import BadPath, FileTooBig, Workspace
from rxslurm.protocol import build_context

MOST = 1 << 20


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    (tmp_path / "ws").mkdir()
    return Workspace(str(tmp_path / "ws"), None)


def folder(workspace: Workspace, context: str = "ctx") -> Path:
    return Path(workspace.folder) / build_context.FOLDER / context


def test_a_file_in_chunks_appears_whole_with_its_last(workspace: Workspace) -> None:
    data = os.urandom(3000)
    assert put_chunk(workspace, "ctx", Chunk("wheels/a.whl", 0, data[:1000], False), MOST) == 1000
    # Not there under its name until the last chunk: a build never copies half a file.
    assert not (folder(workspace) / "wheels" / "a.whl").exists()
    assert put_chunk(workspace, "ctx", Chunk("wheels/a.whl", 1000, data[1000:], True), MOST) == 3000
    assert (folder(workspace) / "wheels" / "a.whl").read_bytes() == data
    assert os.listdir(folder(workspace) / "wheels") == ["a.whl"]


def test_an_executable_file_is_made_0755_others_0644(workspace: Workspace) -> None:
    put_chunk(workspace, "ctx", Chunk("run.sh", 0, b"#!/bin/sh\n", True, executable=True), MOST)
    put_chunk(workspace, "ctx", Chunk("data", 0, b"x", True), MOST)
    assert (folder(workspace) / "run.sh").stat().st_mode & 0o777 == 0o755
    assert (folder(workspace) / "data").stat().st_mode & 0o777 == 0o644


def test_a_chunk_that_does_not_start_where_the_file_ends_is_refused(workspace: Workspace) -> None:
    put_chunk(workspace, "ctx", Chunk("f", 0, b"abc", False), MOST)
    with pytest.raises(Conflict, match="has 3 bytes, not 10"):
        put_chunk(workspace, "ctx", Chunk("f", 10, b"x", True), MOST)
    with pytest.raises(Conflict, match="has 0 bytes, not 5"):
        put_chunk(workspace, "ctx", Chunk("never-started", 5, b"x", True), MOST)
    # Starting again from 0 replaces what was sent.
    assert put_chunk(workspace, "ctx", Chunk("f", 0, b"new", True), MOST) == 3
    assert (folder(workspace) / "f").read_bytes() == b"new"


def test_the_context_is_capped(workspace: Workspace) -> None:
    put_chunk(workspace, "ctx", Chunk("a", 0, b"x" * 60, True), 100)
    with pytest.raises(FileTooBig):
        put_chunk(workspace, "ctx", Chunk("b", 0, b"y" * 50, True), 100)
    assert not (folder(workspace) / "b").exists()
    # Another context counts on its own.
    assert put_chunk(workspace, "other", Chunk("b", 0, b"y" * 50, True), 100) == 50


def test_a_link_on_the_way_is_refused_not_followed(workspace: Workspace, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    top = Path(workspace.folder) / build_context.FOLDER
    top.mkdir()
    (top / "ctx").symlink_to(outside)
    with pytest.raises(BadPath, match="symbolic link"):
        put_chunk(workspace, "ctx", Chunk("f", 0, b"x", True), MOST)
    with pytest.raises(BadPath):
        remove_folder(workspace, "ctx")
    assert list(outside.iterdir()) == []
    assert (top / "ctx").is_symlink()


def test_a_context_is_removed_whole(workspace: Workspace) -> None:
    put_chunk(workspace, "ctx", Chunk("d/e/f", 0, b"x", True), MOST)
    assert remove_folder(workspace, "ctx") == f"{build_context.FOLDER}/ctx"
    assert not folder(workspace).exists()
    with pytest.raises(NotFound):
        remove_folder(workspace, "ctx")


@pytest.mark.parametrize(
    "body",
    [
        {"path": "../x", "offset": 0, "data": "", "last": True},
        {"path": "x", "offset": -1, "data": "", "last": True},
        {"path": "x", "offset": True, "data": "", "last": True},
        {"path": "x", "offset": 0, "data": "not base64!", "last": True},
        {"path": "x", "offset": 0, "data": "", "last": "yes"},
        {
            "path": "x",
            "offset": 0,
            "data": base64.b64encode(b"x" * (build_context.CHUNK_BYTES + 1)).decode(),
            "last": True,
        },
    ],
)
def test_a_bad_chunk_is_refused(body: dict[str, object]) -> None:
    with pytest.raises(BadRequest):
        parse_chunk(body)


def test_the_largest_chunk_fits_in_rxds_body_limit() -> None:
    from rxslurm.daemon.api.app import MAX_BODY_BYTES

    body = {
        "path": "/".join(["x" * 255] * 16),
        "offset": 2**62,
        "data": base64.b64encode(b"\xff" * build_context.CHUNK_BYTES).decode(),
        "last": False,
        "executable": True,
    }
    assert len(json.dumps(body).encode()) < MAX_BODY_BYTES
    assert parse_chunk(body).data == b"\xff" * build_context.CHUNK_BYTES


def test_a_bad_context_name_is_refused(workspace: Workspace) -> None:
    with pytest.raises(BadRequest):
        put_chunk(workspace, "../up", Chunk("f", 0, b"x", True), MOST)
    assert not (Path(workspace.folder) / build_context.FOLDER).exists()


def test_a_refused_chunk_creates_no_folder(workspace: Workspace) -> None:
    # Bad input changes nothing: a chunk refused for its offset or for the cap leaves no folder
    # behind (the script once created the path's folders before it checked either).
    with pytest.raises(Conflict, match="has 0 bytes, not 5"):
        put_chunk(workspace, "ctx", Chunk("new/deep/f", 5, b"x", True), MOST)
    with pytest.raises(FileTooBig):
        put_chunk(workspace, "big", Chunk("sub/f", 0, b"y" * 101, True), 100)
    assert not (Path(workspace.folder) / build_context.FOLDER).exists()
    put_chunk(workspace, "ctx", Chunk("a", 0, b"x" * 60, True), 100)
    with pytest.raises(FileTooBig):
        put_chunk(workspace, "ctx", Chunk("sub/b", 0, b"y" * 50, True), 100)
    with pytest.raises(Conflict, match="has 0 bytes, not 1"):
        put_chunk(workspace, "ctx", Chunk("other/b", 1, b"y", True), MOST)
    assert os.listdir(folder(workspace)) == ["a"]


def test_a_linked_context_is_refused_not_counted(workspace: Workspace, tmp_path: Path) -> None:
    # The size count walks from the workspace without following links: a context folder that is
    # a link to a large tree is refused as a link, never walked (nor counted against the cap).
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big").write_bytes(b"z" * 500)
    top = Path(workspace.folder) / build_context.FOLDER
    top.mkdir()
    (top / "ctx").symlink_to(outside)
    with pytest.raises(BadPath, match="symbolic link"):
        put_chunk(workspace, "ctx", Chunk("f", 0, b"x", True), 100)
    (top / "ctx").unlink()
    (top / "ctx").mkdir()
    (top / "ctx" / "in").symlink_to(outside)
    # A link inside the context is neither followed nor counted.
    assert put_chunk(workspace, "ctx", Chunk("f", 0, b"x" * 90, True), 100) == 90
    assert [p.name for p in outside.iterdir()] == ["big"]
