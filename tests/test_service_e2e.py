"""A project's service end to end (issue 17, item 4): real rxd, real cluster, real Apptainer.

The project's start command serves HTTP on its port inside the container; `rxctl status` says
where it listens; `rxctl port-forward` on the login side makes it reachable on 127.0.0.1, each
connection relayed through an exec step of the job; when the service ends, status and logs say so.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from tests.support import lifecycle
from tests.support.cli import ok
from tests.support.cluster import run_as, spawn_as, wait_for
from tests.support.daemon import RXCTL, Rxd, free_port
from tests.support.lifecycle import lifecycle_rxd
from tests.support.real_apptainer import BASE_IMAGE

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("container_runtime")]

# Jobs are Slurm singletons named rx-<project>: the name is this module's own.
PROJECT = "svc-main"
# Every slurmd of the test cluster shares this host's network: a port nothing else uses.
PORT = free_port()

# Serves /workspace on 127.0.0.1:PORT until /workspace/stop-service appears, then exits 3. Its
# newlines and quotes test that the command reaches the container word for word.
SERVICE = """
import functools, http.server, os, sys, threading, time
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory="/workspace")
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
print("service 'up' on", sys.argv[1], flush=True)
while not os.path.exists("/workspace/stop-service"):
    time.sleep(0.2)
print("service says goodbye", flush=True)
sys.exit(3)
"""


# A service that writes 1.5 MiB (its run's number on each line) and fails, restarted twice.
CRASHING = "svc-crash"
CRASH = """
import os, sys
runs = "/workspace/runs"
run = len(open(runs).read()) if os.path.exists(runs) else 0
open(runs, "a").write("x")
line = "run %d says line %%06d, and a little more to fill it\\n" % run
sys.stdout.write("".join(line % i for i in range(30000)))
sys.stdout.write("run %d fails\\n" % run)
sys.exit(1)
"""


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    # A 1 MiB cap on a service's output: the crashing service below passes it.
    with lifecycle_rxd(bind=("rxalice", "rxbob"), output_cap_mb="1") as daemon:
        try:
            yield daemon
        finally:
            # Free the cluster for others: no job of this module outlives it.
            for project in (PROJECT, CRASHING):
                if daemon.rxctl("rxalice", "stop", "--project", project).returncode == 0:
                    lifecycle.wait_state(daemon, project, "stopped", "error", timeout=60)


@pytest.fixture(scope="module")
def serving(rxd: Rxd) -> dict:
    command = shlex.join(["python3", "-c", SERVICE, str(PORT)])
    ok(rxd.rxctl("rxalice", "project", "create", PROJECT, "--image", str(BASE_IMAGE)))
    ok(
        rxd.rxctl(
            "rxalice",
            "project",
            "set",
            "--project",
            PROJECT,
            "--service",
            command,
            "--port",
            str(PORT),
        )
    )
    ok(rxd.rxctl("rxalice", "enable", "--project", PROJECT))
    ok(
        rxd.rxctl(
            "rxalice",
            "exec",
            "--project",
            PROJECT,
            "--",
            "sh",
            "-c",
            "echo hello from the service > /workspace/hello.txt",
        )
    )
    return lifecycle.wait_state(rxd, PROJECT, "running", timeout=180)


# An HTTP GET as a test user (the forward relays only its own user's connections): the body, or
# "ERROR <why>" on stdout.
GET = """
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=10) as answer:
        sys.stdout.write(answer.read().decode())
except Exception as e:
    sys.stdout.write("ERROR " + type(e).__name__)
