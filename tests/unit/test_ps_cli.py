"""`rxctl ps`, `rxctl kill`, `rxctl exec --detach` and `rxctl logs --exec` without rxd: the
requests they make, the table and the lines they print, and usage errors that send nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from rxslurm.cli import commands_ps, session
from rxslurm.cli.commands_exec import exec_
from rxslurm.cli.commands_logs import logs
from rxslurm.cli.commands_ps import kill, ps


class FakeClient:
    """Answers GET and POST from a table of routes, and records every request."""

    door = None
    path = "/nowhere/rxd.sock"

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, str, dict[str, Any] | None]] = []

    def get(self, route: str) -> Any:
        self.asked.append(("GET", route, None))
        return self.answers[route]

    def post(self, route: str, body: dict[str, Any] | None = None) -> Any:
        self.asked.append(("POST", route, body))
        return self.answers[route]


def row(**values: Any) -> dict[str, Any]:
    base = {
        "id": "3f2a9c1e",
        "kind": "detached",
        "started_by": "rxalice",
        "argv": ["python", "train.py", "--name", "a b"],
        "started_at": "2026-12-01T00:40:02.123Z",
        "state": "running",
        "ended_at": None,
        "exit_code": None,
        "step_id": "142.3",
        "job_id": 142,
        "signalled": None,
    }
    return {**base, **values}


SESSIONS = "/v1/projects/alpha/commands"
LISTED = {
    "project": "alpha",
    "steps_known": True,
    "sessions": [
        row(),
        row(id="0000000a", state="ended", exit_code=3, step_id=None, argv=["false"]),
        row(id="0000000b", state="ended", signalled="TERM", step_id=None, argv=["sleep", "9"]),
        row(id="c0ffee00", kind="shell", started_by="rxbob", argv=[], step_id="142.4"),
    ],
}


def test_ps_shows_each_session_with_its_state_and_step() -> None:
    client = FakeClient({SESSIONS: LISTED})

    result = CliRunner().invoke(ps, ["--project", "alpha"], obj=client)

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == [
        "ID",
        "KIND",
        "STARTED",
        "BY",
        "STARTED",
        "STATE",
        "STEP",
        "COMMAND",
    ]
    assert lines[1].split()[:2] == ["3f2a9c1e", "detached"]
    assert lines[1].endswith("python train.py --name 'a b'")
    assert "2026-12-01 00:40:02Z" in lines[1] and "142.3" in lines[1]
    assert "exited 3" in lines[2]
    assert "ended (sent TERM)" in lines[3]
    assert lines[4].split()[:3] == ["c0ffee00", "shell", "rxbob"]
    assert client.asked == [("GET", SESSIONS, None)]


def test_ps_json_is_rxds_answer_and_columns_can_be_chosen() -> None:
    client = FakeClient({SESSIONS: LISTED})

    as_json = CliRunner().invoke(ps, ["--project", "alpha", "--json"], obj=client)
    picked = CliRunner().invoke(
        ps, ["--project", "alpha", "--noheader", "--format", "id,state"], obj=client
    )

    assert json.loads(as_json.output) == LISTED
    assert picked.output.splitlines()[0].split() == ["3f2a9c1e", "running"]


def test_ps_says_when_slurm_did_not_answer_and_when_nothing_runs() -> None:
    client = FakeClient({SESSIONS: {"project": "alpha", "steps_known": False, "sessions": []}})

    result = CliRunner().invoke(ps, ["--project", "alpha"], obj=client)

    assert "note: Slurm did not answer; steps are as last recorded" in result.output
    assert "nothing runs in the container" in result.output


def test_kill_sends_the_signal_asked_for_and_says_what_it_did() -> None:
    route = "/v1/projects/alpha/commands/3f2a9c1e/signal"
    client = FakeClient({route: row(signalled="INT")})

    result = CliRunner().invoke(
        kill, ["--project", "alpha", "--signal", "int", "3f2a9c1e"], obj=client
    )

    assert result.exit_code == 0, result.output
    assert result.output == "sent INT to 3f2a9c1e (step 142.3)\n"
    assert client.asked == [("POST", route, {"signal": "INT"})]


def test_kill_refuses_a_signal_it_does_not_send_and_sends_nothing() -> None:
    client = FakeClient({})

    result = CliRunner().invoke(
        kill, ["--project", "alpha", "--signal", "STOP", "3f2a9c1e"], obj=client
    )

    assert result.exit_code == 2 and client.asked == []


def test_exec_detach_wakes_waits_then_starts_and_prints_the_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = FakeClient({"/v1/projects/alpha/start": {"project": "alpha"}, SESSIONS: row()})
    waited: list[dict[str, Any]] = []
    monkeypatch.setattr(
        session, "run_session", lambda c, project, request: waited.append(request) or 0
    )

    result = CliRunner().invoke(
        exec_,
        ["--project", "alpha", "--timeout", "5m", "--detach", "--", "python", "-c", "1"],
        obj=client,
    )

    assert result.exit_code == 0, result.output
    assert result.stdout == "3f2a9c1e\n"
    assert "rxctl logs --project alpha --exec 3f2a9c1e -f" in result.stderr
    assert waited == [{"wait": True, "timeout": 300}]
    assert client.asked == [
        ("POST", "/v1/projects/alpha/start", None),
        ("POST", SESSIONS, {"argv": ["python", "-c", "1"], "cwd": "/workspace"}),
    ]


def test_exec_detach_without_waking_only_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient({SESSIONS: row()})
    monkeypatch.setattr(session, "run_session", lambda *a: pytest.fail("waited"))

    result = CliRunner().invoke(
        exec_, ["--project", "alpha", "--no-wake", "--detach", "--cwd", "/tmp", "ls"], obj=client
    )

    assert result.exit_code == 0, result.output
    assert client.asked == [("POST", SESSIONS, {"argv": ["ls"], "cwd": "/tmp"})]


def test_exec_detach_with_a_terminal_is_a_usage_error_that_sends_nothing() -> None:
    client = FakeClient({})

    result = CliRunner().invoke(exec_, ["--project", "alpha", "-t", "--detach", "sh"], obj=client)

    assert result.exit_code == 125 and client.asked == []
    assert "-t and --detach cannot be used together" in result.output


def test_logs_exec_reads_the_commands_output_and_says_how_it_ended() -> None:
    route = "/v1/projects/alpha/commands/3f2a9c1e/output"
    answer = {
        "project": "alpha",
        "exec": "3f2a9c1e",
        "job_id": 142,
        "state": "ended",
        "live": False,
        "exit_code": 3,
        "text": "done\n",
        "start": 0,
        "end": 5,
        "size": 5,
        "missing": False,
    }
    client = FakeClient({route: answer})

    result = CliRunner().invoke(
        logs, ["--project", "alpha", "--exec", "3f2a9c1e", "-f"], obj=client
    )

    assert result.exit_code == 0, result.output
    assert result.stdout == "done\n"
    assert "command 3f2a9c1e exited with status 3" in result.stderr
    assert client.asked == [("GET", route, None)]


def test_logs_exec_with_job_is_a_usage_error() -> None:
    result = CliRunner().invoke(
        logs, ["--project", "alpha", "--exec", "3f2a9c1e", "--job", "4"], obj=FakeClient({})
    )
    assert result.exit_code == 2


def test_a_command_is_shown_as_a_shell_would_read_it() -> None:
    assert commands_ps.command_text(["sh", "-c", "echo $HOME; ls"]) == "sh -c 'echo $HOME; ls'"
