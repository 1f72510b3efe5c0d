"""Finding 14, server side: what the holder's status file says reaches other people's terminals.

The runtime user (or anything in their container) writes `job-N.status`; its line becomes the
container's `last_error` or instance name, which `rxctl status`, `rxctl exec` and admins' lists
show to every member. rxctl escapes what it prints, but the ledger must not hold control or bidi
characters in the first place (other clients, logs, the platform read it too), nor a page of text.
The same holds for Apptainer's error lines (a failed pull's reason quotes what a registry said),
which become `last_error` too. Fast tests: no root, no Slurm.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from rxslurm.daemon.runtime.apptainer import last_fatal
from rxslurm.daemon.runtime.holder_status import (
    MAX_LINE_CHARS,
    HolderStatus,
    Kind,
    StatusReader,
    parse_status,
)
from rxslurm.daemon.text_checks import bad_character, replace_bad
from tests.hostile.fake_slurm import rig

HOSTILE = [
    "\x1b]0;owned\x07",  # C0: OSC retitles the terminal
    "\x9b2J",  # C1: CSI, clears the screen on terminals that take 8-bit controls
    "\u202egnp.exe",  # bidi override: reads as "exe.png"
    "\u2066x\u2069",  # bidi isolates
    "a\u2028b",  # line separator
    "tab\there",
    "\x7f",
]


def test_every_hostile_character_becomes_a_question_mark() -> None:
    for text in HOSTILE:
        got = parse_status(f"error: {text} gone\n".encode())
        assert got.kind == Kind.LINE
        assert bad_character(got.text) is None, (text, got.text)
        assert "?" in got.text


def test_plain_unicode_in_an_error_is_kept() -> None:
    got = parse_status("error: Datei nicht gefunden: /data/ünïcødé 数据\n".encode())
    assert got.text == "error: Datei nicht gefunden: /data/ünïcødé 数据"


def test_a_long_line_is_cut_and_says_so() -> None:
    got = parse_status(b"error: " + b"x" * 4000)
    assert got.kind == Kind.LINE
    assert len(got.text) <= MAX_LINE_CHARS
    assert got.text.endswith("more characters)")


@given(st.binary(max_size=4096))
def test_no_bytes_make_a_line_with_unsafe_text_or_too_long(data: bytes) -> None:
    got = parse_status(data)
    assert bad_character(got.text) is None
    assert len(got.text) <= MAX_LINE_CHARS


@given(st.text(max_size=300))
def test_replace_bad_leaves_nothing_check_text_would_refuse(text: str) -> None:
    cleaned = replace_bad(text)
    assert bad_character(cleaned) is None
    assert len(cleaned) == len(text)
    if bad_character(text) is None:
        assert cleaned == text


def test_the_reconciler_stores_a_clean_last_error_and_instance(tmp_path: Path) -> None:
    lines = {
        "/err": "error: \x1b[2J\u202eboom\x9b",
        "/run": "running rx-\u202eb\x1b[31m",
    }

    def read_file(state_dir: str, job_id: int, uid: int) -> HolderStatus:
        return parse_status(lines[state_dir].encode())

    r = rig(
        tmp_path,
        {"name": "rx-a", "state": "starting", "job_id": 10, "state_dir": "/err"},
        {"name": "rx-b", "state": "starting", "job_id": 11, "state_dir": "/run"},
    )
    r.reconciler.service.runtime.status_reader = StatusReader(timeout_s=5, read=read_file)
    r.slurm.add(10, "rxalice", "rx-a", 1, state="RUNNING", reason="None")
    r.slurm.add(11, "rxalice", "rx-b", 2, state="RUNNING", reason="None")
    assert r.reconciler.reconcile_once().ok
    failed, running = r.container(1), r.container(2)
    assert failed["state"] == "error"
    assert failed["last_error"] == "?[2J?boom?"
    assert running["state"] == "running"
    assert running["instance"] == "rx-?b?[31m"


def test_apptainers_fatal_line_is_stored_clean_and_bounded() -> None:
    output = "INFO: pulling\nFATAL: registry said: \x1b]8;;http://x\x07click\u202e " + "y" * 5000
    reason = last_fatal(output)
    assert bad_character(reason) is None
    assert reason.startswith("registry said: ?]8;;http://x?click? yyy")
    assert len(reason) <= MAX_LINE_CHARS


def test_apptainers_last_line_is_cleaned_without_a_fatal_line() -> None:
    assert last_fatal("one\n\x9b31mtwo\n") == "?31mtwo"
    assert last_fatal("") == "no output"
