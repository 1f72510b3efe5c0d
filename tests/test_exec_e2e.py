"""`rxctl exec` and `rxctl shell` end to end: real rxd, real cluster, real Apptainer."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from tests.support import lifecycle
from tests.support.cli import ok, refused
from tests.support.cluster import processes_with, run_as, spawn_as, user_env, wait_for
from tests.support.daemon import RXCTL, Rxd
from tests.support.lifecycle import lifecycle_rxd
from tests.support.real_apptainer import BASE_IMAGE

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("container_runtime")]

IMAGE = str(BASE_IMAGE)
# Project names are this module's own: jobs are Slurm singletons named rx-<project>.
MAIN = "ex-main"
GPU = "ex-gpu"
WAKE = "ex-wake"


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    with lifecycle_rxd(bind=("rxalice", "rxbob", "rxcarol", "rxdave")) as daemon:
        try:
            yield daemon
        finally:
            # Free the cluster for others: no job of this module outlives it.
            for project in (MAIN, GPU, WAKE):
                daemon.rxctl("rxalice", "stop", "--project", project, "--force")
            for project in (MAIN, GPU, WAKE):
                wait_for(
                    lambda p=project: container_state(daemon, p) in RESTING,
                    timeout=60,
                    what=f"{project} to stop",
                )


# exec and shell exit 125 when rxctl itself, not the command, fails.
OWN_FAILURE = 125
RESTING = ("stopped", "disabled", "error", None)


def container_state(rxd: Rxd, project: str) -> str | None:
    result = rxd.rxctl("rxalice", "status", "--project", project, "--json")
    return json.loads(result.stdout)["state"] if result.returncode == 0 else None


def status(rxd: Rxd, project: str) -> dict:
    return lifecycle.status(rxd, "rxalice", project)


def wait_state(rxd: Rxd, project: str, *states: str, timeout: float = 120) -> dict:
    return lifecycle.wait_state(rxd, project, *states, timeout=timeout)


def running_project(rxd: Rxd, name: str, *options: str) -> dict:
    """The project, created and enabled once per module, running."""
    if rxd.rxctl("rxalice", "status", "--project", name, "--json").returncode != 0:
        ok(rxd.rxctl("rxalice", "project", "create", name, "--image", IMAGE, *options))
        ok(rxd.rxctl("rxalice", "enable", "--project", name))
    return wait_state(rxd, name, "running")


def rxctl_exec(rxd: Rxd, user: str, project: str, *argv: str, **kw) -> subprocess.CompletedProcess:
    return rxd.rxctl(user, "exec", "--project", project, "--", *argv, **kw)


def sleeping(seconds: str) -> list[int]:
    """The processes running `sleep <seconds>`."""
    return processes_with(f"sleep\x00{seconds}\x00")


# -- exec --------------------------------------------------------------------------------------


def test_exec_prints_both_streams_on_their_own_fds_and_exits_with_the_command(rxd: Rxd) -> None:
    running_project(rxd, MAIN)
    result = rxctl_exec(rxd, "rxalice", MAIN, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert ok(rxctl_exec(rxd, "rxalice", MAIN, "true")).stdout == ""


def test_exec_passes_argv_word_for_word_never_through_a_shell(rxd: Rxd) -> None:
    running_project(rxd, MAIN)
    words = ["a b", "$(id)", "; ls /", "it's", '"q"', "line\nbreak", "ünï", "*"]
    result = ok(rxctl_exec(rxd, "rxalice", MAIN, "printf", "[%s]\\n", *words))
    assert result.stdout == "".join(f"[{w}]\n" for w in words)


def test_a_command_that_cannot_start_fails_as_apptainer_says_on_either_path(rxd: Rxd) -> None:
    running_project(rxd, MAIN)
    missing = rxctl_exec(rxd, "rxalice", MAIN, "no-such-program")
    assert (missing.returncode, missing.stdout) == (255, "")
    assert missing.stderr == 'FATAL:   "no-such-program": executable file not found in $PATH\n'
    nowhere = rxd.rxctl("rxalice", "exec", "--project", MAIN, "--cwd", "/nowhere", "--", "pwd")
    assert nowhere.returncode == 255
    assert nowhere.stderr == (
        "FATAL:   failed to set working directory: chdir /nowhere: no such file or directory\n"
    )


def test_exec_runs_as_root_mapped_to_the_runtime_user_in_the_workspace(rxd: Rxd) -> None:
    project = running_project(rxd, MAIN)
    result = ok(rxctl_exec(rxd, "rxalice", MAIN, "sh", "-c", "id -u; pwd; echo hi > made.txt"))
    # --fakeroot (the default): root inside, and what it writes is the runtime user's outside.
    assert result.stdout == "0\n/workspace\n"
    made = Path(project["workspace"]) / "made.txt"
    assert made.read_text() == "hi\n"
    assert made.stat().st_uid == 2001


def test_a_manager_runs_commands_as_the_runtime_user(rxd: Rxd) -> None:
    project = running_project(rxd, MAIN)
    ok(
        rxd.rxctl(
            "rxalice", "project", "member", "add", "--project", MAIN, "rxdave", "--role", "manager"
        )
    )
    ok(rxctl_exec(rxd, "rxdave", MAIN, "touch", "by-manager.txt"))
    assert (Path(project["workspace"]) / "by-manager.txt").stat().st_uid == 2001


def test_a_viewer_and_a_non_member_are_refused(rxd: Rxd) -> None:
    running_project(rxd, MAIN)
    ok(
        rxd.rxctl(
            "rxalice", "project", "member", "add", "--project", MAIN, "rxbob", "--role", "viewer"
        )
    )
    assert refused(rxctl_exec(rxd, "rxbob", MAIN, "true"), OWN_FAILURE) == (
        f"Error: exec in project {MAIN} needs role owner or manager; you are viewer"
    )
    assert refused(rxctl_exec(rxd, "rxcarol", MAIN, "true"), OWN_FAILURE) == (
        f"Error: no project named '{MAIN}' (or you are not a member)"
    )
    assert refused(rxd.rxctl("rxbob", "shell", "--project", MAIN), OWN_FAILURE).startswith(
        "Error: rxctl shell needs"
    )


def test_the_project_may_come_from_rx_project(rxd: Rxd) -> None:
    running_project(rxd, MAIN)
    argv = [RXCTL, "--socket", str(rxd.socket), "exec", "--", "echo", "env"]
    result = ok(run_as("rxalice", argv, env={"RX_PROJECT": MAIN}))
    assert result.stdout == "env\n"


def granted_gpus(job_id: int) -> list[int]:
    """The GPU indexes Slurm granted the job (`scontrol show job -d`: "GRES=gpu:a100:1(IDX:0)")."""
    detail = subprocess.run(
        ["scontrol", "show", "job", "-d", str(job_id)], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"GRES=gpu[^(\s]*\(IDX:([0-9,-]+)\)", detail)
    assert match, detail
    indexes: list[int] = []
    for part in match.group(1).split(","):
        low, _, high = part.partition("-")
        indexes += range(int(low), int(high or low) + 1)
    return indexes


def test_exec_on_a_gpu_project_sees_its_gpu(rxd: Rxd) -> None:
    # --nv on nodes without NVIDIA's libraries: the container starts all the same.
    project = running_project(rxd, GPU, "--gpus", "1", "--partition", "gpu")
    (index,) = granted_gpus(project["job_id"])
    script = (
        'echo "$CUDA_VISIBLE_DEVICES"; for d in /dev/fakegpu*; do test -c "$d" && echo "$d"; done'
    )
    visible, *devices = ok(rxctl_exec(rxd, "rxalice", GPU, "sh", "-c", script)).stdout.split()
    # With ConstrainDevices the job sees only its own GPU, and Slurm numbers what a job sees from
    # 0: GPU 1 of the node is CUDA device 0 in here.
    assert visible == "0"
    # The device file Slurm's GRES handed out (gres.conf: File=/dev/fakegpu[0-1]) is there.
    assert f"/dev/fakegpu{index}" in devices


def test_exec_wakes_a_stopped_container_and_no_wake_refuses(rxd: Rxd) -> None:
    running_project(rxd, WAKE)
    ok(rxd.rxctl("rxalice", "stop", "--project", WAKE))
    wait_state(rxd, WAKE, "stopped")
    no_wake = rxd.rxctl("rxalice", "exec", "--project", WAKE, "--no-wake", "--", "true")
    assert refused(no_wake, OWN_FAILURE) == (
        f"Error: the container of {WAKE} is not running (stopped); run without --no-wake to wake it"
    )
    assert status(rxd, WAKE)["state"] == "stopped"
    woke = ok(rxctl_exec(rxd, "rxalice", WAKE, "echo", "awake"))
    assert woke.stdout == "awake\n"
    # stderr is not a terminal: each step of the wait is one line.
    lines = woke.stderr.splitlines()
    assert lines and all(line.startswith(f"waking {WAKE}: ") for line in lines), woke.stderr
    assert status(rxd, WAKE)["state"] == "running"


def test_exec_while_the_container_stops_wakes_it_again(rxd: Rxd) -> None:
    running_project(rxd, WAKE)
    ok(rxd.rxctl("rxalice", "stop", "--project", WAKE))
    assert ok(rxctl_exec(rxd, "rxalice", WAKE, "echo", "again")).stdout == "again\n"


def test_killing_rxctl_ends_the_step(rxd: Rxd) -> None:
    running_project(rxd, MAIN)
    # Through sh, so that only the step's own process has "sleep 3141" as its argv.
    argv = [
        RXCTL,
        "--socket",
        str(rxd.socket),
        "exec",
        "--project",
        MAIN,
        "--",
        "sh",
        "-c",
        "sleep 3141",
    ]
    # Its output goes nowhere: a pipe of ours would keep srun's stdout open after the kill.
    proc = spawn_as("rxalice", argv, output=subprocess.DEVNULL)
    try:
        wait_for(lambda: sleeping("3141"), timeout=60, what="the command")
    finally:
        proc.kill()
        proc.wait()
    # Ended by srun cancelling the step, well before rxd's last resort (SIGKILL after 30 s).
    wait_for(lambda: not sleeping("3141"), timeout=10, what="the step to end")
    wait_for(lambda: not processes_with(f"instance://rx-{MAIN}"), timeout=10, what="srun to end")


# The command waits in `wait` (a trapped signal interrupts it at once) for a background sleep
# (a non-interactive shell's background job ignores SIGINT). A foreground `sleep` would race: the
# step's processes are signalled one by one, and a sleep that dies first lets the shell run on
# and exit before its own SIGINT arrives; a terminal signals its whole foreground group at once.
CTRL_C_SCRIPT = "trap 'echo trapped; kill $!; exit 42' INT; sleep {} & wait; echo not-interrupted"

# Which way rxctl runs commands in this run (RXSLURM_EXEC_PATH=agent|step; unset: the agent
# when it answers, as for people). The whole suite runs either way.
EXEC_PATH = os.environ.get("RXSLURM_EXEC_PATH", "auto")
ON_STEP_PATH = EXEC_PATH == "step"
# Either way the command itself gets SIGINT, once, and ends as its trap says: through the agent
# it is the agent's child; as a step, it runs under the launcher, which a signal step reaches
# (never Apptainer's process in the step, which would end and take the command with it).
CTRL_C_STATUS = 42


def test_ctrl_c_reaches_the_command_and_everything_it_started(rxd: Rxd) -> None:
    running_project(rxd, MAIN)
    script = CTRL_C_SCRIPT.format(2718)
    proc = spawn_as(
        "rxalice",
        [RXCTL, "--socket", str(rxd.socket), "exec", "--project", MAIN, "--", "sh", "-c", script],
    )
    try:
        wait_for(lambda: sleeping("2718"), timeout=60, what="the command")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    # The shell's trap ran, once; the status is the trap's (see CTRL_C_STATUS).
    assert out.splitlines() == ["trapped"], (out, err)
    assert proc.returncode == CTRL_C_STATUS, (out, err)
    # Nothing the command started is left in the container.
    wait_for(lambda: not sleeping("2718"), timeout=10, what="the command's child to end")


# As CTRL_C_SCRIPT, for SIGTERM (which a background job does not ignore: the sleep ends too).
TERM_SCRIPT = "trap 'echo got-term; exit 7' TERM; sleep {} & wait; echo not-ended"
TERM_STATUS = 7


def test_sigterm_to_rxctl_reaches_the_command_and_its_trap_runs(rxd: Rxd) -> None:
    # As the agent does; on the step path through the launcher, never srun's cancel of the step
    # (which would end the command without its trap).
    running_project(rxd, MAIN)
    script = TERM_SCRIPT.format(2720)
    proc = spawn_as(
        "rxalice",
        [RXCTL, "--socket", str(rxd.socket), "exec", "--project", MAIN, "--", "sh", "-c", script],
    )
    try:
        wait_for(lambda: sleeping("2720"), timeout=60, what="the command")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert out.splitlines() == ["got-term"], (out, err)
    assert proc.returncode == TERM_STATUS, (out, err)
    wait_for(lambda: not sleeping("2720"), timeout=10, what="the command's child to end")


# -- terminals ---------------------------------------------------------------------------------


def spawn_rxctl(rxd: Rxd, *args: str) -> pexpect.spawn:
    env = {**user_env("rxalice"), "TERM": "xterm"}
    argv = [
        "-u",
        "rxalice",
        "--",
        "env",
        "-i",
        *(f"{k}={v}" for k, v in env.items()),
        RXCTL,
        "--socket",
        str(rxd.socket),
        *args,
    ]
    return pexpect.spawn("runuser", argv, encoding="utf-8", timeout=60, dimensions=(30, 100))


def test_shell_gives_an_interactive_shell(rxd: Rxd) -> None:
    running_project(rxd, MAIN)
    child = spawn_rxctl(rxd, "shell", "--project", MAIN)
    try:
        child.expect("Apptainer> ")
        child.sendline("echo $((6*7)); stty size; echo uid=$(id -u); exit")
        child.expect("42")
        child.expect("30 100")
        child.expect("uid=0")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_exec_with_a_terminal_gets_one(rxd: Rxd) -> None:
    running_project(rxd, MAIN)
    child = spawn_rxctl(rxd, "exec", "-t", "--project", MAIN, "--", "sh", "-c", "tty; exit 5")
    try:
        child.expect("/dev/pts/")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 5


def test_ctrl_c_in_a_terminal_reaches_the_command_once(rxd: Rxd) -> None:
    # The ^C byte goes through the terminal (raw mode) to the pty's foreground group: the
    # command's, not Apptainer's process in the step, which would end on it.
    running_project(rxd, MAIN)
    script = CTRL_C_SCRIPT.format(2719)
    child = spawn_rxctl(rxd, "exec", "-t", "--project", MAIN, "--", "sh", "-c", script)
    try:
        wait_for(lambda: sleeping("2719"), timeout=60, what="the command")
        child.sendcontrol("c")
        child.expect(pexpect.EOF)
        shown = child.before
    finally:
        child.close()
    assert shown.count("trapped") == 1 and "not-interrupted" not in shown, shown
    assert child.exitstatus == CTRL_C_STATUS, shown
    wait_for(lambda: not sleeping("2719"), timeout=10, what="the command's child to end")


def test_shell_needs_a_terminal(rxd: Rxd) -> None:
    assert refused(rxd.rxctl("rxalice", "shell", "--project", MAIN), OWN_FAILURE) == (
        "Error: rxctl shell needs a terminal; run a command with `rxctl exec -- CMD` instead"
    )
