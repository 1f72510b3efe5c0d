"""rxctl starts fast: `exec`, `status` and `run` run without click, http.client, email, ssl or
importlib.metadata, and the other commands import only their own module.

What is checked is which modules load, never how long it takes (bench/startup.py measures that).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.cli import fastpath
from rxslurm.cli.client import Client, _BadReply, parse_response
from rxslurm.cli.main import LAZY_COMMANDS, cli
from tests.support.fake_rxd import http_answer, serve, short_tmp_dir

# Modules that the fast path must not load, and why they were a problem.
FORBIDDEN = (
    "click",  # the command tree: a third of the old start-up
    "importlib.metadata",  # the version string, computed even without --version
    "http.client",  # pulls in email and ssl for a Unix socket
    "email",
    "ssl",
    "argparse",
    "rxslurm.cli.commands_",  # command modules other than the one run
)

# ... nor these on exec's way: `rxctl run`'s batch plan (dataclasses, and inspect under it),
# threading (libmunge's lock is _thread's), hashlib (OpenSSL; the built-in SHA-256 does).
EXEC_FORBIDDEN = ("rxslurm.protocol.batch_plan", "rxslurm.cli.batch_run", "dataclasses", "inspect")
EXEC_FORBIDDEN_EXACT = ("threading", "hashlib", "_hashlib")

STATUS = {
    "project": "alpha",
    "state": "running",
    "name": "rx-alpha",
    "image": "docker://python:3.12-slim",
    "runtime_user": "rxalice",
    "job_id": 42,
    "node": "n1",
    "gpus": 1,
    "gres": "gpu:a100:1",
    "uptime_s": 75,
    "workspace": "/srv/rxslurm/workspaces/alpha",
    "fixed_mounts": [],
}


PROBE = """
import atexit, os, sys
def report():
    sys.stderr.write("\\nMODULES " + " ".join(sorted(sys.modules)) + "\\n")
    sys.stderr.flush()
atexit.register(report)
# The fast path ends with os._exit, past atexit: report there too.
real_exit = os._exit
def reporting_exit(code):
    report()
    real_exit(code)
