"""The exec protocol without Slurm: framing, descriptor passing, requests, the client's loop, and
the server's session with a fake srun (the command runs for real, as a test user)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rxslurm.cli import exec_client
from rxslurm.daemon.config import ApptainerConfig, parse_config
from rxslurm.daemon.containers import service as containers
from rxslurm.daemon.containers.reconciler import Sessions
from rxslurm.daemon.containers.sessions import Live
from rxslurm.daemon.errors import BadRequest, Forbidden
from rxslurm.daemon.exec import server as exec_server
from rxslurm.daemon.exec.server import (
    ExecRequest,
    LineReader,
    ProtocolError,
    receive_request,
    step_command,
    strip_srun_task_lines,
)
from rxslurm.daemon.identity.actors import Actor
from rxslurm.daemon.runtime.apptainer import ApptainerRuntime
from rxslurm.protocol import exec_wire
from rxslurm.slurm.adapter import SlurmCli
from rxslurm.slurm.runas import RunAs
from tests.support import daemon as daemon_support
from tests.support.cluster import wait_for

HOSTILE = ["a b", "$(id)", "; rm -rf /", "it's", '"', "line\nbreak", "ünï", "*", "--pty", ""]


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# -- framing -----------------------------------------------------------------------------------


def test_both_sides_frame_messages_as_json_lines() -> None:
    # One wire format (rxslurm.protocol.exec_wire) is what both ends speak.
    assert exec_client.encode is exec_wire.encode is exec_server.encode
    assert exec_client.LineReader is exec_wire.LineReader is LineReader
    message = {"signal": "INT", "words": HOSTILE}
    data = exec_wire.encode(message) * 2
    assert data.count(b"\n") == 2
    reader = LineReader()
    # Bytes arrive in any split: a message is complete only at its newline.
    assert reader.feed(data[:5]) == []
    assert reader.feed(data[5:]) == [message, message]


def test_a_line_without_end_beyond_the_limit_is_refused() -> None:
    with pytest.raises(ProtocolError, match="longer than"):
        LineReader(limit=100).feed(b"x" * 101)


def test_a_message_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ProtocolError, match="JSON object"):
        LineReader().feed(b"[1]\n")
    with pytest.raises(ProtocolError, match="not valid JSON"):
        LineReader().feed(b"{oops\n")


@pytest.mark.parametrize("line", [b"{oops", b"[1]", b"[" * 100_000], ids=["bad", "list", "deep"])
def test_the_network_door_reads_a_control_line_that_is_no_message_as_not_final(
    line: bytes,
) -> None:
    from rxslurm.daemon.exec.door import is_final

    assert not is_final(line)
    assert is_final(b'{"exit": 0}')


@pytest.mark.parametrize(
    ("reply", "why"),
    [(b"{oops\n", "not valid JSON"), (b"[1]\n", "JSON object"), (b"x" * 70_000, "longer than")],
)
def test_a_broken_reply_is_one_line_for_the_client(tmp_path, reply: bytes, why: str) -> None:
    path = str(tmp_path / "x.sock")
    thread = scripted_server(path, lambda c, r, f: c.sendall(reply))
    with pytest.raises(exec_client.ExecError, match=f"^rxd broke the exec protocol: .*{why}"):
        exec_client.run(path, {"project": "p", "argv": ["x"]})
    thread.join()


# -- descriptor passing ------------------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield client, server
    client.close()
    server.close()


def test_the_request_arrives_with_three_working_descriptors(pair) -> None:
    client, server = pair
    out_r, out_w = os.pipe()
    request = {"project": "alpha", "argv": HOSTILE}
    socket.send_fds(client, [exec_client.encode(request)], [0, out_w, 2])
    client.sendall(exec_client.encode({"signal": "INT"}))
    os.close(out_w)
    data, fds, rest = receive_request(server)
    try:
        assert data == request
        assert len(fds) == 3
        # The received stdout is the same pipe: what is written there, the sender reads.
        os.write(fds[1], b"through the passed fd\n")
        assert os.read(out_r, 100) == b"through the passed fd\n"
        assert all(os.get_inheritable(fd) is False for fd in fds)
        assert LineReader().feed(rest) in ([{"signal": "INT"}], [])
    finally:
        for fd in fds:
            os.close(fd)
        os.close(out_r)


def test_a_long_request_is_read_to_its_end(pair) -> None:
    client, server = pair
    request = {"project": "alpha", "argv": ["x" * 1000] * 300}
    data = exec_client.encode(request)
    sender = threading.Thread(target=socket.send_fds, args=(client, [data], [0, 1, 2]))
    sender.start()
    got, fds, _ = receive_request(server)
    sender.join()
    for fd in fds:
        os.close(fd)
    assert got == request


@pytest.mark.parametrize("count", [0, 2])
def test_anything_but_three_descriptors_is_refused_and_none_leak(pair, count: int) -> None:
    client, server = pair
    before = open_fds()
    if count:
        socket.send_fds(client, [b'{"project": "a"}\n'], [0] * count)
    else:
        client.sendall(b'{"project": "a"}\n')
    with pytest.raises(ProtocolError, match="exactly three"):
        receive_request(server)
    assert open_fds() == before


def test_more_than_three_descriptors_are_refused(pair) -> None:
    client, server = pair
    socket.send_fds(client, [b'{"project": "a"}\n'], [0, 1, 2, 0])
    with pytest.raises(ProtocolError, match="exactly three"):
        receive_request(server)


# -- requests ----------------------------------------------------------------------------------


def test_a_request_parses_with_defaults() -> None:
    request = ExecRequest.parse({"project": "alpha", "argv": HOSTILE})
    assert request == ExecRequest("alpha", tuple(HOSTILE), False, False, True, "/workspace", None)
    shell = ExecRequest.parse(
        {"project": "a", "shell": True, "tty": True, "term": "xterm-256color"}
    )
    assert (shell.shell, shell.tty, shell.argv, shell.term) == (True, True, (), "xterm-256color")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"argv": ["x"]}, "project must be"),
        ({"project": "a", "argv": "ls -l"}, "argv must be a list"),
        ({"project": "a", "argv": ["a\0b"]}, "NUL"),
        ({"project": "a", "argv": []}, "argv must name a command"),
        ({"project": "a", "shell": True, "argv": ["x"]}, "a shell takes no argv"),
        ({"project": "a", "argv": ["x"], "tty": "yes"}, "tty must be true or false"),
        ({"project": "a", "argv": ["x"], "cwd": "relative"}, "cwd must be an absolute path"),
        ({"project": "a", "argv": ["x"], "term": "xterm; rm"}, "term must be"),
        ({"project": "a", "argv": ["x"], "uid": 0}, "unknown request field 'uid'"),
    ],
)
def test_a_bad_request_says_why(body: dict, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        ExecRequest.parse(body)


TARGET = containers.ExecTarget(
    container_id=7,
    job_id=42,
    node="n1",
    instance="rx-alpha-42",
    state_dir="/srv/c/rx-alpha",
    runas=RunAs("someone", 2001, 2001, (2001,)),
)


RUNTIME = ApptainerRuntime(ApptainerConfig(binary="/opt/apptainer/bin/apptainer"))


def test_the_step_is_an_overlapping_srun_with_the_users_words_last(tmp_path: Path) -> None:
    srun = tmp_path / "srun"
    srun.write_text("#!/bin/sh\n")
    srun.chmod(0o755)
    request = ExecRequest.parse({"project": "alpha", "argv": HOSTILE})
    argv = step_command(SlurmCli(bin_dir=str(tmp_path)), RUNTIME, TARGET, request, "rx-exec-00")
    assert argv == [
        str(srun),
        "--jobid=42",
        "--overlap",
        "--ntasks=1",
        "--quiet",
        "--disable-status",
        "--job-name=rx-exec-00",
        "--",
        "/opt/apptainer/bin/apptainer",
        "exec",
        "--pwd",
        "/workspace",
        "instance://rx-alpha-42",
        *HOSTILE,
    ]


def test_a_shell_asks_srun_for_a_terminal() -> None:
    request = ExecRequest.parse({"project": "alpha", "shell": True, "tty": True, "cwd": None})
    argv = step_command(SlurmCli(), RUNTIME, TARGET, request, "rx-exec-00", portable=True)
    assert argv[0] == "srun"  # found on the PATH of the host that starts it
    assert "--pty" in argv[: argv.index("--")]
    assert argv[argv.index("--") + 1 :] == [
        "/opt/apptainer/bin/apptainer",
        "shell",
        "instance://rx-alpha-42",
    ]


def test_the_child_environment_is_clean_and_finds_the_instance(monkeypatch) -> None:
    monkeypatch.setenv("LD_PRELOAD", "/evil.so")
    monkeypatch.setenv("RXD_SECRET", "x")
    request = ExecRequest.parse({"project": "a", "shell": True, "tty": True, "term": "vt100"})
    env = exec_server.child_env(RUNTIME, TARGET, request)
    assert env["APPTAINER_CONFIGDIR"] == "/srv/c/rx-alpha/apptainer"
    assert env["TERM"] == "vt100"
    assert env["USER"] == "someone"
    assert "LD_PRELOAD" not in env and "RXD_SECRET" not in env


def test_srun_reports_of_ended_tasks_are_dropped_and_everything_else_kept() -> None:
    chunk = (
        b"err\n"
        b"srun: error: n1: task 0: Exited with exit code 3\n"
        b"srun: error: n2: tasks 0-3: Killed\n"
        b"srun: error: n1: task 0: Out Of Memory\n"
        b"srun: error: Unable to create step for job 42: Job/step already completing\n"
        b"a prompt without newline> "
    )
    assert strip_srun_task_lines(chunk) == (
        b"err\n"
        b"srun: error: n1: task 0: Out Of Memory\n"
        b"srun: error: Unable to create step for job 42: Job/step already completing\n"
        b"a prompt without newline> "
    )


# -- the client's loop against a scripted server -------------------------------------------------


def scripted_server(
    path: str, script: Callable[[socket.socket, dict, list[int]], None]
) -> threading.Thread:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        listener.close()
        try:
            data, fds, _ = receive_request(conn)
            try:
                script(conn, data, fds)
            finally:
                for fd in fds:
                    os.close(fd)
        finally:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def read_message(conn: socket.socket) -> dict[str, Any]:
    reader, data = LineReader(), b""
    while True:
        data = conn.recv(1)
        assert data, "client hung up"
        messages = reader.feed(data)
        if messages:
            return messages[0]


def test_the_client_shows_progress_waits_to_be_ready_and_exits_with_the_status(tmp_path) -> None:
    path = str(tmp_path / "x.sock")

    def script(conn: socket.socket, request: dict, fds: list[int]) -> None:
        assert request == {"project": "p", "argv": ["true"]}
        conn.sendall(exec_server.encode({"progress": "starting: submitting", "state": "starting"}))
        conn.sendall(exec_server.encode({"ready": True}))
        assert read_message(conn) == {"go": True}
        os.write(fds[1], b"output\n")
        conn.sendall(exec_server.encode({"exit": 7}))

    thread = scripted_server(path, script)
    out_r, out_w = os.pipe()
    seen: list[Any] = []
    code = exec_client.run(
        path,
        {"project": "p", "argv": ["true"]},
        stdio=(0, out_w, 2),
        on_progress=lambda m: seen.append(m["progress"]),
        on_ready=lambda: seen.append("ready"),
    )
    thread.join()
    os.close(out_w)
    assert code == 7
    assert seen == ["starting: submitting", "ready"]
    assert os.read(out_r, 100) == b"output\n"
    os.close(out_r)


def test_an_error_is_one_line_and_a_hang_up_is_an_error(tmp_path) -> None:
    path = str(tmp_path / "x.sock")
    thread = scripted_server(path, lambda c, r, f: c.sendall(exec_server.encode({"error": "no"})))
    with pytest.raises(exec_client.ExecError, match="^no$"):
        exec_client.run(path, {"project": "p", "argv": ["x"]})
    thread.join()
    (tmp_path / "x.sock").unlink()
    thread = scripted_server(path, lambda c, r, f: None)
    with pytest.raises(exec_client.ExecError, match="without an exit status"):
        exec_client.run(path, {"project": "p", "argv": ["x"]})
    thread.join()


def test_nothing_listening_is_a_clear_error(tmp_path) -> None:
    path = str(tmp_path / "none.sock")
    with pytest.raises(exec_client.ExecError, match=f"rxd is not running .*{path}"):
        exec_client.run(path, {"project": "p", "argv": ["x"]})


def test_signals_to_the_client_are_forwarded_not_obeyed(tmp_path) -> None:
    path = str(tmp_path / "x.sock")

    def script(conn: socket.socket, request: dict, fds: list[int]) -> None:
        # To the main thread, where the client waits in recv: a signal to the process may go to
        # any thread that does not block it, and earlier tests leave some (pool workers, readers).
        main = threading.main_thread().ident
        assert main is not None
        signal.pthread_kill(main, signal.SIGINT)
        signal.pthread_kill(main, signal.SIGTERM)
        got = [read_message(conn), read_message(conn)]
        conn.sendall(exec_server.encode({"exit": 130 if {"signal": "INT"} in got else 1}))

    thread = scripted_server(path, script)
    before = signal.getsignal(signal.SIGINT)
    assert exec_client.run(path, {"project": "p", "argv": ["x"]}) == 130
    thread.join()
    assert signal.getsignal(signal.SIGINT) is before


def test_the_exec_socket_sits_beside_the_api_socket() -> None:
    assert exec_wire.exec_socket_for("/run/rxslurm/rxd.sock") == "/run/rxslurm/rxd-exec.sock"
    assert exec_server.exec_socket_path(Path("/run/rxslurm/rxd.sock")) == Path(
        "/run/rxslurm/rxd-exec.sock"
    )


def test_rxctl_loads_neither_the_daemon_nor_slurm_code() -> None:
    probe = (
        "import sys, rxslurm.cli.main, rxslurm.cli.commands_exec;"
        "print([m for m in sys.modules if m.startswith(('rxslurm.daemon', 'rxslurm.slurm',"
        " 'aiohttp', 'sqlite', 'spython'))])"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


# -- the server's session, with a fake srun --------------------------------------------------------

FAKE_SRUN = """#!/usr/bin/python3 -I
# Stands in for `srun ... -- apptainer exec --pwd D instance://I CMD...`: runs CMD here, and
# reports a non-zero end like srun does.
import os, signal, subprocess, sys
argv = sys.argv[1:]
cmd = argv[argv.index("--") + 1 :]
cmd = cmd[[i for i, a in enumerate(cmd) if a.startswith("instance://")][0] + 1 :]
with open(os.environ["FAKE_SRUN_LOG"], "a") as log:
    log.write(repr(sys.argv[1:]) + " " + os.environ["APPTAINER_CONFIGDIR"] + "\\n")
