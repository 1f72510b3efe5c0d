"""The exec agent (rxslurm.agent) on this host, with an in-memory MUNGE: who it lets in, and how
it runs a command (streams, exit status, Ctrl-C to the command's trap, a terminal, a caller who
hangs up). The cluster tier runs it in real containers (tests/test_exec_e2e.py,
tests/test_agent_e2e.py)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rxslurm.agent.auth import Identity
from rxslurm.agent.main import Agent, listen
from rxslurm.protocol import agent_wire
from rxslurm.protocol.agent_wire import (
    BIND_METHOD,
    FrameReader,
    bind_target,
    control,
    frame,
    proof,
)
from rxslurm.protocol.exec_wire import CONTROL, STDERR, STDIN, STDOUT, decode
from rxslurm.slurm import request_binding
from rxslurm.slurm.munge import Decoded, Err, MungeError
from tests.support.cluster import processes_with, wait_for

JOB = 4242
OWNER = 2001
OTHER = 3101
KEY = bytes(range(32))


@dataclass
class FakeMunge:
    """Credentials that decode once, to the uid that made them (as munged's replay cache)."""

    issued: dict[str, tuple[bytes, int]] = field(default_factory=dict)

    def encode(self, payload: bytes, uid: int) -> str:
        credential = "MUNGE:" + secrets.token_hex(8)
        self.issued[credential] = (payload, uid)
        return credential

    def decode(self, credential: str) -> Decoded:
        if credential not in self.issued:
            raise MungeError(Err.CRED_INVALID, "Invalid credential")
        payload, uid = self.issued.pop(credential)
        self.issued[credential + "#used"] = (payload, uid)
        return Decoded(payload=payload, uid=uid, gid=uid, encoded_at=0, ttl=300)


@pytest.fixture
def munge() -> FakeMunge:
    return FakeMunge()


@pytest.fixture
def agent(munge: FakeMunge) -> Iterator[tuple[str, int]]:
    me = Identity(
        job_id=JOB,
        uid=OWNER,
        key=KEY,
        decode=munge.decode,
        encode=lambda payload: munge.encode(payload, OWNER),
    )
    listener = listen("127.0.0.1")
    server = Agent(me, listener)
    server.report = lambda line: None  # type: ignore[method-assign]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield listener.getsockname()
    finally:
        listener.close()


class Conn:
    """A raw client of the agent's protocol."""

    def __init__(self, address: tuple[str, int], hello: bytes | None = None) -> None:
        self.sock = socket.create_connection(address, timeout=30)
        self.reader = FrameReader()
        self.frames: list[tuple[bytes, bytes]] = []
        self.nonce = secrets.token_hex(16)
        self.sock.sendall(control({"hello": 1, "nonce": self.nonce}) if hello is None else hello)
        self.hello = self.control()

    def next_frame(self) -> tuple[bytes, bytes]:
        while not self.frames:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the agent closed the connection")
            self.frames += self.reader.feed(data)
        return self.frames.pop(0)

    def control(self) -> dict[str, Any]:
        while True:
            channel, payload = self.next_frame()
            if channel == CONTROL:
                return decode(payload)

    def send_request(
        self,
        munge: FakeMunge,
        request: dict[str, Any],
        *,
        uid: int = OWNER,
        ticket: str | None = None,
        nonce: str | None = None,
        body: bytes | None = None,
        credential: str | None = None,
    ) -> bytes:
        sent = json.dumps({"ticket": ticket, "request": request}).encode()
        binding = request_binding.bind(
            BIND_METHOD, bind_target(JOB), sent, uid, nonce=nonce or self.hello["nonce"]
        )
        if credential is None:
            credential = munge.encode(binding.to_payload(), uid)
        self.sock.sendall(
            control({"credential": credential}) + frame(CONTROL, body if body else sent)
        )
        return credential.encode()

    def finish(self) -> tuple[bytes, bytes, dict[str, Any]]:
        """Everything up to the last message: stdout, stderr, and that message."""
        out, err = b"", b""
        while True:
            channel, payload = self.next_frame()
            if channel == STDOUT:
                out += payload
            elif channel == STDERR:
                err += payload
            elif channel == CONTROL:
                message = decode(payload)
                if "exit" in message or "error" in message:
                    return out, err, message

    def close(self) -> None:
        self.sock.close()


def run(agent: tuple[str, int], munge: FakeMunge, request: dict[str, Any], **kw: Any) -> Any:
    conn = Conn(agent)
    try:
        conn.send_request(munge, request, **kw)
        return conn.finish()
    finally:
        conn.close()


def command(*argv: str, **extra: Any) -> dict[str, Any]:
    return {"argv": list(argv), "cwd": "/", **extra}


# -- running commands ------------------------------------------------------------------------


def test_the_hello_names_the_job_a_fresh_nonce_and_proves_the_agent(agent, munge) -> None:
    first, second = Conn(agent), Conn(agent)
    try:
        assert first.hello["agent"] == second.hello["agent"] == 1
        assert first.hello["job"] == JOB
        assert first.hello["nonce"] != second.hello["nonce"]
        # The agent's own credential (the runtime user's) over both nonces and the job.
        proved = munge.decode(first.hello["credential"])
        assert proved.uid == OWNER
        assert proved.payload == proof(JOB, first.nonce, first.hello["nonce"])
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize(
    "hello",
    [control({"hello": 1}), control({"hello": 1, "nonce": "x" * 32}), frame(STDIN, b"x")],
)
def test_a_client_without_a_nonce_of_its_own_gets_no_proof(agent, munge, hello) -> None:
    conn = Conn(agent, hello=hello)
    try:
        assert "credential" not in conn.hello and conn.hello["error"].startswith("refused: ")
    finally:
        conn.close()


def test_a_command_gets_both_streams_and_its_exit_status(agent, munge) -> None:
    script = "echo out; echo err >&2; exit 3"
    out, err, last = run(agent, munge, command("sh", "-c", script))
    assert (out, err, last) == (b"out\n", b"err\n", {"exit": 3})


def test_argv_is_passed_word_for_word(agent, munge) -> None:
    words = ["a b", "$(id)", "; ls /", "it's", "*", "ünï"]
    out, _, last = run(agent, munge, command("printf", "[%s]\\n", *words))
    assert out.decode() == "".join(f"[{w}]\n" for w in words) and last == {"exit": 0}


def test_a_command_runs_in_the_folder_asked(agent, munge, tmp_path: Path) -> None:
    out, _, _ = run(agent, munge, {"argv": ["pwd"], "cwd": str(tmp_path)})
    assert out.decode().strip() == str(tmp_path)
    # A folder that is not there: as `apptainer exec --pwd` says it, with its status.
    missing = tmp_path / "none"
    _, err, last = run(agent, munge, {"argv": ["pwd"], "cwd": str(missing)})
    assert err.decode() == (
        f"FATAL:   failed to set working directory: chdir {missing}: no such file or directory\n"
    )
    assert last == {"exit": 255}


def test_a_program_that_cannot_start_fails_as_apptainer_says(agent, munge) -> None:
    _, err, last = run(agent, munge, command("no-such-program-here"))
    assert err == b'FATAL:   "no-such-program-here": executable file not found in $PATH\n'
    assert last == {"exit": 255}
    _, err, last = run(agent, munge, command("./not/here"))
    assert (err, last) == (b"FATAL:   stat /not/here: no such file or directory\n", {"exit": 255})
    _, err, last = run(agent, munge, command("/etc/passwd"))
    assert (err, last) == (b"FATAL:   permission denied\n", {"exit": 255})


def test_a_command_killed_by_a_signal_ends_with_128_plus_n(agent, munge) -> None:
    _, _, last = run(agent, munge, command("sh", "-c", "kill -TERM $$"))
    assert last == {"exit": 128 + signal.SIGTERM}


def test_stdin_reaches_the_command_and_its_end_closes_it(agent, munge) -> None:
    conn = Conn(agent)
    try:
        conn.send_request(munge, command("sh", "-c", "cat; echo done"))
        assert conn.control() == {"started": True}
        conn.sock.sendall(frame(STDIN, b"fed\n") + frame(STDIN, b""))
        assert conn.finish() == (b"fed\ndone\n", b"", {"exit": 0})
    finally:
        conn.close()


@pytest.mark.parametrize("disposition", ["ignored", "caught", "default"])
def test_a_command_starts_with_sigint_and_sigquit_at_their_defaults(
    agent, munge, disposition
) -> None:
    """Whatever the agent has them at: an agent started in the background of a
    non-interactive shell inherits both ignored (they would stay so across exec), the agent's
    own main catches both (exec resets them)."""
    handler = {"ignored": signal.SIG_IGN, "caught": lambda *a: None, "default": signal.SIG_DFL}
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGQUIT)}
    try:
        for signum in saved:
            signal.signal(signum, handler[disposition])
        out, _, last = run(agent, munge, command("grep", "^SigIgn:", "/proc/self/status"))
    finally:
        for signum, previous in saved.items():
            signal.signal(signum, previous)
    ignored = int(out.split()[1], 16)
    assert last == {"exit": 0}
    assert not ignored & (1 << (signal.SIGINT - 1) | 1 << (signal.SIGQUIT - 1))