os._exit = reporting_exit
sys.argv = ["rxctl", *sys.argv[1:]]
from rxslurm.cli.fastpath import main
main()
"""


def rxctl(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run rxctl's entry point in a fresh interpreter; its result and the modules it loaded."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k not in ("RX_PROJECT", "RXCTL_SOCKET")},
    )
    text, _, modules = result.stderr.rpartition("\nMODULES ")
    result.stderr = text
    return result, set(modules.split())


def forbidden(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.startswith(FORBIDDEN))


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with short_tmp_dir() as folder:
        yield folder


def test_status_answers_without_the_slow_modules(sock_dir: Path) -> None:
    api = sock_dir / "rxd.sock"
    serve(api, http_answer(STATUS))
    result, modules = rxctl("--socket", str(api), "status", "--project", "alpha")
    assert result.returncode == 0, result.stderr
    assert "state         running" in result.stdout
    assert "gpus          1 (gpu:a100:1)" in result.stdout
    assert forbidden(modules) == []


def test_status_json_is_the_api_answer(sock_dir: Path) -> None:
    api = sock_dir / "rxd.sock"
    serve(api, http_answer(STATUS))
    result, _ = rxctl("--socket", str(api), "status", "--project", "alpha", "--json")
    assert json.loads(result.stdout) == STATUS


def test_exec_runs_without_the_slow_modules_and_exits_with_the_commands_status(
    sock_dir: Path,
) -> None:
    api = sock_dir / "rxd.sock"
    serve(sock_dir / "rxd-exec.sock", b'{"exit": 3}\n', exec_socket=True)
    result, modules = rxctl("--socket", str(api), "exec", "--project", "alpha", "--", "false")
    assert result.returncode == 3, result.stderr
    assert forbidden(modules) == []
    # The agent's client is loaded while rxd decides (it was offered), and still none of these.
    assert {"rxslurm.cli.agent_client", "rxslurm.slurm.munge"} <= modules
    assert sorted(m for m in modules if m.startswith(EXEC_FORBIDDEN)) == []
    assert sorted(modules & set(EXEC_FORBIDDEN_EXACT)) == []


def test_run_asks_for_the_plan_without_the_slow_modules(sock_dir: Path) -> None:
    api = sock_dir / "rxd.sock"
    error = {"error": {"code": "not_found", "message": "no project named 'beta'"}}
    served = serve(api, http_answer(error, "404 Not Found"))
    result, modules = rxctl("--socket", str(api), "run", "--project", "beta", "--", "true")
    assert served.received.startswith(b"GET /v1/projects/beta/batch-plan ")
    assert (result.returncode, result.stderr) == (125, "Error: no project named 'beta'\n")
    assert forbidden(modules) == []


def test_an_api_error_is_one_line_and_exit_1(sock_dir: Path) -> None:
    api = sock_dir / "rxd.sock"
    error = {"error": {"code": "not_found", "message": "no project named beta"}}
    serve(api, http_answer(error, "404 Not Found"))
    result, _ = rxctl("--socket", str(api), "status", "--project", "beta")
    assert (result.returncode, result.stdout, result.stderr) == (
        1,
        "",
        "Error: no project named beta\n",
    )


def test_no_daemon_is_one_line_and_exit_1(sock_dir: Path) -> None:
    result, modules = rxctl("--socket", str(sock_dir / "absent.sock"), "status", "--project", "a")
    assert result.returncode == 1
    assert (
        result.stderr == f"Error: rxd is not running (nothing listens on {sock_dir}/absent.sock)\n"
    )
    assert forbidden(modules) == []


def test_other_forms_go_to_click() -> None:
    result, modules = rxctl("status", "-h")
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: rxctl status [OPTIONS]")
    assert "click" in modules
    result, _ = rxctl("status", "--bogus")
    assert result.returncode == 2
    assert "No such option '--bogus'" in result.stderr


def test_the_command_tree_imports_only_the_command_being_run() -> None:
    probe = (
        "import sys; from rxslurm.cli.main import cli;"
        "print([m for m in sys.modules if m.startswith(('rxslurm.cli.commands_', "
        "'importlib.metadata', 'http.client'))])"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("module", sorted({v.split(":")[0] for v in LAZY_COMMANDS.values()}))
def test_each_command_module_imports_on_its_own(module: str) -> None:
    # They used to import helpers from cli.main, and so failed unless main came first.
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)


def test_lazy_commands_resolve_to_commands_of_that_name() -> None:
    ctx = click.Context(cli)
    for name in LAZY_COMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name


# -- the fast parser reads what click reads ---------------------------------------------------


def click_reading(args: list[str]) -> tuple[str | None, str, dict[str, object]]:
    ctx = cli.make_context("rxctl", list(args))
    name, command, rest = cli.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
    assert command is not None and name is not None
    params = command.make_context(name, rest, parent=ctx).params
    return ctx.params["socket_"], name, params


def fast_reading(plan: fastpath.Plan) -> tuple[str | None, str, dict[str, object]]:
    if plan.command == "status":
        return plan.socket, "status", {"project": plan.project, "json_": plan.json}
    if plan.command == "run":
        return plan.socket, "run", {"project": plan.project, "command": tuple(plan.argv)}
    return (
        plan.socket,
        "exec",
        {
            "project": plan.project,
            "no_wake": plan.no_wake,
            "cwd": plan.cwd,
            "tty": plan.tty,
            "timeout": plan.timeout,
            # The fast path runs attached commands only; --detach goes to click.
            "detach": False,
            # -e is click's alone: the fast path hands a command that has it to click.
            "env": (),
            "command": tuple(plan.argv),
        },
    )


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["status", "-P", "a", "--json"],
        ["status", "--json", "--project=a"],
        ["--socket", "/s", "status", "-Pa"],
        ["--socket=/s", "exec", "-P", "a", "--", "ls", "-l"],
        ["exec", "--no-wake", "--cwd", "/x", "-t", "python", "-c", "1"],
        ["exec", "-P", "a", "cmd", "--", "-x"],
        ["exec", "--cwd=/y", "--", "--weird"],
        ["exec", "--tty", "-P", "a", "-P", "b", "sh"],
        ["run", "--project", "a", "--", "python3", "-c", "1"],
        ["--socket", "/s", "run", "-Pa", "srun", "--", "-x"],
        ["run", "--project=a", "--", "--weird"],
    ],
)
def test_fast_parser_agrees_with_click(args: list[str]) -> None:
    plan = fastpath.parse(args)
    assert plan is not None
    assert fast_reading(plan) == click_reading(args)


WORDS = st.sampled_from(
    [
        "-p",
        "status",
        "exec",
        "run",
        "-P",
        "--project",
        "--project=x",
        "-Pq",
        "--json",
        "--no-wake",
        "-t",
        "--tty",
        "--cwd",
        "--cwd=/d",
        "--",
        "-x",
        "--help",
        "-h",
        "--socket",
        "/s",
        "ls",
        "a b",
        "",
        "--socket=/t",
        "-",
        "-tP",
        "--detach",
        "-d",
    ]
)


@given(st.lists(WORDS, max_size=8))
def test_whatever_the_fast_parser_accepts_click_reads_the_same(args: list[str]) -> None:
    plan = fastpath.parse(args)
    if plan is None:
        return
    assert fast_reading(plan) == click_reading(args)


# -- the HTTP/1.1 client --------------------------------------------------------------------------


def test_a_chunked_reply_is_reassembled() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'3\r\n{"a\r\n5;x=y\r\n": 1}\r\n0\r\n\r\n'
    )
    assert parse_response(raw) == (200, b'{"a": 1}')


@given(st.binary(max_size=300), st.integers(min_value=100, max_value=599))
def test_content_length_bounds_the_body(body: bytes, status: int) -> None:
    raw = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body + b"junk"
    assert parse_response(raw) == (status, body)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"HTTP/1.1 200 OK\r\n",
        b"SSH-2.0-x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}",
    ],
)
def test_a_reply_that_is_not_http_is_refused(raw: bytes) -> None:
    with pytest.raises(_BadReply):
        parse_response(raw)


def test_the_client_reports_a_garbled_reply_in_one_line(sock_dir: Path) -> None:
    api = sock_dir / "rxd.sock"
    serve(api, b"garbage")
    with pytest.raises(Exception) as err:
        Client(str(api), timeout=10).get("/v1/whoami")
    assert str(err.value).startswith(f"cannot reach rxd on {api}: ")
