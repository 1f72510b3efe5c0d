"""rxctl on a login node: nothing of rxd's host is visible there but its network door.

Every command runs in a mount namespace (tests/support/login_node.py) where rxd's socket and
ledger folders are empty tmpfs mounts; munged and the shared storage are as on the host.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from tests.support.cli import ok
from tests.support.cluster import wait_for
from tests.support.daemon import PRIVATE_ROOT, RXCTL, Rxd, free_port, running_rxd, test_root
from tests.support.lifecycle import lifecycle_config
from tests.support.login_node import REPO, login_argv, run_on_login_node
from tests.support.munge import needs_munged
from tests.support.real_apptainer import BASE_IMAGE
from tests.test_exec_e2e import (
    CTRL_C_SCRIPT,
    CTRL_C_STATUS,
    ON_STEP_PATH,
    TERM_SCRIPT,
    TERM_STATUS,
    sleeping,
)

pytestmark = [pytest.mark.cluster, needs_munged, pytest.mark.usefixtures("container_runtime")]

IMAGE = str(BASE_IMAGE)
PROJECT = "ln-main"
ALICE_UID = 2001


class LoginNode:
    def __init__(self, rxd: Rxd, port: int) -> None:
        self.rxd = rxd
        self.server = f"127.0.0.1:{port}"
        self.hidden = [rxd.socket.parent, rxd.ledger.parent]

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"RXSLURM_SERVER": self.server, **(extra or {})}

    def run(self, user: str, *argv: str, input: str | None = None) -> subprocess.CompletedProcess:
        return run_on_login_node(user, argv, self.hidden, self.env(), input=input)

    def rxctl(self, user: str, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return self.run(user, RXCTL, *args, input=input)

    def argv(self, user: str, *args: str, env: dict[str, str] | None = None) -> list[str]:
        return login_argv(user, [RXCTL, *args], self.hidden, self.env(env))

    def status(self, user: str = "rxalice") -> dict:
        result = ok(self.rxctl(user, "status", "--project", PROJECT, "--json"))
        return json.loads(result.stdout)


@pytest.fixture(scope="module")
def login() -> Iterator[LoginNode]:
    port = free_port()
    with running_rxd(lambda root: f'listen = "127.0.0.1:{port}"\n' + lifecycle_config(root)) as rxd:
        node = LoginNode(rxd, port)
        try:
            yield node
        finally:
            node.rxctl("rxalice", "stop", "--project", PROJECT, "--force")


def running(login: LoginNode) -> dict:
    """The module's project, created and enabled from the login node once, running."""
    if login.rxctl("rxalice", "status", "--project", PROJECT, "--json").returncode != 0:
        ok(login.rxctl("rxalice", "project", "create", PROJECT, "--image", IMAGE))
        ok(login.rxctl("rxalice", "enable", "--project", PROJECT))
        ok(
            login.rxctl(
                "rxalice",
                "project",
                "member",
                "add",
                "--project",
                PROJECT,
                "rxdave",
                "--role",
                "manager",
            )
        )
    elif login.status()["state"] == "stopped":
        ok(login.rxctl("rxalice", "start", "--project", PROJECT))
    seen: dict = {}

    def reached() -> dict | None:
        seen.update(login.status())
        return dict(seen) if seen["state"] == "running" else None

    try:
        return wait_for(reached, timeout=180, interval=0.5, what=f"{PROJECT} running")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; last status: {seen}") from None


