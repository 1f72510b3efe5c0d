"""Finding 14, client side: nothing rxd sends can drive the terminal of the person reading it.

Any project member can put escape sequences or bidi controls into what rxd stores and shows to
others (an image reference, a display name, a job's last error); rxctl prints them escaped.
"""

from __future__ import annotations

import re
import subprocess
import sys
from io import StringIO
from pathlib import Path

from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.cli import render
from rxslurm.cli.main import cli
from rxslurm.cli.session import WaitLine
from tests.support.fake_rxd import http_answer, serve, short_tmp_dir

# An OSC title change, a screen clear, a bell, a CSI in its one-byte C1 form, DEL, a carriage
# return that hides what came before, and the bidi controls of "Trojan Source".
HOSTILE = "/x\x1b]0;owned\x07\x1b[2J\x9b31m\x7fdone\rok \u202eevil\u2066x\u2069\u2028y"
TERMINAL_ACTS_ON = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f"  # C0 but newline, DEL, C1
    "\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]"  # bidi controls, line separators
)


def test_safe_shows_controls_and_bidi_escaped() -> None:
    assert render.safe(HOSTILE) == (
        "/x\\x1b]0;owned\\x07\\x1b[2J\\x9b31m\\x7fdone\\x0dok \\u202eevil\\u2066x\\u2069\\u2028y"
    )
    assert render.safe("a\nb\tc") == "a\\x0ab\\x09c"
    assert render.safe_text("a\nb\x1b") == "a\nb\\x1b"


def test_ordinary_text_is_left_alone() -> None:
    text = "docker://nvcr.io/nvidia/pytorch:24.05-py3 élève 中文 🚀 a-b_c"
    assert render.safe(text) == text


@given(st.text())
def test_nothing_unsafe_survives_and_escaping_twice_changes_nothing(text: str) -> None:
    once = render.safe(text)
    assert not TERMINAL_ACTS_ON.search(once) and "\n" not in once
    assert render.safe(once) == once


STATUS = {
    "project": "alpha",
    "state": "error",
    "reason": HOSTILE,
    "name": "rx-alpha",
    "image": HOSTILE,
    "runtime_user": "rxalice",
    "job_id": None,
    "node": None,
    "gpus": 1,
    "gres": "gpu:a100:1" + HOSTILE,
    "workspace": "/srv/rxslurm/workspaces/alpha" + HOSTILE,
    "fixed_mounts": [HOSTILE],
    "last_error": HOSTILE,
}

PROJECT = {
    "name": "alpha",
    "role": "viewer",
    "run_as": "bound",
    "runtime_user": "rxalice",
    "workspace": "/srv/rxslurm/workspaces/alpha",
    "container": {"state": "running", "job_id": 7, "node": "n1" + HOSTILE, "reason": HOSTILE},
    "created_at": "2026-11-30T12:00:00Z",
    "created_by": HOSTILE,
    "settings": {"image": HOSTILE},
    "effective": {"image": HOSTILE},
    "members": [{"user": HOSTILE, "role": "owner", "linux_user": HOSTILE}],
}


def shown(lines: list[str]) -> str:
    text = "\n".join(lines)
    assert not TERMINAL_ACTS_ON.search(text), text
    return text


def test_status_lines_escape_every_value() -> None:
    text = shown(render.status_lines(STATUS))
    assert len(text.splitlines()) == len(render.status_lines(STATUS))
    assert "last error    /x\\x1b]0;owned" in text


def test_project_show_escapes_settings_members_and_the_container() -> None:
    shown(render.project_lines(PROJECT))


def test_audit_events_escape_details_and_targets() -> None:
    event = {
        "at": HOSTILE,
        "actor": HOSTILE,
        "origin": "unix",
        "action": "project.settings",
        "target_type": "project",
        "target_id": HOSTILE,
        "detail": {"image": [HOSTILE, HOSTILE], HOSTILE: HOSTILE},
    }
    shown(render.event_lines([event]))


def test_the_waking_line_escapes_rxds_progress() -> None:
    stream = StringIO()
    wait = WaitLine("alpha", stream)
    wait.progress({"progress": HOSTILE})
    assert not TERMINAL_ACTS_ON.search(stream.getvalue().rstrip("\n"))


def test_click_commands_escape_answers_and_error_messages() -> None:
    with short_tmp_dir() as folder:
        api = folder / "rxd.sock"
        serve(api, http_answer(PROJECT))
        result = CliRunner().invoke(
            cli, ["--socket", str(api), "project", "show", "--project", "alpha"]
        )
        assert result.exit_code == 0, result.output
        shown([result.output.rstrip("\n")])
    with short_tmp_dir() as folder:
        api = folder / "rxd.sock"
        error = {"error": {"code": "conflict", "message": "bad " + HOSTILE}}
        serve(api, http_answer(error, "409 Conflict"))
        result = CliRunner().invoke(
            cli, ["--socket", str(api), "project", "show", "--project", "alpha"]
        )
        assert result.exit_code == 1
        assert result.output.startswith("Error: bad /x\\x1b]0;owned")
        shown([result.output.rstrip("\n")])


def test_the_fast_path_escapes_status_and_errors() -> None:
    with short_tmp_dir() as folder:
        api = folder / "rxd.sock"
        serve(api, http_answer(STATUS))
        result = fast_rxctl(api, "status", "--project", "alpha")
        assert result.returncode == 0, result.stderr
        shown([result.stdout.rstrip("\n")])
    with short_tmp_dir() as folder:
        api = folder / "rxd.sock"
        serve(api, http_answer({"error": {"code": "x", "message": HOSTILE}}, "400 Bad Request"))
        result = fast_rxctl(api, "status", "--project", "alpha")
        assert result.returncode == 1
        assert result.stderr.startswith("Error: /x\\x1b]0;owned")
        shown([result.stderr.rstrip("\n")])


def fast_rxctl(api: Path, *args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from rxslurm.cli.fastpath import main; sys.argv[0] = 'rxctl'; main()"
    return subprocess.run(
        [sys.executable, "-c", code, "--socket", str(api), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