child = subprocess.Popen(cmd)
for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, lambda signum, frame: child.send_signal(signum))
code = child.wait()
if code:
    sys.stderr.write(f"srun: error: n1: task 0: Exited with exit code {code}\\n")
sys.exit(code if code >= 0 else 128 - code)
"""


@pytest.fixture
def fake_exec(monkeypatch) -> Iterator[SimpleNamespace]:
    """An ExecServer on a real socket whose srun is FAKE_SRUN, for a container that runs."""
    if os.geteuid() != 0:
        pytest.skip("the server starts commands as another user: needs root")
    try:
        user = RunAs.for_user("rxalice")
    except ValueError:
        user = RunAs.for_user(pwd.getpwnam("nobody").pw_uid)
    root = daemon_support.test_root()
    bin_dir = root / "bin"
    bin_dir.mkdir(mode=0o755)
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "srun").chmod(0o755)
    log = root / "srun.log"
    log.touch(mode=0o666)
    log.chmod(0o666)
    monkeypatch.setenv("FAKE_SRUN_LOG", str(log))
    monkeypatch.setattr(
        exec_server,
        "clean_env",
        lambda who, extra: {"PATH": "/usr/bin:/bin", "FAKE_SRUN_LOG": str(log), **extra},
    )
    config = parse_config(
        {"daemon": {"socket": str(root / "run" / "rxd.sock")}, "slurm": {"bin_dir": str(bin_dir)}}
    )
    sessions = Sessions()
    touched: list[int] = []
    target = containers.ExecTarget(7, 42, "n1", "rx-p-42", str(root), user)

    def authorize_exec(actor: Any, project: str) -> containers.Access:
        if project != "p":
            raise Forbidden(f"exec in project {project} needs role owner or manager")
        return containers.Access(actor, {"id": 1, "name": project}, None)

    def target_of(access: containers.Access) -> containers.ExecTarget:
        return target

    daemon = SimpleNamespace(
        config=config,
        containers=SimpleNamespace(
            scheduler=SlurmCli(bin_dir=str(bin_dir)),
            runtime=ApptainerRuntime(config.apptainer),
            authorize_exec=authorize_exec,
            target_of=target_of,
            touch_activity=touched.append,
        ),
        reconciler=SimpleNamespace(sessions=sessions, slurm_reachable=True),
        commands=SimpleNamespace(live=Live()),
    )

    monkeypatch.setattr(
        exec_server,
        "actor_for",
        lambda daemon, caller: Actor(None, caller.uid, caller.user, False, caller.door),
    )
    server = exec_server.ExecServer.start(daemon)  # type: ignore[arg-type]
    try:
        yield SimpleNamespace(
            path=str(server.path),
            sessions=sessions,
            touched=touched,
            log=log,
            root=root,
            live=daemon.commands.live,
        )
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def run_fake(path: str, argv: list[str]) -> tuple[int, bytes, bytes]:
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        code = exec_client.run(path, {"project": "p", "argv": argv}, stdio=(0, out_w, err_w))
    finally:
        os.close(out_w)
        os.close(err_w)
    with os.fdopen(out_r, "rb") as out, os.fdopen(err_r, "rb") as err:
        return code, out.read(), err.read()


def test_the_server_runs_the_step_on_the_callers_descriptors(fake_exec) -> None:
    code, out, err = run_fake(fake_exec.path, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (code, out, err) == (3, b"out\n", b"err\n")
    # After the exit status is sent: the activity is recorded, then the session closes.
    wait_for(lambda: fake_exec.sessions.count(7) == 0, timeout=10, what="the session to close")
    assert fake_exec.touched == [7]
    logged = fake_exec.log.read_text()
    assert "'--jobid=42', '--overlap'" in logged
    assert logged.rstrip().endswith(f"{fake_exec.root}/apptainer")


def test_the_command_runs_as_the_targets_user(fake_exec) -> None:
    code, out, _ = run_fake(fake_exec.path, ["id", "-u"])
    assert code == 0 and int(out) != 0


def test_a_refusal_is_an_error_line(fake_exec) -> None:
    with pytest.raises(exec_client.ExecError, match="^exec in project other needs role"):
        exec_client.run(fake_exec.path, {"project": "other", "argv": ["true"]})


def test_a_session_keeps_the_container_awake_while_it_runs(fake_exec) -> None:
    result: list[Any] = []
    thread = threading.Thread(
        target=lambda: result.append(run_fake(fake_exec.path, ["sleep", "2"])), daemon=True
    )
    thread.start()
    wait_for(lambda: fake_exec.sessions.count(7) == 1, timeout=10, what="the session to open")
    # `rxctl ps` lists it meanwhile, with who started it and its step's name.
    [listed] = fake_exec.live.of(7)
    assert (listed.argv, listed.job_id, listed.shell) == (("sleep", "2"), 42, False)
    assert listed.started_by == pwd.getpwuid(os.getuid()).pw_name
    assert listed.step_name.startswith("rx-exec-")
    thread.join(timeout=30)
    assert result and result[0][0] == 0
    wait_for(lambda: fake_exec.sessions.count(7) == 0, timeout=10, what="the session to close")
    assert fake_exec.live.of(7) == []


def test_a_client_that_hangs_up_ends_its_command(fake_exec) -> None:
    marker = "31415"
    sock = exec_client.connect(fake_exec.path)
    socket.send_fds(
        sock, [exec_client.encode({"project": "p", "argv": ["sleep", marker]})], [0, 1, 2]
    )
    wait_for(lambda: pids_with(marker), timeout=10, what="the command to start")
    sock.close()
    wait_for(lambda: not pids_with(marker), timeout=10, what="the command to end")
    wait_for(lambda: fake_exec.sessions.count(7) == 0, timeout=10, what="the session to close")


def pids_with(marker: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if f"sleep\0{marker}".encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(entry)
            except OSError:
                pass
    return found


def test_bad_json_gets_a_protocol_error(fake_exec) -> None:
    sock = exec_client.connect(fake_exec.path)
    socket.send_fds(sock, [b"not json\n"], [0, 1, 2])
    answer = json.loads(sock.makefile("rb").readline())
    sock.close()
    assert answer == {"error": "exec protocol error: a message is not valid JSON"}


def test_a_stderr_that_never_drains_does_not_stop_the_disconnect(fake_exec) -> None:
    err_r, err_w = os.pipe()
    sock = exec_client.connect(fake_exec.path)
    try:
        request = {"project": "p", "argv": ["sh", "-c", "exec yes 27182 >&2"]}
        socket.send_fds(sock, [exec_client.encode(request)], [0, 1, err_w])
        wait_for(lambda: pids_of("yes\0" + "27182"), timeout=10, what="the command to start")
        wait_for(lambda: unread(err_r) > 60000, timeout=10, what="stderr to fill up")
        sock.close()  # the client goes; its stderr is still full and unread
        wait_for(lambda: not pids_of("yes\0" + "27182"), timeout=30, what="the command to end")
        wait_for(lambda: fake_exec.sessions.count(7) == 0, timeout=30, what="the session to close")
    finally:
        sock.close()
        os.close(err_r)
        os.close(err_w)


def pids_of(argv: str) -> list[str]:
    """Processes whose command line starts with argv (words joined by NUL)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{entry}/cmdline").read_bytes().startswith(argv.encode()):
                    found.append(entry)
    return found