def test_the_login_node_sees_nothing_of_rxd_but_its_door(login: LoginNode) -> None:
    # On the host, the socket folder holds rxd's two sockets; on the login node the folder of
    # every test rxd's sockets and ledger is empty.
    assert sorted(p.name for p in login.rxd.socket.parent.iterdir()) == [
        "rxd-exec.sock",
        "rxd.sock",
    ]
    assert login.rxd.ledger.exists()
    listing = ok(login.run("rxalice", "ls", "-A", str(PRIVATE_ROOT), str(login.rxd.root)))
    assert listing.stdout.split("\n\n")[0] == f"{PRIVATE_ROOT}:", listing.stdout
    assert "rxd.toml" in listing.stdout.split()  # the shared folder is there
    local = login.run("rxalice", RXCTL, "--socket", str(login.rxd.socket), "whoami")
    assert local.returncode == 1 and "rxd is not running" in local.stderr, local.stderr
    # munged is reachable: the door is what rxctl uses.
    me = json.loads(ok(login.rxctl("rxalice", "whoami", "--json")).stdout)
    assert (me["user"], me["uid"], me["door"]) == ("rxalice", ALICE_UID, "munge")


def test_a_container_is_made_used_and_stopped_from_the_login_node(login: LoginNode) -> None:
    state = running(login)
    assert state["job_id"]
    both = login.rxctl(
        "rxalice", "exec", "--project", PROJECT, "--", "sh", "-c", "echo out; echo err >&2; exit 3"
    )
    assert (both.returncode, both.stdout, both.stderr) == (3, "out\n", "err\n")
    fed = ok(login.rxctl("rxalice", "exec", "--project", PROJECT, "--", "cat", input="fed\n"))
    assert fed.stdout == "fed\n"
    # Root inside the container is the runtime user outside: the file on the host is alice's.
    ok(login.rxctl("rxalice", "exec", "--project", PROJECT, "--", "touch", "by-owner.txt"))
    assert (Path(state["workspace"]) / "by-owner.txt").stat().st_uid == ALICE_UID
    if ON_STEP_PATH:
        # The owner is the container's runtime user: rxctl started these steps itself.
        assert "exec step handed to its caller" in login.rxd.log_text()
    else:
        assert "exec handed to the container's agent" in login.rxd.log_text()


def test_a_managers_exec_is_relayed_over_the_door(login: LoginNode) -> None:
    running(login)
    # As a step, rxd runs it (as the owner) and relays it; else the agent runs it on rxd's
    # ticket.
    done = "exec ended" if ON_STEP_PATH else "exec handed to the container's agent"
    before = login.rxd.log_text().count(done)
    result = login.rxctl(
        "rxdave",
        "exec",
        "--project",
        PROJECT,
        "--",
        "sh",
        "-c",
        "touch by-manager.txt; cat; echo e >&2; exit 4",
        input="piped\n",
    )
    assert (result.returncode, result.stdout, result.stderr) == (4, "piped\n", "e\n")
    # As the owner's identity, not the manager's.
    workspace = Path(login.status()["workspace"])
    assert (workspace / "by-manager.txt").stat().st_uid == ALICE_UID
    assert login.rxd.log_text().count(done) == before + 1
    viewer = login.rxctl("rxcarol", "exec", "--project", PROJECT, "--", "true")
    assert viewer.returncode == 125  # rxctl exec's own failures, as on the local socket
    assert viewer.stderr == f"Error: no project named '{PROJECT}' (or you are not a member)\n"


def shell(login: LoginNode, user: str) -> None:
    argv = login.argv(user, "shell", "--project", PROJECT, env={"TERM": "xterm"})
    child = pexpect.spawn(
        argv[0], argv[1:], encoding="utf-8", timeout=60, dimensions=(30, 100), cwd=str(REPO)
    )
    try:
        child.expect("Apptainer> ")
        child.sendline("echo $((6*7)); stty size; echo uid=$(id -u); exit 7")
        child.expect("42")
        child.expect("30 100")
        child.expect("uid=0")  # root inside, the runtime user outside
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 7


def test_a_shell_on_the_login_node_under_a_terminal(login: LoginNode) -> None:
    running(login)
    shell(login, "rxalice")  # srun --pty started by rxctl itself


