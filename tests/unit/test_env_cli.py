"""rxctl env, rxctl secret and exec -e against a stand-in rxd: what they send, how a secret is
read (stdin, no echo at a terminal), and bad input refused in one line before anything is sent."""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path

import pexpect
from click.testing import CliRunner

from rxslurm.cli.main import cli
from tests.support.fake_rxd import http_answer, serve, short_tmp_dir

SET = {"project": "alpha", "secret": {"name": "TOKEN", "set_by": "ada", "set_at": "x"}}


def sent(args: list[str], answer: object, stdin: str | None = None) -> tuple[bytes, str, int]:
    """(the request rxctl sent, its output, its exit status)."""
    with short_tmp_dir() as folder:
        api = folder / "rxd.sock"
        server = serve(api, http_answer(answer))
        result = CliRunner().invoke(cli, ["--socket", str(api), *args], input=stdin, env={})
        server.join(10)
        return getattr(server, "received", b""), result.output, result.exit_code


def body(request: bytes) -> dict:
    return json.loads(request.split(b"\r\n\r\n", 1)[1])


def test_secret_set_sends_stdin_without_its_final_newline_and_never_echoes_it() -> None:
    request, output, code = sent(
        ["secret", "set", "--project", "alpha", "TOKEN"], SET, stdin="two\nlines\n\n"
    )
    assert code == 0, output
    assert request.startswith(b"PUT /v1/projects/alpha/secrets/TOKEN HTTP/1.1")
    assert body(request) == {"value": "two\nlines\n"}
    assert output == "Set secret TOKEN in alpha.\n"


def test_at_a_terminal_the_secret_is_typed_without_echo() -> None:
    value = "typed-" + secrets.token_hex(8)
    with short_tmp_dir() as folder:
        api = folder / "rxd.sock"
        server = serve(api, http_answer(SET))
        child = pexpect.spawn(
            str(Path(sys.executable).with_name("rxctl")),
            ["--socket", str(api), "secret", "set", "--project", "alpha", "T"],
            encoding="utf-8",
            timeout=30,
        )
        child.expect("not shown")
        child.sendline(value)
        child.expect(pexpect.EOF)
        shown = child.before
        child.close()
        server.join(10)
    assert value not in shown
    assert body(server.received) == {"value": value}


def test_bad_names_are_one_line_and_nothing_is_sent() -> None:
    for args, code in (
        (["env", "set", "--project", "alpha", "LD_PRELOAD=/x.so"], 1),
        (["env", "set", "--project", "alpha", "NOEQUALS"], 1),
        (["secret", "set", "--project", "alpha", "SLURM_X"], 1),
        (["exec", "--project", "alpha", "-e", "9X=1", "--", "true"], 125),
    ):
        with short_tmp_dir() as folder:
            result = CliRunner().invoke(
                cli, ["--socket", str(folder / "none.sock"), *args], input="", env={}
            )
        assert result.exit_code == code, (args, result.output)
        lines = result.output.splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), (args, result.output)


def test_env_set_and_unset_send_one_change_each() -> None:
    answer = {"project": "alpha", "variables": []}
    request, _, code = sent(["env", "set", "--project", "alpha", "A=1", "B=x=y", "A=2"], answer)
    assert code == 0
    assert request.startswith(b"PATCH /v1/projects/alpha/env HTTP/1.1")
    assert body(request) == {"set": {"A": "2", "B": "x=y"}}
    request, _, code = sent(["env", "unset", "--project", "alpha", "A", "B"], answer)
    assert code == 0
    assert body(request) == {"unset": ["A", "B"]}
