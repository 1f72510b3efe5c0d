"""How rxctl and rxd choose the exec agent (docs/exec.md, "The agent"): rxd names the agent with a
ticket when the holder says it runs, rxctl uses it and falls back to the step path when it does
not answer, RXSLURM_EXEC_PATH forces one way; the files rxd reads of the agent."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rxslurm.cli import agent_client, exec_client
from rxslurm.cli.client import Client
from rxslurm.cli.session import run_session
from rxslurm.daemon.api.peercred import Caller
from rxslurm.daemon.containers import service as containers
from rxslurm.daemon.errors import BadRequest
from rxslurm.daemon.exec.server import ExecRequest, Session, receive_request
from rxslurm.daemon.runtime.agent_files import AgentFiles
from rxslurm.protocol import agent_wire
from rxslurm.protocol.agent_wire import Endpoint, FrameReader, control, frame, proof
from rxslurm.protocol.exec_wire import STDERR, STDOUT, encode
from rxslurm.slurm import munge
from rxslurm.slurm.runas import RunAs
from tests.support.fakes import FakeRuntime

Script = Callable[[socket.socket, dict[str, Any], list[int]], None]


def serve_sessions(path: str, scripts: list[Script]) -> threading.Thread:
    """An exec socket that plays one script per connection, in order."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)

    def serve() -> None:
        with listener:
            for script in scripts:
                conn, _ = listener.accept()
                with conn:
                    data, fds, _ = receive_request(conn)
                    try:
                        script(conn, data, fds)
                    finally:
                        for fd in fds:
                            os.close(fd)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


GRANT = {"host": "127.0.0.1", "port": 0, "job_id": 42, "uid": 2001, "ticket": "t1.x"}


def session(tmp_path: Path, scripts: list[Script]) -> tuple[int, list[dict[str, Any]]]:
    """run_session against the scripted socket: the exit status and the requests rxd got."""
    api = tmp_path / "rxd.sock"
    seen: list[dict[str, Any]] = []

    def recording(script: Script) -> Script:
        return lambda c, r, f: (seen.append(r), script(c, r, f))[1]

    thread = serve_sessions(str(tmp_path / "rxd-exec.sock"), [recording(s) for s in scripts])
    null = os.open(os.devnull, os.O_RDONLY)
    saved = os.dup(0)
    os.dup2(null, 0)
    try:
        code = run_session(Client(str(api)), "p", {"argv": ["true"], "cwd": "/workspace"})
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(null)
    thread.join(timeout=10)
    return code, seen


def grant_then() -> Script:
    grant = {**GRANT, "port": closed_port()}
    return lambda conn, request, fds: conn.sendall(encode({"agent": grant}))


def exits(code: int) -> Script:
    return lambda conn, request, fds: conn.sendall(encode({"exit": code}))


def test_rxctl_offers_the_agent_and_falls_back_to_a_step_when_it_does_not_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RXSLURM_EXEC_PATH", raising=False)
    code, seen = session(tmp_path, [grant_then(), exits(7)])
    assert code == 7
    # The same request twice: offering the agent, then not.
    assert [r["agent"] for r in seen] == [True, False]
    assert seen[0]["argv"] == seen[1]["argv"] == ["true"]


def test_exec_path_agent_refuses_to_fall_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RXSLURM_EXEC_PATH", "agent")
    with pytest.raises(exec_client.ExecError, match="^the container's exec agent: cannot reach"):
        session(tmp_path, [grant_then()])