def unread(fd: int) -> int:
    """Bytes waiting in a pipe."""
    return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), "little")


def test_stdin_is_relayed_and_its_end_ends_the_commands_input(fake_exec) -> None:
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.write(in_w, b"through rxd\n" * 1000)
    os.close(in_w)
    try:
        code = exec_client.run(
            fake_exec.path, {"project": "p", "argv": ["cat"]}, stdio=(in_r, out_w, 2)
        )
    finally:
        os.close(in_r)
        os.close(out_w)
    with os.fdopen(out_r, "rb") as out:
        assert (code, out.read()) == (0, b"through rxd\n" * 1000)


def test_output_larger_than_every_buffer_arrives_whole_at_a_slow_reader(fake_exec) -> None:
    out_r, out_w = os.pipe()
    got = bytearray()

    def read_slowly() -> None:
        while chunk := os.read(out_r, 4096):
            got.extend(chunk)

    reader = threading.Thread(target=read_slowly)
    reader.start()
    try:
        argv = ["head", "-c", "3000000", "/dev/urandom"]
        code = exec_client.run(fake_exec.path, {"project": "p", "argv": argv}, stdio=(0, out_w, 2))
    finally:
        os.close(out_w)
    reader.join()
    os.close(out_r)
    assert (code, len(got)) == (0, 3000000)


def test_a_terminal_session_gets_rxds_pty_with_the_callers_size(fake_exec) -> None:
    import pty

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("4H", 33, 111, 0, 0))
    out_r, out_w = os.pipe()
    try:
        request = {"project": "p", "argv": ["sh", "-c", "tty; stty size"], "tty": True}
        code = exec_client.run(fake_exec.path, request, stdio=(slave, out_w, 2))
    finally:
        os.close(out_w)
    with os.fdopen(out_r, "rb") as out:
        lines = out.read().decode().split()
    caller_tty = os.ttyname(slave)
    os.close(slave)
    os.close(master)
    assert code == 0
    # A terminal, and not the caller's: the command sees rxd's pty, at the caller's size.
    assert lines[0].startswith("/dev/pts/") and lines[0] != caller_tty
    assert lines[1:] == ["33", "111"]
