"""Reading a container's logs: the reader that runs as the runtime user (here: as the test's own
user), capping, offsets, links and FIFOs refused, text made safe for terminals; which job a
member may read (the ledger's jobs of that container only) and who may read at all."""

from __future__ import annotations

import os
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.daemon.api.routes_logs import parse_number
from rxslurm.daemon.containers import job_logs
from rxslurm.daemon.containers.job_logs import container_logs
from rxslurm.daemon.errors import BadRequest, Conflict, NotFound
from rxslurm.daemon.identity.actors import Actor
from rxslurm.daemon.ledger.timestamps import to_timestamp
from rxslurm.daemon.projects.roles import ALLOWED, Action, Role
from rxslurm.daemon.runtime import job_output, user_script
from rxslurm.daemon.runtime.job_output import (
    JobOutput,
    OutputError,
    parse_reader_output,
    read_output,
)
from rxslurm.daemon.text_checks import bad_character, safe_output
from rxslurm.slurm.runas import RunAs
from tests.unit.test_reconciler_edges import OWNER, World, world

VIEWER = Actor(platform_user="vic", uid=65533, user="vic", admin=False, origin="socket")
STRANGER = Actor(platform_user="sam", uid=65532, user="sam", admin=False, origin="socket")


# -- the reader ------------------------------------------------------------------------------


def write_log(folder: Path, job_id: int, data: bytes) -> Path:
    path = folder / f"job-{job_id}.out"
    path.write_bytes(data)
    return path


def test_the_reader_gives_the_last_bytes_of_a_long_log_and_says_where_they_start(
    tmp_path: Path,
) -> None:
    data = b"".join(b"line %05d\n" % i for i in range(2000))  # 22000 bytes
    write_log(tmp_path, 7, data)

    piece = read_output(str(tmp_path), 7, None, max_bytes=1000)

    assert (piece.start, piece.end, piece.size) == (21000, 22000, 22000)
    assert piece.text == data[21000:].decode()
    assert piece.cut


def test_the_reader_continues_from_an_offset_in_pieces_of_at_most_max_bytes(
    tmp_path: Path,
) -> None:
    write_log(tmp_path, 7, b"abcdefghij")

    first = read_output(str(tmp_path), 7, None, offset=2, max_bytes=4)
    rest = read_output(str(tmp_path), 7, None, offset=first.end, max_bytes=4)
    past = read_output(str(tmp_path), 7, None, offset=99, max_bytes=4)

    assert (first.text, first.start, first.end) == ("cdef", 2, 6)
    assert (rest.text, rest.start, rest.end) == ("ghij", 6, 10)
    assert (past.text, past.start, past.end, past.size) == ("", 10, 10, 10)


def test_a_character_cut_by_the_cap_waits_for_the_next_read(tmp_path: Path) -> None:
    write_log(tmp_path, 7, "ab€cd".encode())  # € is 3 bytes: 2..4

    first = read_output(str(tmp_path), 7, None, offset=0, max_bytes=4)
    second = read_output(str(tmp_path), 7, None, offset=first.end, max_bytes=4)

    assert (first.text, first.end) == ("ab", 2)
    assert (second.text, second.end) == ("€c", 6)


def test_a_huge_sparse_log_costs_only_the_cap(tmp_path: Path) -> None:
    with (tmp_path / "job-7.out").open("wb") as huge:
        huge.truncate(10 * 1024**3)
        huge.seek(-6, os.SEEK_END)
        huge.write(b"tail!\n")

    piece = read_output(str(tmp_path), 7, None, max_bytes=4096)

    assert (piece.end - piece.start, piece.size) == (4096, 10 * 1024**3)
    assert piece.text.endswith("tail!\n") and len(piece.text) == 4096


def test_the_reader_runs_isolated_as_the_runtime_user(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[list[str], Any]] = []

    def fake_run(argv: list[str], as_user: Any, timeout: float) -> Any:
        calls.append((argv, as_user))
        return subprocess.CompletedProcess(argv, 0, '{"kind": "missing"}\n', "")

    monkeypatch.setattr(user_script, "run", fake_run)
    who = RunAs("ada", 65534, 65534, (65534,))

    read_output("/state/rx-a", 42, who, offset=7)

    ((argv, as_user),) = calls
    assert as_user is who
    assert argv[:4] == [sys.executable, "-I", "-S", "-c"]
    assert argv[5:] == ["/state/rx-a", "job-42.out", "7", str(job_output.MAX_BYTES)]


def test_a_job_that_wrote_nothing_yet_is_missing_not_an_error(tmp_path: Path) -> None:
    assert read_output(str(tmp_path), 7, None) == JobOutput("", 0, 0, 0, missing=True)


def test_a_symlink_planted_as_the_log_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("the runtime user's private key\n")
    (tmp_path / "job-7.out").symlink_to(secret)

    with pytest.raises(OutputError, match="job-7.out is a symbolic link") as caught:
        read_output(str(tmp_path), 7, None)
    assert "private key" not in str(caught.value)


def test_a_symlinked_state_folder_is_not_followed(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    write_log(real, 7, b"elsewhere\n")
    (tmp_path / "state").symlink_to(real)

    with pytest.raises(OutputError, match="its folder is a symbolic link"):
        read_output(str(tmp_path / "state"), 7, None)


def test_a_fifo_as_the_log_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "job-7.out")

    with pytest.raises(OutputError, match="not a regular file"):
        read_output(str(tmp_path), 7, None, timeout=30)


def test_what_the_reader_returns_is_safe_for_a_terminal(tmp_path: Path) -> None:
    colour = b"\x1b[31mFATAL:\x1b[0m could not open image\r\n"
    title_and_bidi = b"\x1b]0;title\x07\xe2\x80\xaeok\n"
    write_log(tmp_path, 7, colour + title_and_bidi)

    text = read_output(str(tmp_path), 7, None).text

    assert text == "FATAL: could not open image\n?]0;title??ok\n"


