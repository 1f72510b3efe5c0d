"""Reading a capped output (runtime/rotated_output.py): the newest bytes across the older part
and the current file, and whether older output was dropped, as `rxctl logs` shows them."""

from __future__ import annotations

from pathlib import Path

import pytest

from rxslurm.daemon.runtime import rotated_output
from rxslurm.daemon.runtime.job_output import read_output
from rxslurm.daemon.runtime.rotated_output import read_rotated


@pytest.fixture(autouse=True)
def as_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # The runtime user's switch needs root: the reader runs as this process here.
    monkeypatch.setattr(
        rotated_output,
        "read_output",
        lambda state_dir, job, who, **kw: read_output(state_dir, job, None, **kw),
    )


def write(folder: Path, **files: str) -> None:
    for name, text in files.items():
        (folder / name.replace("_", ".")).write_text(text)


def test_a_short_current_file_is_shown_after_the_end_of_the_older_part(tmp_path: Path) -> None:
    write(tmp_path, out="new\n", out_1="0123456789old\n")

    read = read_rotated(str(tmp_path), "out", None, max_bytes=8)

    assert read.text == "old\nnew\n"
    assert (read.older_unshown, read.dropped) == (True, False)
    assert read.fields()["cut"] and read.fields()["earlier"] == 4
    # Offsets stay the current file's, for a follower.
    assert (read.piece.start, read.piece.end, read.piece.size) == (0, 4, 4)


def test_all_of_both_parts_fit_and_nothing_is_unshown(tmp_path: Path) -> None:
    write(tmp_path, out="new\n", out_1="old\n")

    read = read_rotated(str(tmp_path), "out", None)

    assert read.text == "old\nnew\n" and not read.older_unshown and not read.fields()["cut"]


def test_the_marker_says_older_output_was_dropped(tmp_path: Path) -> None:
    write(tmp_path, out="x" * 100, out_1="y", out_dropped="")

    read = read_rotated(str(tmp_path), "out", None, max_bytes=10)

    assert read.text == "x" * 10
    assert read.dropped and read.older_unshown


def test_without_any_file_the_answer_is_missing(tmp_path: Path) -> None:
    read = read_rotated(str(tmp_path), "out", None)
    assert read.fields()["missing"] and read.text == "" and not read.dropped


def test_a_follower_reads_the_current_file_and_a_new_one_from_its_start(tmp_path: Path) -> None:
    write(tmp_path, out="abcdef", out_1="older")

    assert read_rotated(str(tmp_path), "out", None, offset=2).text == "cdef"
    # Past the end: the file started anew since the follower's last read.
    again = read_rotated(str(tmp_path), "out", None, offset=5000)
    assert (again.text, again.piece.start) == ("abcdef", 0)
