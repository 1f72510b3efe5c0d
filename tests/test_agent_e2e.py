"""The exec agent in a real container, attacked: another user on the same node, with a valid
MUNGE credential of their own (from their shell and from their own Slurm job), a stolen ticket, a
replayed credential; and nothing of it outlives the job. The exec suite itself runs through the
agent in tests/test_exec_e2e.py."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rxslurm.protocol import agent_wire
from rxslurm.protocol.agent_wire import Endpoint
from tests.support.cli import ok
from tests.support.cluster import run_as, user_env, wait_for
from tests.support.daemon import Rxd, free_port, test_root
from tests.support.lifecycle import lifecycle_rxd, wait_state
from tests.support.munge import needs_munged
from tests.support.real_apptainer import BASE_IMAGE

pytestmark = [pytest.mark.cluster, needs_munged, pytest.mark.usefixtures("container_runtime")]

PROJECT = "ag-safe"
ALICE_UID = 2001
BOB_UID = 2002

# A client of the agent's protocol, run as a test user: connects, proves itself with its own
# MUNGE credential bound to the agent's nonce, and prints what the agent answered (one JSON
# line). With --print-credential it also prints what it sent, for a replay.
CLIENT = r"""
import json, os, socket, sys
from rxslurm.protocol.agent_wire import BIND_METHOD, FrameReader, bind_target, control, frame
from rxslurm.protocol.exec_wire import CONTROL, decode
from rxslurm.slurm import munge, request_binding

args = json.loads(sys.argv[1])
sock = socket.create_connection((args["host"], args["port"]), timeout=30)
reader = FrameReader()
sock.sendall(control({"hello": 1, "nonce": os.urandom(16).hex()}))

def next_control():
    while True:
        for channel, payload in reader.feed(b""):
            if channel == CONTROL:
                return decode(payload)
        data = sock.recv(65536)
        if not data:
            return {"closed": True}
        reader.buffer += data

hello = next_control()
if "credential" in args:
    credential, body = args["credential"], args["body"].encode()
else:
    body = json.dumps({"ticket": args.get("ticket"), "request": {"argv": ["id", "-u"],
                       "cwd": "/"}}).encode()
    binding = request_binding.bind(BIND_METHOD, bind_target(hello["job"]), body, os.getuid(),
                                   nonce=hello["nonce"])
    credential = munge.encode(binding.to_payload())
sock.sendall(control({"credential": credential}) + frame(CONTROL, body))
answer, out = next_control(), b""
if answer.get("started"):
    while "exit" not in answer:
        for channel, payload in reader.feed(sock.recv(65536)):
            if channel == b"1":
                out += payload
            elif channel == CONTROL:
                answer = decode(payload)
print(json.dumps({"answer": answer, "out": out.decode(), "credential": credential,
                  "body": body.decode()}))