def test_ctrl_c_reaches_the_commands_trap_once(agent, munge) -> None:
    marker = f"{os.getpid()}{secrets.randbelow(10**6)}"
    script = (
        f"trap 'echo trapped; kill $!; exit 42' INT; sleep {marker} & wait; echo not-interrupted"
    )
    conn = Conn(agent)
    try:
        conn.send_request(munge, command("sh", "-c", script))
        assert conn.control() == {"started": True}
        sleeper = wait_for(
            lambda: processes_with(f"sleep\0{marker}\0"), timeout=10, what="the command"
        )[0]
        # The shell must be blocked in `wait` first: a SIGINT that comes between its fork of
        # `sleep` and its wait is one a loaded machine can lose to the shell's own race.
        shell = int(Path(f"/proc/{sleeper}/stat").read_text().rsplit(")", 1)[1].split()[1])
        wait_for(lambda: _sleeping(shell), timeout=10, what="the shell to wait")
        conn.sock.sendall(control({"signal": "INT"}))
        assert conn.finish() == (b"trapped\n", b"", {"exit": 42})
    finally:
        conn.close()
    wait_for(lambda: not processes_with(f"sleep\0{marker}\0"), timeout=10, what="its child to end")


def test_a_caller_who_hangs_up_ends_the_command(agent, munge) -> None:
    marker = f"{os.getpid()}{secrets.randbelow(10**6)}"
    conn = Conn(agent)
    conn.send_request(munge, command("sh", "-c", f"sleep {marker}; true"))
    assert conn.control() == {"started": True}
    wait_for(lambda: processes_with(f"sleep\0{marker}\0"), timeout=10, what="the command")
    conn.close()
    wait_for(
        lambda: not processes_with(f"sleep\0{marker}\0"), timeout=10, what="the command to end"
    )


