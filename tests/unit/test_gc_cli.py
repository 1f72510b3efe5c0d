"""rxctl gc, admin gc, project label, reset and start --fresh against a stand-in rxd: what each
sends, and how a dry run, a failure and sizes read."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.cli.commands_gc import gc_lines, size_text
from rxslurm.cli.main import cli
from tests.support.fake_rxd import http_answer, serve, short_tmp_dir

ITEM = {"kind": "backup", "name": "overlay.img.before-reset-X", "owner": "rxalice",
        "bytes": 3 << 20, "project": "alpha"}  # fmt: skip


def call(answer: Any, *args: str) -> tuple[Result, str, dict[str, Any]]:
    """rxctl's exit and output, and the request line and body rxd got."""
    with short_tmp_dir() as folder:
        api = folder / "rxd.sock"
        server = serve(api, http_answer(answer))
        result = CliRunner().invoke(cli, ["--socket", str(api), *args])
        server.join(10)
    head, _, body = server.received.partition(b"\r\n\r\n")
    line = head.split(b"\r\n")[0].decode()
    return result, line, json.loads(body) if body else {}


def test_gc_sends_the_dry_run_and_the_age_in_seconds_and_lists_with_sizes() -> None:
    answer = {"dry_run": True, "items": [ITEM], "bytes": 3 << 20, "failed": []}
    result, line, body = call(answer, "gc", "--dry-run", "--older-than", "7d")
    assert line.startswith("POST /v1/gc ")
    assert body == {"dry_run": True, "older_than_s": 7 * 86400}
    assert result.exit_code == 0, result.output
    assert "overlay.img.before-reset-X" in result.output and "3.0 MiB" in result.output
    assert "1 item(s); would free 3.0 MiB" in result.output


def test_admin_gc_defaults_to_thirty_days_and_exits_1_when_something_failed() -> None:
    failed = {"project": "beta", "kind": "container", "error": "its folder: Permission denied"}
    answer = {"dry_run": False, "items": [ITEM], "bytes": 3 << 20, "failed": [failed]}
    result, line, body = call(answer, "admin", "gc")
    assert line.startswith("POST /v1/admin/gc ")
    assert body == {"dry_run": False, "older_than_s": 30 * 86400}
    assert result.exit_code == 1
    assert "freed 3.0 MiB" in result.output
    assert "not collected (beta): its folder: Permission denied" in result.output


def test_a_bad_age_is_refused_before_anything_is_sent() -> None:
    result = CliRunner().invoke(cli, ["--socket", "/nonexistent", "gc", "--older-than", "soon"])
    assert result.exit_code == 2 and "is not a duration" in result.output


def test_project_label_sends_pairs_and_removals() -> None:
    answer = {"name": "alpha", "labels": {"keep": "true"}}
    result, line, body = call(
        answer, "project", "label", "--project", "alpha", "keep=true", "--rm", "team"
    )
    assert line.startswith("POST /v1/projects/alpha/labels ")
    assert body == {"set": {"keep": "true"}, "remove": ["team"]}
    assert result.output.strip() == "Project alpha: labels keep=true"


@pytest.mark.parametrize("args", [["novalue"], []])
def test_project_label_needs_key_value_pairs_or_a_removal(args: list[str]) -> None:
    result = CliRunner().invoke(
        cli, ["--socket", "/nonexistent", "project", "label", "--project", "alpha", *args]
    )
    assert result.exit_code == 2


def test_list_filters_by_label_in_the_query() -> None:
    _, line, _ = call({"containers": []}, "list", "--label", "team=cv", "--label", "keep=true")
    assert line.startswith("GET /v1/containers?label=team%3Dcv&label=keep%3Dtrue ")


def test_reset_and_a_fresh_start_reach_their_routes() -> None:
    answer = {"project": "alpha", "backup": "/s/rx-alpha/overlay.img.before-reset-X",
              "backup_bytes": 1}  # fmt: skip
    result, line, _ = call(answer, "reset", "--project", "alpha")
    assert line.startswith("POST /v1/projects/alpha/reset ")
    assert "overlay.img.before-reset-X" in result.output
    status = {"project": "alpha", "state": "starting", "reason": None}
    _, line, _ = call(status, "start", "--project", "alpha", "--fresh")
    assert line.startswith("POST /v1/projects/alpha/start?fresh=1 ")


def test_nothing_to_collect_says_so() -> None:
    assert gc_lines({"dry_run": True, "items": [], "bytes": 0, "failed": []}) == [
        "nothing to collect"
    ]


@given(st.integers(0, 1 << 60))
def test_a_size_is_at_most_a_few_digits_and_a_unit(n: int) -> None:
    number, unit = size_text(n).split(" ")
    assert unit in ("B", "KiB", "MiB", "GiB", "TiB")
    assert float(number) < 1024 or unit == "TiB"