def test_a_reader_that_fails_is_an_output_error_with_its_last_line() -> None:
    with pytest.raises(OutputError, match="Permission denied"):
        parse_reader_output(1, "", "Traceback...\nPermissionError: Permission denied\n")


@given(st.integers(), st.text(), st.text())
def test_any_reader_answer_is_a_piece_or_an_output_error(code: int, out: str, err: str) -> None:
    try:
        piece = parse_reader_output(code, out, err)
    except OutputError as exc:
        assert all(c in "\n\t" or bad_character(c) is None for c in str(exc))
        return
    assert 0 <= piece.start <= piece.end <= piece.size
    assert all(c in "\n\t" or bad_character(c) is None for c in piece.text)


@given(st.text())
def test_safe_output_keeps_lines_and_tabs_and_nothing_a_terminal_acts_on(text: str) -> None:
    shown = safe_output(text)
    assert all(c in "\n\t" or bad_character(c) is None for c in shown)
    assert "\x1b" not in shown and "\r" not in shown


@given(st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp", "Cf"))))
def test_safe_output_leaves_plain_text_alone(text: str) -> None:
    assert safe_output(text + "\n\tnext") == text + "\n\tnext"
    assert all(unicodedata.category(c) != "Cc" for c in text)


# -- which job, and who ----------------------------------------------------------------------


def with_members(w: World) -> None:
    now = to_timestamp(w.clock())
    with w.ledger.transaction() as db:
        for user in ("vic", "sam"):
            db.table("platform_users").insert({"id": user, "created_at": now})
        project_id = w.row("alpha")["project_id"]
        db.table("members").insert(
            {
                "project_id": project_id,
                "platform_user_id": "vic",
                "role": "viewer",
                "added_at": now,
                "added_by": "ada",
            }
        )


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """The reads container_logs asks for (the reader itself needs the runtime user)."""
    seen: list[tuple[Any, ...]] = []

    def fake(
        state_dir: str,
        job_id: int,
        who: Any,
        offset: int | None,
        max_bytes: int,
        name: str | None = None,
    ) -> JobOutput:
        assert name is None  # the job's own output, job-<id>.out
        seen.append((state_dir, job_id, who.user, offset))
        return JobOutput(f"output of {job_id}\n", 0, 14, 14)

    monkeypatch.setattr(job_logs, "read_output", fake)
    return seen


def test_logs_default_to_the_current_job(tmp_path: Path, reads: list[Any]) -> None:
    w = world(tmp_path, ("alpha", "stopped"), ("beta", "stopped"))
    old = w.add_job("alpha", "COMPLETED")
    current = w.add_job("alpha", "RUNNING")
    w.set("alpha", state="running")

    answer = container_logs(w.ledger, OWNER, "alpha")

    assert reads == [(str(tmp_path), current, "nobody", None)]
    assert answer["job_id"] == current and answer["live"] is True
    assert answer["text"] == f"output of {current}\n"
    assert [j["job_id"] for j in answer["jobs"]] == [current, old]


def test_logs_of_a_stopped_container_are_its_latest_jobs(tmp_path: Path, reads: list[Any]) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    w.add_job("alpha", "COMPLETED")
    latest = w.add_job("alpha", "FAILED")
    w.set("alpha", job_id=None, state="error")

    answer = container_logs(w.ledger, OWNER, "alpha", offset=5)

    assert reads == [(str(tmp_path), latest, "nobody", 5)]
    assert answer["live"] is False and answer["state"] == "error"


def test_an_earlier_job_by_its_id_but_never_another_containers(
    tmp_path: Path, reads: list[Any]
) -> None:
    w = world(tmp_path, ("alpha", "stopped"), ("beta", "stopped"))
    earlier = w.add_job("alpha", "COMPLETED")
    w.add_job("alpha", "RUNNING")
    others = w.add_job("beta", "RUNNING")

    assert container_logs(w.ledger, OWNER, "alpha", job_id=earlier)["job_id"] == earlier
    with pytest.raises(NotFound, match=f"job {others} is not one of the jobs of alpha's"):
        container_logs(w.ledger, OWNER, "alpha", job_id=others)
    assert [r[1] for r in reads] == [earlier]


def test_a_container_that_never_ran_a_job_says_so(tmp_path: Path, reads: list[Any]) -> None:
    w = world(tmp_path, ("alpha", "stopped"))

    with pytest.raises(Conflict, match="has run no job yet"):
        container_logs(w.ledger, OWNER, "alpha")
    assert reads == []


def test_a_viewer_reads_logs_and_a_stranger_is_not_told_the_project_exists(
    tmp_path: Path, reads: list[Any]
) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    with_members(w)
    job = w.add_job("alpha", "RUNNING")

    assert container_logs(w.ledger, VIEWER, "alpha")["job_id"] == job
    with pytest.raises(NotFound, match="no project named 'alpha'"):
        container_logs(w.ledger, STRANGER, "alpha")
    assert len(reads) == 1


def test_every_role_that_may_view_may_read_logs() -> None:
    assert ALLOWED[Action.LOGS] == ALLOWED[Action.VIEW] == frozenset(Role)


@pytest.mark.parametrize("text", ["-1", "x", "1.5", "٣", "1" * 19, ""])
def test_a_query_number_that_is_not_a_whole_number_is_refused(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_number("offset", text)


@given(st.integers(min_value=0, max_value=10**17))
def test_a_whole_number_in_the_query_is_read(value: int) -> None:
    assert parse_number("offset", str(value)) == value