"""


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    with lifecycle_rxd(bind=("rxalice", "rxbob")) as daemon:
        try:
            yield daemon
        finally:
            daemon.rxctl("rxalice", "stop", "--project", PROJECT, "--force")
            wait_for(
                lambda: state_of(daemon, PROJECT) in RESTING, timeout=60, what=f"{PROJECT} to stop"
            )


RESTING = ("stopped", "disabled", "error", None)


def state_of(rxd: Rxd, project: str) -> str | None:
    result = rxd.rxctl("rxalice", "status", "--project", project, "--json")
    return json.loads(result.stdout)["state"] if result.returncode == 0 else None


def running(rxd: Rxd) -> dict:
    if rxd.rxctl("rxalice", "status", "--project", PROJECT, "--json").returncode != 0:
        ok(rxd.rxctl("rxalice", "project", "create", PROJECT, "--image", str(BASE_IMAGE)))
        ok(rxd.rxctl("rxalice", "enable", "--project", PROJECT))
    return wait_state(rxd, PROJECT, "running", timeout=180)


def agent_file(rxd: Rxd, job_id: int) -> Path:
    return rxd.root / "containers" / f"rx-{PROJECT}" / f"job-{job_id}.agent"


def endpoint(rxd: Rxd, job_id: int) -> Endpoint:
    # Root reads it here as the test's oracle; rxd reads it without following links.
    return agent_wire.parse_endpoint(agent_file(rxd, job_id).read_bytes())


@pytest.fixture(scope="module")
def client_script() -> Path:
    folder = test_root()
    os.chmod(folder, 0o755)
    script = folder / "agent_client.py"
    script.write_text(CLIENT)
    script.chmod(0o644)
    return script


def attempt(user: str, script: Path, *, via_job: str | None = None, **args: object) -> dict:
    """What the agent answered `user`'s client (from a job of theirs on node `via_job`)."""
    argv = [sys.executable, "-I", str(script), json.dumps(args)]
    if via_job:
        argv = ["srun", "--quiet", "-w", via_job, "-n1", "-c1", "--mem=100", "-t", "2", *argv]
    result = run_as(user, argv, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_agent_file_is_the_runtime_users_alone(rxd: Rxd) -> None:
    project = running(rxd)
    info = agent_file(rxd, project["job_id"]).stat()
    assert (info.st_uid, info.st_mode & 0o777) == (ALICE_UID, 0o600)


def test_the_runtime_user_gets_in_with_their_own_credential(rxd: Rxd, client_script) -> None:
    project = running(rxd)
    there = endpoint(rxd, project["job_id"])
    got = attempt("rxalice", client_script, host=there.host, port=there.port)
    # Root inside the container (--fakeroot), the runtime user outside.
    assert got["answer"] == {"exit": 0} and got["out"] == "0\n"


def test_another_user_on_the_node_with_a_valid_credential_is_refused(
    rxd: Rxd, client_script
) -> None:
    project = running(rxd)
    there = endpoint(rxd, project["job_id"])
    got = attempt("rxbob", client_script, host=there.host, port=there.port)
    assert got["answer"] == {
        "error": f"refused: uid {BOB_UID} is not this container's user and has no ticket"
    }
    # The same from a Slurm job of theirs on the container's node.
    got = attempt("rxbob", client_script, via_job=project["node"], host=there.host, port=there.port)
    assert got["answer"]["error"].startswith(f"refused: uid {BOB_UID} is not")


def test_a_ticket_stolen_from_a_member_is_useless_to_another_user(rxd: Rxd, client_script) -> None:
    project = running(rxd)
    there = endpoint(rxd, project["job_id"])
    stolen = agent_wire.sign(there.key, ALICE_UID, project["job_id"], now=time.time())
    got = attempt("rxbob", client_script, host=there.host, port=there.port, ticket=stolen)
    assert got["answer"] == {"error": "refused: the ticket was given to another user"}


def test_a_replayed_credential_gets_nothing(rxd: Rxd, client_script) -> None:
    project = running(rxd)
    there = endpoint(rxd, project["job_id"])
    used = attempt("rxalice", client_script, host=there.host, port=there.port)
    assert used["answer"] == {"exit": 0}
    # Alice's spent credential and body, sent again on a new connection, by anyone.
    for user in ("rxbob", "rxalice"):
        got = attempt(
            user,
            client_script,
            host=there.host,
            port=there.port,
            credential=used["credential"],
            body=used["body"],
        )
        assert got["answer"]["error"].startswith("refused: MUNGE refused the credential"), got


def sessions_file(rxd: Rxd, job_id: int) -> Path:
    return rxd.root / "containers" / f"rx-{PROJECT}" / f"job-{job_id}.sessions"


def open_sessions(rxd: Rxd, job_id: int) -> int | None:
    try:
        return int(sessions_file(rxd, job_id).read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None


def test_the_holder_reports_the_agents_open_sessions_for_the_idle_timer(rxd: Rxd) -> None:
    # The reconciler's side (a session keeps the container awake) is in
    # tests/unit/test_reconciler_edges.py; here the holder's report of a real agent's sessions.
    project = running(rxd)
    job_id = project["job_id"]
    began = int(time.time())
    argv = ["rxctl", "--socket", str(rxd.socket), "exec", "--project", PROJECT, "--"]
    pw = pwd.getpwnam("rxalice")
    proc = subprocess.Popen(
        [*argv, "sleep", "3600"],
        user=pw.pw_uid,
        group=pw.pw_gid,
        env=user_env("rxalice", {"RXSLURM_EXEC_PATH": "agent"}),
        cwd=pw.pw_dir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: open_sessions(rxd, job_id) == 1, timeout=60, what="one open session")
    finally:
        proc.kill()  # the agent ends the command when its caller hangs up
        proc.wait()
    wait_for(lambda: open_sessions(rxd, job_id) == 0, timeout=60, what="no open session")
    assert int(sessions_file(rxd, job_id).read_text().split()[1]) >= began


def exec_as_alice(rxd: Rxd, path: str) -> subprocess.CompletedProcess:
    argv = ["rxctl", "--socket", str(rxd.socket), "exec", "--project", PROJECT, "--"]
    return run_as("rxalice", [*argv, "echo", "ran"], env={"RXSLURM_EXEC_PATH": path})


def test_rxctl_falls_back_to_a_step_when_the_agent_does_not_answer(rxd: Rxd) -> None:
    project = running(rxd)
    path = agent_file(rxd, project["job_id"])
    real = path.read_text()
    closed = free_port()
    try:
        # The agent file names a port nothing listens on (an agent that died, a firewall).
        run_as(
            "rxalice",
            [
                "sh",
                "-c",
                f'printf "%s\n" "$1" > {path}',
                "-",
                f"127.0.0.1 {closed} " + real.split()[2],
            ],
        )
        before = rxd.log_text().count("exec ended")
        fell_back = exec_as_alice(rxd, "auto")
        assert (fell_back.returncode, fell_back.stdout) == (0, "ran\n"), fell_back.stderr
        assert rxd.log_text().count("exec ended") == before + 1  # a step, run by rxd
        strict = exec_as_alice(rxd, "agent")
        assert strict.returncode == 125
        assert strict.stderr.startswith("Error: the container's exec agent: cannot reach")
        # No agent file at all (a holder from before the agent, an image without python3).
        run_as("rxalice", ["rm", "-f", str(path)])
        assert ok(exec_as_alice(rxd, "auto")).stdout == "ran\n"
        assert rxd.log_text().count("exec ended") == before + 2
        # RXSLURM_EXEC_PATH=agent asks rxd for the agent only: no step is started.
        assert exec_as_alice(rxd, "agent").stderr == (
            f"Error: the container of {PROJECT} has no exec agent\n"
        )
        assert rxd.log_text().count("exec ended") == before + 2
    finally:
        run_as("rxalice", ["sh", "-c", f'printf "%s" "$1" > {path}', "-", real])
    assert ok(exec_as_alice(rxd, "agent")).stdout == "ran\n"


NO_PYTHON = "ag-nopy"


def image_without_python() -> Path:
    """A tiny image of static busybox: no python3, so no agent."""
    folder = test_root()
    os.chmod(folder, 0o755)
    root = folder / "rootfs"
    for sub in ("bin", "etc", "tmp", "proc", "sys", "dev", "workspace", "root"):
        (root / sub).mkdir(parents=True)
    busybox = root / "bin" / "busybox"
    busybox.write_bytes(Path("/bin/busybox").read_bytes())
    busybox.chmod(0o755)
    for name in ("sh", "true", "echo", "cat", "sleep"):
        (root / "bin" / name).symlink_to("busybox")
    image = folder / "nopy.sif"
    built = subprocess.run(
        ["apptainer", "-s", "build", str(image), str(root)], capture_output=True, text=True
    )
    assert built.returncode == 0, built.stderr
    image.chmod(0o644)
    return image


def test_an_image_without_python_gets_no_agent_and_exec_runs_as_a_step(rxd: Rxd) -> None:
    if not Path("/bin/busybox").exists():
        pytest.skip("needs /bin/busybox (busybox-static) to build an image without python3")
    image = image_without_python()
    ok(rxd.rxctl("rxalice", "project", "create", NO_PYTHON, "--image", str(image)))
    try:
        ok(rxd.rxctl("rxalice", "enable", "--project", NO_PYTHON))
        job = wait_state(rxd, NO_PYTHON, "running", timeout=180)["job_id"]
        folder = rxd.root / "containers" / f"rx-{NO_PYTHON}"
        assert not (folder / f"job-{job}.agent").exists()
        said = (folder / f"job-{job}.out").read_text()
        assert "rx-holder: no exec agent in this container (exec uses Slurm steps)" in said
        argv = ["rxctl", "--socket", str(rxd.socket), "exec", "--project", NO_PYTHON, "--"]
        auto = run_as("rxalice", [*argv, "echo", "stepped"], env={"RXSLURM_EXEC_PATH": "auto"})
        assert (auto.returncode, auto.stdout) == (0, "stepped\n"), auto.stderr
        only = run_as("rxalice", [*argv, "true"], env={"RXSLURM_EXEC_PATH": "agent"})
        assert (only.returncode, only.stderr) == (
            125,
            f"Error: the container of {NO_PYTHON} has no exec agent\n",
        )
    finally:
        rxd.rxctl("rxalice", "stop", "--project", NO_PYTHON)
        wait_for(
            lambda: state_of(rxd, NO_PYTHON) in RESTING, timeout=60, what=f"{NO_PYTHON} to stop"
        )


def test_nothing_of_the_agent_outlives_the_job(rxd: Rxd) -> None:
    project = running(rxd)
    job_id = project["job_id"]
    there = endpoint(rxd, job_id)
    ok(rxd.rxctl("rxalice", "stop", "--project", PROJECT))
    wait_state(rxd, PROJECT, "stopped", timeout=90)
    # The key's file is gone with the job, and nothing listens where the agent did.
    assert not agent_file(rxd, job_id).exists()
    refused = subprocess.run(
        [
            sys.executable,
            "-c",
            "import socket,sys; socket.create_connection((sys.argv[1], "
            "int(sys.argv[2])), timeout=5)",
            there.host,
            str(there.port),
        ],
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0 and "ConnectionRefusedError" in refused.stderr