def test_a_terminal_session_gets_a_terminal_of_the_size_asked(agent, munge) -> None:
    request = command("sh", "-c", "tty; stty size; exit 5", tty=True, winsize=[30, 100])
    out, _, last = run(agent, munge, request)
    lines = out.decode().splitlines()
    assert lines[0].startswith("/dev/pts/") and lines[1] == "30 100", lines
    assert last == {"exit": 5}


def _sleeping(pid: int) -> bool:
    """Whether the process is blocked in the kernel (state S) waiting for its children."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        wchan = Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False
    # (a compiler may suffix the symbol: "sigsuspend.isra.0")
    return state == "S" and wchan.split(".")[0] in ("do_wait", "sigsuspend", "do_sigsuspend")


# -- who gets in -----------------------------------------------------------------------------


def refusal(agent: tuple[str, int], munge: FakeMunge, **kw: Any) -> str:
    _, _, last = run(agent, munge, command("true"), **kw)
    assert "error" in last, last
    return str(last["error"])


def ticket(uid: int, job: int = JOB, key: bytes = KEY, now: float | None = None) -> str:
    return agent_wire.sign(key, uid, job, now=time.time() if now is None else now)


def test_the_runtime_user_needs_no_ticket(agent, munge) -> None:
    assert run(agent, munge, command("true"))[2] == {"exit": 0}


def test_another_user_needs_rxds_ticket_for_them(agent, munge) -> None:
    assert refusal(agent, munge, uid=OTHER) == (
        f"refused: uid {OTHER} is not this container's user and has no ticket"
    )
    assert run(agent, munge, command("true"), uid=OTHER, ticket=ticket(OTHER))[2] == {"exit": 0}


@pytest.mark.parametrize(
    ("made", "reason"),
    [
        (lambda: ticket(OWNER + 7), "the ticket was given to another user"),
        (lambda: ticket(OTHER, job=JOB + 1), "the ticket is for another job"),
        (lambda: ticket(OTHER, key=bytes(32)), "the ticket is not rxd's"),
        (lambda: ticket(OTHER, now=time.time() - 3600), "the ticket has expired"),
        (lambda: "t1.junk", "the ticket is malformed"),
    ],
)
def test_a_ticket_not_made_for_this_caller_and_job_by_rxd_is_refused(
    agent, munge, made, reason
) -> None:
    assert refusal(agent, munge, uid=OTHER, ticket=made()) == f"refused: {reason}"


def test_a_credential_is_good_for_one_connection_only(agent, munge) -> None:
    conn = Conn(agent)
    credential = conn.send_request(munge, command("true"))
    assert conn.finish()[2] == {"exit": 0}
    conn.close()
    # The same credential again, on a new connection: MUNGE says replayed (here: unknown).
    assert refusal(agent, munge, credential=credential.decode()).startswith(
        "refused: MUNGE refused the credential"
    )


def test_a_credential_made_for_another_nonce_or_body_is_refused(agent, munge) -> None:
    assert refusal(agent, munge, nonce="0" * 32) == (
        "refused: the credential was made for another connection"
    )
    altered = json.dumps({"ticket": None, "request": command("id")}).encode()
    assert refusal(agent, munge, body=altered) == (
        "refused: the request does not match its credential (altered, or moved)"
    )


def test_a_payload_naming_another_uid_than_munges_is_refused(agent, munge) -> None:
    conn = Conn(agent)
    try:
        body = json.dumps({"ticket": None, "request": command("true")}).encode()
        binding = request_binding.bind(
            BIND_METHOD, bind_target(JOB), body, OWNER, nonce=conn.hello["nonce"]
        )
        # OTHER's credential, claiming to be OWNER's.
        credential = munge.encode(binding.to_payload(), OTHER)
        conn.sock.sendall(control({"credential": credential}) + frame(CONTROL, body))
        assert conn.finish()[2] == {"error": "refused: the credential's payload names another uid"}
    finally:
        conn.close()


def test_no_data_before_the_command_starts(agent, munge) -> None:
    conn = Conn(agent)
    try:
        conn.sock.sendall(frame(STDIN, b"early"))
        assert conn.finish()[2] == {"error": "refused: data before the command started"}
    finally:
        conn.close()


def test_the_holder_hears_of_the_first_session_at_once_and_of_a_burst_once_a_second(
    munge,
) -> None:
    me = Identity(
        job_id=JOB,
        uid=OWNER,
        key=KEY,
        decode=munge.decode,
        encode=lambda payload: munge.encode(payload, OWNER),
    )
    listener = listen("127.0.0.1")
    server = Agent(me, listener)
    reports: list[str] = []
    server.report = reports.append  # type: ignore[method-assign]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = listener.getsockname()
        conn = Conn(address)
        conn.send_request(munge, command("sh", "-c", "read line"))
        assert conn.control() == {"started": True}
        # The first session is reported before the command has even run on.
        assert reports == ["sessions 1"]
        for _ in range(5):
            assert run(address, munge, command("true"))[2] == {"exit": 0}
        conn.sock.sendall(frame(STDIN, b"go\n"))
        assert conn.finish()[2] == {"exit": 0}
        conn.close()
        # Twelve changes, told in a report or two: the last says none is open.
        wait_for(lambda: reports[-1] == "sessions 0", timeout=10, what="the last report")
        assert len(reports) <= 3, reports
    finally:
        listener.close()