"""


def fetch(port: int, path: str, user: str = "rxalice") -> str | None:
    done = run_as(user, [sys.executable, "-I", "-c", GET, f"http://127.0.0.1:{port}{path}"])
    return None if done.stdout.startswith("ERROR") else done.stdout


def test_status_says_where_the_service_listens(rxd: Rxd, serving: dict) -> None:
    status = json.loads(ok(rxd.rxctl("rxalice", "status", "--project", PROJECT, "--json")).stdout)
    assert status["service"] == f"{status['node']}:{PORT}"
    shown = ok(rxd.rxctl("rxalice", "status", "--project", PROJECT)).stdout
    assert f"listens on {status['node']}:{PORT}" in shown
    # The command is kept as its words.
    show = json.loads(
        ok(rxd.rxctl("rxalice", "project", "show", "--project", PROJECT, "--json")).stdout
    )
    assert json.loads(show["settings"]["service"]) == ["python3", "-c", SERVICE, str(PORT)]


def through(forward: subprocess.Popen[str], local: int) -> str:
    """The first answer through the forward (rxctl's own words if none comes)."""
    try:
        return wait_for(
            lambda: fetch(local, "/hello.txt"), 60, what="the service through the forward"
        )
    except TimeoutError as exc:
        forward.terminate()
        raise AssertionError(f"{exc}; rxctl said: {forward.communicate(timeout=30)}") from None


def test_port_forward_reaches_the_service_from_the_login_side(rxd: Rxd, serving: dict) -> None:
    local = free_port()
    forward = spawn_as(
        "rxalice",
        [RXCTL, "--socket", str(rxd.socket), "port-forward", "--project", PROJECT, str(local)],
    )
    try:
        body = through(forward, local)
        assert body == "hello from the service\n"
        # Each connection is a session of its own: a second one works too.
        assert fetch(local, "/hello.txt") == "hello from the service\n"
        assert fetch(local, "/missing") is None  # a 404, relayed
    finally:
        forward.terminate()
        forward.communicate(timeout=30)


def test_port_forward_refuses_another_users_connection(rxd: Rxd, serving: dict) -> None:
    local = free_port()
    forward = spawn_as(
        "rxalice",
        [RXCTL, "--socket", str(rxd.socket), "port-forward", "--project", PROJECT, str(local)],
    )
    try:
        through(forward, local)
        # rxbob reaches the port but not the service: the forward closes his
        # connection unanswered, and the owner still gets through afterwards.
        assert fetch(local, "/hello.txt", user="rxbob") is None
        done = run_as("rxbob", [sys.executable, "-I", "-c", GET, f"http://127.0.0.1:{local}/"])
        assert done.stdout.startswith("ERROR")
        assert fetch(local, "/hello.txt") == "hello from the service\n"
    finally:
        forward.terminate()
        _, said = forward.communicate(timeout=30)
    refused = [line for line in said.splitlines() if "refused a connection" in line]
    assert len(refused) == 2
    assert all(line.endswith("not yours)") and "uid " in line for line in refused)


# An HTTP/1.0 GET over a Unix socket as a test user: the answer, or "ERROR <why>".
UNIX_GET = """
import socket, sys
try:
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.sendall(b"GET /hello.txt HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    sys.stdout.write(data.decode())
except OSError as e:
    sys.stdout.write("ERROR " + type(e).__name__)
"""


def test_port_forward_on_a_unix_socket_only_its_user_opens(rxd: Rxd, serving: dict) -> None:
    path = f"/tmp/rx-forward-{uuid.uuid4().hex[:12]}.sock"
    forward = spawn_as(
        "rxalice",
        [RXCTL, "--socket", str(rxd.socket), "port-forward", "--project", PROJECT, "--unix", path],
    )

    def answer(user: str) -> str:
        return run_as(user, [sys.executable, "-I", "-c", UNIX_GET, path]).stdout

    try:
        body = wait_for(
            lambda: (lambda a: a if a.startswith("HTTP/") else None)(answer("rxalice")),
            60,
            what="the service through the Unix socket",
        )
        assert body.endswith("\n\nhello from the service\n")  # (newlines as text reads them)
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert answer("rxbob") == "ERROR PermissionError"
    finally:
        forward.terminate()
        forward.communicate(timeout=30)
    assert not os.path.exists(path)  # the forward removed its socket


def test_a_non_member_cannot_forward(rxd: Rxd, serving: dict) -> None:
    result = rxd.rxctl("rxbob", "port-forward", "--project", PROJECT, str(free_port()))
    assert result.returncode != 0
    assert "Error" in result.stderr


def test_a_service_that_ends_shows_in_status_and_logs(rxd: Rxd, serving: dict) -> None:
    ok(rxd.rxctl("rxalice", "exec", "--project", PROJECT, "--", "touch", "/workspace/stop-service"))

    def reported() -> dict | None:
        status = json.loads(rxd.rxctl("rxalice", "status", "--project", PROJECT, "--json").stdout)
        return status if "service exited" in (status.get("reason") or "") else None

    status = wait_for(reported, 60, what="the service's end in status")
    assert status["state"] == "running"  # the container stays up for exec
    assert "status 3" in status["reason"]
    assert status["service"] is None  # nothing listens any more
    # The job's log says it ended, with the service's last lines; the service's own output
    # (capped, in its own file) has all of it, and the holder's lines about it.
    logs = ok(rxd.rxctl("rxalice", "logs", "--project", PROJECT)).stdout
    assert "service 'up' on" in logs
    assert "service says goodbye" in logs
    assert "the service exited with status 3" in logs
    served = rxd.rxctl("rxalice", "logs", "--project", PROJECT, "--service")
    assert ok(served).stdout.splitlines()[:2] == [
        f"rx-holder: starting the service (port {PORT})",
        f"service 'up' on {PORT}",
    ]
    assert served.stdout.splitlines()[-1] == "rx-holder: the service exited with status 3"
    assert served.stderr == ""  # nothing dropped, nothing left out


def test_a_failing_service_is_restarted_and_its_output_stays_capped(rxd: Rxd) -> None:
    ok(rxd.rxctl("rxalice", "project", "create", CRASHING, "--image", str(BASE_IMAGE)))
    command = shlex.join(["python3", "-c", CRASH])
    settings = ("--service", command, "--restart", "on-failure:2")
    ok(rxd.rxctl("rxalice", "project", "set", "--project", CRASHING, *settings))
    ok(rxd.rxctl("rxalice", "enable", "--project", CRASHING))

    def given_up() -> dict | None:
        status = json.loads(rxd.rxctl("rxalice", "status", "--project", CRASHING, "--json").stdout)
        return status if "after it was restarted" in (status.get("reason") or "") else None

    status = wait_for(given_up, 240, what="the service's restarts to be used up")
    assert status["state"] == "running"
    assert status["service_restarts"] == 2
    assert status["reason"] == (
        "the service exited (status 1) after it was restarted 2 times; see `rxctl logs`"
    )
    shown = ok(rxd.rxctl("rxalice", "status", "--project", CRASHING)).stdout
    assert "2 (the service's, in this job)" in shown
    # Each restart is in the history and in the job's log.
    history = ok(rxd.rxctl("rxalice", "history", "--project", CRASHING)).stdout
    assert "the service was restarted once (last exit status 1)" in history
    assert "the service was restarted 2 times (last exit status 1)" in history
    logs = ok(rxd.rxctl("rxalice", "logs", "--project", CRASHING)).stdout
    assert "restarting the service (restart 1 of 2)" in logs
    assert "restarting the service (restart 2 of 2)" in logs
    assert "the service exited with status 1 (restarted 2 of 2 times)" in logs
    assert "  run 2 fails" in logs  # its last lines
    # 4.5 MiB went through a 1 MiB cap: the newest is shown, and that older output went.
    served = ok(rxd.rxctl("rxalice", "logs", "--project", CRASHING, "--service"))
    lines = served.stdout.splitlines()
    assert lines[-2:] == [
        "run 2 fails",
        "rx-holder: the service exited with status 1 (restarted 2 of 2 times)",
    ]
    assert "run 0 says" not in served.stdout
    assert f"older output of job {status['job_id']}'s service was dropped" in served.stderr
    folder = rxd.root / "containers" / f"rx-{CRASHING}"
    for name in ("service", "service.1"):
        assert (folder / f"job-{status['job_id']}.{name}").stat().st_size <= 1 << 20