def test_a_managers_shell_is_relayed_with_its_terminal(login: LoginNode) -> None:
    running(login)
    shell(login, "rxdave")  # rxd's pty, relayed over the door


@pytest.mark.parametrize("user", ["rxalice", "rxdave"])
def test_ctrl_c_on_the_login_node_reaches_the_command_once(login: LoginNode, user: str) -> None:
    running(login)
    marker = {"rxalice": "2711", "rxdave": "2712"}[user]
    script = CTRL_C_SCRIPT.format(marker)
    argv = login.argv(user, "exec", "--project", PROJECT, "--", "sh", "-c", script)
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO)
    )
    try:
        wait_for(lambda: sleeping(marker), timeout=60, what="the command")
        proc.send_signal(signal.SIGINT)  # unshare and the helper exec: this is rxctl
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    # As on rxd's host (CTRL_C_STATUS): the trap's status, on either path; the trap ran once.
    assert proc.returncode == CTRL_C_STATUS, (out, err)
    assert out.splitlines() == ["trapped"], out
    wait_for(lambda: not sleeping(marker), timeout=10, what="the command's child to end")


@pytest.mark.parametrize("user", ["rxalice", "rxdave"])
def test_sigterm_on_the_login_node_runs_the_commands_trap(login: LoginNode, user: str) -> None:
    running(login)
    marker = {"rxalice": "2713", "rxdave": "2714"}[user]
    argv = login.argv(
        user, "exec", "--project", PROJECT, "--", "sh", "-c", TERM_SCRIPT.format(marker)
    )
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO)
    )
    try:
        wait_for(lambda: sleeping(marker), timeout=60, what="the command")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == TERM_STATUS, (out, err)
    assert out.splitlines() == ["got-term"], out
    wait_for(lambda: not sleeping(marker), timeout=10, what="the command's child to end")


def test_stop_and_status_from_the_login_node(login: LoginNode) -> None:
    running(login)
    ok(login.rxctl("rxalice", "stop", "--project", PROJECT))
    wait_for(lambda: login.status()["state"] == "stopped", timeout=90, interval=0.5, what="stop")
    assert login.status("rxdave")["state"] == "stopped"


@pytest.mark.parametrize("user", ["rxalice", "rxdave"])
def test_a_batch_job_runs_status_and_exec(login: LoginNode, user: str) -> None:
    """Submitted from the login node; the job's rxctl finds rxd through the exported
    $RXSLURM_SERVER (the owner's exec starts its step from inside the job; a manager's is
    relayed)."""
    running(login)
    out_dir = test_root()
    pw = pwd.getpwnam(user)
    os.chown(out_dir, pw.pw_uid, pw.pw_gid)
    out = out_dir / "job.out"
    # The job's node does not see rxd's socket: its rxctl has only the door.
    script = (
        f"test -e {login.rxd.socket} && echo sees-the-socket; "
        f"{RXCTL} status --project {PROJECT} --json > {out_dir}/status.json && "
        f"{RXCTL} exec --project {PROJECT} -- "
        f"sh -c 'touch by-{user}-job; echo in-job; exit 6'; echo rc=$?"
    )
    argv = ["sbatch", "--parsable", "-t", "5", "-c", "1", "--mem=100", "-o", str(out)]
    submitted = ok(login.run(user, *argv, "--wrap", script))
    job = submitted.stdout.strip().split(";")[0]
    try:

        def done() -> str | None:
            state = subprocess.run(
                ["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30
            ).stdout.strip()
            return None if state else out.read_text() if out.exists() else None

        text = wait_for(done, timeout=300, interval=0.5, what=f"batch job {job} to finish")
        assert text == "in-job\nrc=6\n", text
        workspace = Path(login.status()["workspace"])
        assert (workspace / f"by-{user}-job").stat().st_uid == ALICE_UID
        assert json.loads((out_dir / "status.json").read_text())["state"] == "running"
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)
        shutil.rmtree(out_dir, ignore_errors=True)