def test_exec_path_agent_asks_rxd_for_the_agent_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuses(conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
        conn.sendall(encode({"error": "the container of p has no exec agent"}))

    monkeypatch.setenv("RXSLURM_EXEC_PATH", "agent")
    seen: list[dict[str, Any]] = []
    with pytest.raises(exec_client.ExecError, match="^the container of p has no exec agent$"):
        session(tmp_path, [lambda c, r, f: (seen.append(r), refuses(c, r, f))[1]])
    assert seen[0]["agent"] == "only"


def test_exec_path_step_never_offers_the_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RXSLURM_EXEC_PATH", "step")
    code, seen = session(tmp_path, [exits(0)])
    assert code == 0 and "agent" not in seen[0]


@pytest.mark.parametrize("path", ["", "agent", "step"])
def test_rxctl_loads_the_agents_client_while_rxd_decides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """Loading MUNGE and the request binding overlaps rxd's answer, whenever the agent is
    offered: rxd here answers only once it has seen that happen (or given up waiting)."""
    monkeypatch.setenv("RXSLURM_EXEC_PATH", path)
    prepared = threading.Event()
    monkeypatch.setattr(agent_client, "prepare", prepared.set)
    before_answer: list[bool] = []

    def answers_once_prepared(conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
        before_answer.append(prepared.wait(timeout=0 if path == "step" else 10))
        conn.sendall(encode({"exit": 0}))

    code, _ = session(tmp_path, [answers_once_prepared])
    assert code == 0
    assert before_answer == [path != "step"]


# -- rxd's side ------------------------------------------------------------------------------


def test_the_request_may_offer_the_agent() -> None:
    assert ExecRequest.parse({"project": "a", "argv": ["x"]}).agent is False
    offered = ExecRequest.parse({"project": "a", "argv": ["x"], "agent": True})
    assert (offered.agent, offered.agent_only) == (True, False)
    only = ExecRequest.parse({"project": "a", "argv": ["x"], "agent": "only"})
    assert (only.agent, only.agent_only) == (True, True)
    for bad in (1, "yes", None):
        with pytest.raises(BadRequest, match='agent must be true, false or "only"'):
            ExecRequest.parse({"project": "a", "argv": ["x"], "agent": bad})


TARGET = containers.ExecTarget(
    container_id=7,
    job_id=42,
    node="n1",
    instance="rx-alpha-42",
    state_dir="/srv/c/rx-alpha",
    runas=RunAs("owner", 2001, 2001, (2001,)),
)


def grant_for(runtime: FakeRuntime, uid: int) -> dict[str, Any] | None:
    session = Session.__new__(Session)
    session.daemon = SimpleNamespace(containers=SimpleNamespace(runtime=runtime))  # type: ignore[assignment]
    return session.agent_grant(TARGET, Caller(pid=1, uid=uid, gid=uid, user="caller", groups=()))


def test_rxd_names_the_agent_with_a_ticket_for_the_caller_and_this_job_only() -> None:
    runtime = FakeRuntime()
    assert grant_for(runtime, 3101) is None  # no agent file: the step path
    key = os.urandom(32)
    runtime.endpoints[42] = Endpoint(host="10.0.0.5", port=40001, key=key)
    grant = grant_for(runtime, 3101)
    assert grant is not None
    assert (grant["host"], grant["port"], grant["job_id"]) == ("10.0.0.5", 40001, 42)
    assert grant["uid"] == 2001  # the agent must prove it is the runtime user's
    now = time.time()
    ticket = agent_wire.verify(key, grant["ticket"], uid=3101, job_id=42, now=now)
    assert now < ticket.expires <= now + agent_wire.TICKET_TTL_S + 1
    with pytest.raises(agent_wire.WireError):
        agent_wire.verify(key, grant["ticket"], uid=2001, job_id=42, now=now)


# -- the files rxd reads ---------------------------------------------------------------------


def test_rxd_reads_the_agent_file_and_refuses_what_the_holder_does_not_write(
    tmp_path: Path,
) -> None:
    files, uid = AgentFiles(), os.getuid()
    assert files.endpoint(str(tmp_path), 42, uid) is None
    endpoint = Endpoint(host="10.0.0.5", port=40001, key=os.urandom(32))
    (tmp_path / "job-42.agent").write_text(endpoint.line())
    assert files.endpoint(str(tmp_path), 42, uid) == endpoint
    assert files.endpoint(str(tmp_path), 42, uid + 1) is None  # not the runtime user's
    (tmp_path / "job-43.agent").symlink_to(tmp_path / "job-42.agent")
    assert files.endpoint(str(tmp_path), 43, uid) is None  # a link is never followed
    (tmp_path / "job-44.agent").write_text("10.0.0.5 40001 not-a-key\n")
    assert files.endpoint(str(tmp_path), 44, uid) is None


def test_rxd_reads_the_agents_sessions(tmp_path: Path) -> None:
    files, uid = AgentFiles(), os.getuid()
    assert files.sessions(str(tmp_path), 42, uid) is None
    (tmp_path / "job-42.sessions").write_text("2 1796084827\n")
    report = files.sessions(str(tmp_path), 42, uid)
    assert report is not None and (report.open, report.changed_at) == (2, 1796084827)
    (tmp_path / "job-42.sessions").write_text("-1 x\n")
    assert files.sessions(str(tmp_path), 42, uid) is None


# -- rxctl's side of the agent's protocol ----------------------------------------------------


AGENT_NONCE = "ab" * 16


def one_shot_agent(answer: bytes, prover: int = 2001) -> tuple[int, threading.Thread]:
    """An agent that says hello with a credential of `prover`'s, takes the credential and body,
    and answers `answer` in one write (as a quick command's start, output and exit often
    arrive). The credentials are stand-ins: see fake_munge."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                reader, frames = FrameReader(), []
                while not frames:
                    frames += reader.feed(conn.recv(65536))
                client = json.loads(frames.pop(0)[1])["nonce"]
                credential = f"MUNGE:{prover}:" + proof(42, client, AGENT_NONCE).decode()
                hello = {"agent": 1, "job": 42, "nonce": AGENT_NONCE, "credential": credential}
                conn.sendall(control(hello))
                while len(frames) < 2:
                    frames += reader.feed(conn.recv(65536))
                conn.sendall(answer)
                conn.shutdown(socket.SHUT_WR)
                while conn.recv(65536):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return int(listener.getsockname()[1]), thread


def fake_munge(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials as text: "MUNGE:<uid>:<payload>"."""

    def decode(credential: str, **kw: Any) -> munge.Decoded:
        _, uid, payload = credential.split(":", 2)
        return munge.Decoded(payload.encode(), int(uid), int(uid), 0, 300)

    monkeypatch.setattr(munge, "encode", lambda payload, **kw: "MUNGE:0:x")
    monkeypatch.setattr(munge, "decode", decode)


GRANTED = {"host": "127.0.0.1", "job_id": 42, "uid": 2001, "ticket": None}


def test_rxctl_loses_nothing_that_arrives_with_the_start(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    fake_munge(monkeypatch)
    answer = (
        control({"started": True}) + frame(STDOUT, b"hi\n") + frame(STDERR, b"e\n")
    ) + control({"exit": 3})
    port, thread = one_shot_agent(answer)
    null = os.open(os.devnull, os.O_RDONLY)
    saved = os.dup(0)
    os.dup2(null, 0)
    try:
        code = agent_client.run({**GRANTED, "port": port}, {"argv": ["x"], "cwd": "/"})
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(null)
    thread.join(timeout=10)
    assert code == 3
    assert capfd.readouterr() == ("hi\n", "e\n")


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (control({"error": "refused: the ticket has expired"}), agent_client.AgentUnavailable),
        (b"", agent_client.AgentUnavailable),
        (control({"error": "cwd must be an absolute path"}), exec_client.ExecError),
    ],
)
def test_a_refusal_before_the_start_lets_rxctl_fall_back_and_a_bad_request_does_not(
    monkeypatch: pytest.MonkeyPatch, answer: bytes, error: type[Exception]
) -> None:
    fake_munge(monkeypatch)
    port, thread = one_shot_agent(answer)
    with pytest.raises(error):
        agent_client.AgentSession({**GRANTED, "port": port}, {"argv": ["x"]}).start()
    thread.join(timeout=10)


def test_rxctl_talks_only_to_an_agent_that_proves_it_is_the_runtime_users(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A process of another user's on the port of an agent that is gone.
    fake_munge(monkeypatch)
    port, thread = one_shot_agent(control({"started": True}), prover=2002)
    with pytest.raises(agent_client.AgentUnavailable, match="could not prove"):
        agent_client.AgentSession({**GRANTED, "port": port}, {"argv": ["x"]}).start()


def test_an_rxd_from_before_the_agent_gets_the_request_it_knows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def old_rxd(conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
        if "agent" in request:
            conn.sendall(encode({"error": "unknown request field 'agent'"}))
        else:
            conn.sendall(encode({"exit": 6}))

    monkeypatch.delenv("RXSLURM_EXEC_PATH", raising=False)
    code, seen = session(tmp_path, [old_rxd, old_rxd])
    assert code == 6 and "agent" in seen[0] and "agent" not in seen[1]
