"""rxctl image ... against a stand-in client (no daemon): what each command asks rxd, what it
prints, how it follows a build's output and when it exits 1."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rxslurm.cli import main as cli_main

Answer = dict[str, Any] | Callable[[str, str, Any], dict[str, Any]]


class FakeClient:
    """Answers requests from a table of (method, path without query) -> answer(s)."""

    calls: list[tuple[str, str, Any]] = []
    answers: dict[tuple[str, str], list[Answer]] = {}

    def __init__(self, socket: str | None = None, **_: Any) -> None:
        pass

    def request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        FakeClient.calls.append((method, path, body))
        queue = FakeClient.answers[(method, path.split("?", 1)[0])]
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        return answer(method, path, body) if callable(answer) else dict(answer)

    def get(self, path: str) -> dict[str, Any]:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> dict[str, Any]:
        return self.request("POST", path, body)


@pytest.fixture
def rxctl(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    FakeClient.calls = []
    FakeClient.answers = {}
    monkeypatch.setattr(cli_main, "Client", FakeClient)
    monkeypatch.setattr("rxslurm.cli.commands_image_build.time.sleep", lambda s: None)

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli_main.cli, list(args), catch_exceptions=False)

    return run


BASE = "/v1/projects/alpha"
CHECK_OK = {"ok": True, "problems": [], "notes": [], "base": "docker://alpine"}
CHECK_BAD = {
    "ok": False,
    "problems": [{"line": 3, "message": "unknown instruction FOO"}],
    "notes": [],
    "base": "",
}


def piece(text: str, start: int, size: int, state: str, job: int | None = 7) -> dict[str, Any]:
    end = start + len(text.encode())
    return {"project": "alpha", "id": 2, "state": state, "job_id": job, "text": text,
            "start": start, "end": end, "size": size, "missing": False}  # fmt: skip


def test_follow_asks_from_each_end_until_the_build_ends(rxctl: Callable[..., Any]) -> None:
    FakeClient.answers[("GET", f"{BASE}/image-builds/2/logs")] = [
        piece("", 0, 0, "queued", job=None),
        piece("one\n", 0, 4, "building"),
        piece("two\n", 4, 8, "building"),
        piece("", 8, 8, "succeeded"),
    ]
    result = rxctl("image", "logs", "--project", "alpha", "-f", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout == "one\ntwo\n"
    asked = [path for _, path, _ in FakeClient.calls]
    assert asked == [
        f"{BASE}/image-builds/2/logs",
        f"{BASE}/image-builds/2/logs",
        f"{BASE}/image-builds/2/logs?offset=4",
        f"{BASE}/image-builds/2/logs?offset=8",
    ]
    assert "build 2 is succeeded" in result.stderr


def test_a_file_is_read_by_rxctl_and_sent_as_text_with_its_kind(
    rxctl: Callable[..., Any], tmp_path: Path
) -> None:
    (tmp_path / "Dockerfile").write_text("FROM alpine\nFOO x\nBAR y\n")
    (tmp_path / "ignore").write_text("*.log\n")
    FakeClient.answers[("POST", f"{BASE}/image-drafts")] = [
        {"name": "main", "kind": "dockerfile", "check": CHECK_BAD}
    ]
    result = rxctl("image", "draft", "create", "--project", "alpha", "main", "--file",
                   str(tmp_path / "Dockerfile"), "--context", "app", "--ignore-file",
                   str(tmp_path / "ignore"))  # fmt: skip
    assert result.exit_code == 1
    assert FakeClient.calls[0][2] == {
        "name": "main",
        "text": "FROM alpine\nFOO x\nBAR y\n",
        "kind": "dockerfile",
        "context": "app",
        "ignore": "*.log\n",
    }
    assert result.stdout == "Created draft main of alpha (dockerfile).\n"
    assert result.stderr == "main:3: unknown instruction FOO\n"


def test_validate_a_file_or_a_draft_says_ok_or_exits_1(
    rxctl: Callable[..., Any], tmp_path: Path
) -> None:
    (tmp_path / "app.def").write_text("Bootstrap: docker\nFrom: alpine\n")
    FakeClient.answers[("POST", f"{BASE}/image-draft-check")] = [{"check": CHECK_OK}]
    result = rxctl("image", "draft", "validate", "--project", "alpha", "--file",
                   str(tmp_path / "app.def"))  # fmt: skip
    assert result.exit_code == 0 and result.stdout.endswith(": ok (from docker://alpine)\n")
    assert FakeClient.calls[0][2]["kind"] == "definition"
    FakeClient.answers[("POST", f"{BASE}/image-drafts/main/validate")] = [{"check": CHECK_BAD}]
    result = rxctl("image", "draft", "validate", "--project", "alpha", "main")
    assert result.exit_code == 1 and result.stderr == "main:3: unknown instruction FOO\n"
    unsure = tmp_path / "recipe.txt"
    unsure.write_text("hello\n")
    result = rxctl("image", "draft", "validate", "--project", "alpha", "--file", str(unsure))
    assert result.exit_code == 1 and "give --kind" in result.stderr
    result = rxctl("image", "draft", "validate", "--project", "alpha")
    assert result.exit_code == 2 and "give a DRAFT or --file FILE" in result.stderr


def test_build_sends_only_what_was_given_with_sbatch_units(rxctl: Callable[..., Any]) -> None:
    FakeClient.answers[("POST", f"{BASE}/image-builds")] = [
        {"id": 4, "name": "py", "state": "queued", "job_id": 99}
    ]
    result = rxctl("image", "build", "--project", "alpha", "main", "--name", "py", "--mem", "8G",
                   "--time", "1:30:00")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert FakeClient.calls[0][2] == {
        "draft": "main", "name": "py", "mem_mb": 8192, "time_limit_min": 90
    }  # fmt: skip
    assert result.stdout.splitlines() == [
        "Build 4 of image py is queued as job 99.",
        "Follow it with: rxctl image logs --project alpha -f 4",
    ]


def test_project_set_dev_mode_puts_the_switch(rxctl: Callable[..., Any]) -> None:
    FakeClient.answers[("PUT", f"{BASE}/dev-mode")] = [{"name": "alpha", "dev_mode": True}]
    result = rxctl("project", "set", "--project", "alpha", "--dev-mode", "on")
    assert result.exit_code == 0 and result.stdout == "Project alpha: dev mode on.\n"
    assert FakeClient.calls == [("PUT", f"{BASE}/dev-mode", {"dev_mode": True})]
