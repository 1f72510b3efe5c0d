"""`rxctl exec --detach`, `rxctl ps`, `rxctl kill` and `rxctl logs --exec` on the real cluster:
a detached command keeps running after rxctl has returned, its output reaches its log, `ps`
lists it with its step, `kill` ends a detached `sleep` (and `ps` then shows it ended), a
viewer may neither start, list nor kill one; a plain stop is refused while one runs; and `rxctl
status` shows the CPU and memory a busy one uses (sstat) and the commands running."""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cli import ok, output, refused
from tests.support.cluster import processes_with, user_env, wait_for
from tests.support.daemon import RXCTL, Rxd
from tests.support.lifecycle import lifecycle_rxd, make_project, status, wait_state

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("container_runtime")]

OWNER = "rxalice"
VIEWER = "rxdave"
PROJECT = "dt-procs"
KEPT = 1  # [containers] job_logs_kept: each new job cleans the last one's logs
# Other developers' jobs may fill the cluster for a while: a wake waits that long for its node.
BUSY_CLUSTER_S = 300


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    with lifecycle_rxd(bind=(OWNER, VIEWER), job_logs_kept=str(KEPT)) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def project(rxd: Rxd) -> str:
    make_project(rxd, PROJECT)
    ok(rxd.rxctl(OWNER, "project", "member", "add", PROJECT, VIEWER, "--role", "viewer"))
    ok(rxd.rxctl(OWNER, "enable", "--project", PROJECT))
    wait_state(rxd, PROJECT, "running", timeout=BUSY_CLUSTER_S)
    return PROJECT


def ps(rxd: Rxd, user: str = OWNER) -> list[dict[str, Any]]:
    answer = json.loads(output(rxd.rxctl(user, "ps", "--project", PROJECT, "--json")))
    rows: list[dict[str, Any]] = answer["sessions"]
    return rows


def one(rxd: Rxd, command_id: str) -> dict[str, Any]:
    found = [r for r in ps(rxd) if r["id"] == command_id]
    assert len(found) == 1, found
    return found[0]


def detach(rxd: Rxd, *command: str) -> str:
    return output(
        rxd.rxctl(OWNER, "exec", "--project", PROJECT, "--detach", "--", *command)
    ).strip()


def job_steps(job_id: int) -> str:
    return subprocess.run(
        ["squeue", "--steps", f"--jobs={job_id}", "--noheader", "--format=%i|%j"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_a_detached_command_runs_on_and_its_output_reaches_its_log(rxd: Rxd, project: str) -> None:
    command_id = detach(rxd, "sh", "-c", "echo started; echo to-stderr >&2; sleep 600")

    row = one(rxd, command_id)
    assert (row["kind"], row["state"], row["started_by"]) == ("detached", "running", OWNER)
    assert row["argv"] == ["sh", "-c", "echo started; echo to-stderr >&2; sleep 600"]
    wait_for(lambda: one(rxd, command_id)["step_id"] is not None, 30, what="its step in squeue")
    step_id = one(rxd, command_id)["step_id"]
    assert step_id in job_steps(int(step_id.split(".")[0]))

    def logged() -> bool:
        shown = output(rxd.rxctl(OWNER, "logs", "--project", project, "--exec", command_id))
        return "started" in shown and "to-stderr" in shown

    wait_for(logged, 30, what="the command's output in its log")
    # Running as the container's runtime user, in its state folder.
    log = rxd.root / "containers" / f"rx-{project}" / f"exec-{command_id}.out"
    assert log.stat().st_uid == pwd.getpwnam(OWNER).pw_uid
    ok(rxd.rxctl(OWNER, "kill", "--project", project, command_id))


def test_ps_lists_an_open_exec_session_with_its_step_while_it_runs(rxd: Rxd, project: str) -> None:
    owner = pwd.getpwnam(OWNER)
    session = subprocess.Popen(
        [RXCTL, "--socket", str(rxd.socket), "exec", "--project", project, "--", "sleep", "60"],
        user=owner.pw_uid,
        group=owner.pw_gid,
        extra_groups=os.getgrouplist(OWNER, owner.pw_gid),
        # A session rxd runs as a step (the exec agent's sessions are the holder's to count).
        env={**user_env(OWNER), "RXSLURM_EXEC_PATH": "step"},
        cwd=owner.pw_dir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def listed() -> list[dict[str, Any]]:
            return [r for r in ps(rxd) if r["kind"] == "exec" and r["argv"] == ["sleep", "60"]]

        wait_for(lambda: any(r["step_id"] for r in listed()), 60, what="the session in ps")
        [row] = listed()
        assert (row["started_by"], row["state"]) == (OWNER, "running")
        assert row["step_id"] in job_steps(int(row["step_id"].split(".")[0]))
    finally:
        session.terminate()
        session.wait(timeout=60)
    wait_for(lambda: not listed(), 60, what="the ended session to leave ps")


def test_logs_follow_a_detached_commands_output_until_it_exits(rxd: Rxd, project: str) -> None:
    command_id = detach(rxd, "sh", "-c", "echo first; sleep 3; echo second; exit 4")

    followed = rxd.rxctl(OWNER, "logs", "--project", project, "--exec", command_id, "-f")

    assert followed.returncode == 0, followed.stderr
    assert followed.stdout.splitlines()[:2] == ["first", "second"]
    assert f"command {command_id} exited with status 4" in followed.stderr
    assert one(rxd, command_id)["exit_code"] == 4


def test_a_detached_commands_own_variables_reach_it_in_no_argv(rxd: Rxd, project: str) -> None:
    value = "detached-value-" + os.urandom(6).hex()
    command_id = output(
        rxd.rxctl(
            OWNER,
            "exec",
            "--project",
            project,
            "-e",
            f"RX_OWN={value}",
            "--detach",
            "--",
            "sh",
            "-c",
            'echo "got $RX_OWN"; sleep 20; exit 5',
        )
    ).strip()
    # rxctl has returned: while the command runs, no process on this one-machine cluster (rxd,
    # the keeper, srun, slurmstepd, apptainer, the shell) has the value in its argv.
    wait_for(lambda: one(rxd, command_id)["step_id"] is not None, 30, what="its step in squeue")
    assert processes_with(value) == []

    followed = rxd.rxctl(OWNER, "logs", "--project", project, "--exec", command_id, "-f")

    assert followed.stdout.splitlines()[0] == f"got {value}"
    assert f"command {command_id} exited with status 5" in followed.stderr
    assert value not in rxd.log_text()


def test_kill_ends_a_detached_sleep_and_ps_shows_it_ended(rxd: Rxd, project: str) -> None:
    command_id = detach(rxd, "sleep", "600")
    wait_for(lambda: one(rxd, command_id)["step_id"] is not None, 30, what="its step in squeue")
    step_id = one(rxd, command_id)["step_id"]

    said = output(rxd.rxctl(OWNER, "kill", "--project", project, command_id))

    assert said.strip() == f"sent TERM to {command_id} (step {step_id})"
    wait_for(lambda: one(rxd, command_id)["state"] == "ended", 60, what="the command to end")
    ended = one(rxd, command_id)
    assert ended["signalled"] == "TERM"
    assert step_id not in job_steps(int(step_id.split(".")[0]))
    # No `sleep 600` of the container's is left on the node.
    left = subprocess.run(
        ["pgrep", "-u", OWNER, "-f", "^sleep 600$"], capture_output=True, text=True, check=False
    ).stdout.split()
    running = [r for r in ps(rxd) if r["state"] == "running" and r["argv"] == ["sleep", "600"]]
    assert len(left) == len(running), (left, running)
    shown = output(rxd.rxctl(OWNER, "ps", "--project", project))
    assert any(
        line.startswith(command_id) and "exited 143" in line for line in shown.splitlines()
    ), shown


def test_a_stop_while_a_detached_command_runs_is_refused_naming_it(rxd: Rxd, project: str) -> None:
    command_id = detach(rxd, "sleep", "600")

    line = refused(rxd.rxctl(OWNER, "stop", "--project", project))

    assert re.search(r"\d+ running detached commands? \(", line), line
    assert f"{command_id} sleep by {OWNER}" in line and "--force" in line, line
    assert status(rxd, OWNER, project)["state"] == "running"
    countdowns = status(rxd, OWNER, project)["countdowns"]
    assert countdowns["detached"] >= 1 and countdowns["idle_sleep_in_s"] is None, countdowns
    ok(rxd.rxctl(OWNER, "kill", "--project", project, command_id))
    wait_for(lambda: one(rxd, command_id)["state"] == "ended", 60, what="the command to end")


def test_a_detached_command_keeps_its_container_from_idle_sleep(rxd: Rxd) -> None:
    # Two containers with a 1-minute idle timeout: the one with a detached command started
    # first, so once the other has gone to sleep, this one had its idle minute too.
    busy, idle = "dt-busy", "dt-idle"
    for name in (busy, idle):
        make_project(rxd, name, "--idle-timeout", "1")
    ok(rxd.rxctl(OWNER, "enable", "--project", busy))
    wait_state(rxd, busy, "running", timeout=BUSY_CLUSTER_S)
    command_id = output(
        rxd.rxctl(OWNER, "exec", "--project", busy, "--detach", "--", "sleep", "600")
    ).strip()
    ok(rxd.rxctl(OWNER, "enable", "--project", idle))
    wait_state(rxd, idle, "running", timeout=BUSY_CLUSTER_S)

    slept = wait_state(rxd, idle, "stopped", timeout=180)

    assert slept["reason"] == "idle for 1 min"
    assert status(rxd, OWNER, busy)["state"] == "running"
    ok(rxd.rxctl(OWNER, "kill", "--project", busy, command_id))
    ok(rxd.rxctl(OWNER, "stop", "--project", busy, "--force"))


def test_status_shows_the_cpu_and_memory_a_busy_command_uses(rxd: Rxd, project: str) -> None:
    # 64 MiB held and one CPU kept busy, until killed.
    command_id = detach(rxd, "python3", "-c", "x = bytearray(64 << 20)\nwhile True:\n    x[0] = 1")
    seen: dict[str, Any] = {}

    def busy() -> bool:
        # status caches for a few seconds: each call may be the same sample.
        seen.update(status(rxd, VIEWER, project).get("usage") or {})
        return seen.get("cpu_s", 0) >= 1 and seen.get("memory_bytes", 0) >= 64 << 20

    wait_for(busy, 60, what=f"sstat to see the command's CPU and memory ({seen})")
    assert seen["gpus"] == 0
    shown = output(rxd.rxctl(VIEWER, "status", "--project", project))
    assert re.search(r"^usage +CPU .*used\)?, memory [0-9.]+ MiB, GPUs 0$", shown, re.M), shown
    ok(rxd.rxctl(OWNER, "kill", "--project", project, command_id))


def test_status_shows_the_gpus_the_job_holds(rxd: Rxd) -> None:
    gpu_project = "dt-gpu"
    make_project(rxd, gpu_project, "--gpus", "1", "--partition", "gpu")
    ok(rxd.rxctl(OWNER, "enable", "--project", gpu_project))
    wait_state(rxd, gpu_project, "running", timeout=BUSY_CLUSTER_S)

    usage = status(rxd, OWNER, gpu_project)["usage"]

    assert usage["gpus"] == 1, usage
    ok(rxd.rxctl(OWNER, "stop", "--project", gpu_project))


def test_a_viewer_may_not_start_list_or_kill(rxd: Rxd, project: str) -> None:
    needs = f"Error: exec in project {project} needs role owner or manager; you are viewer"
    assert refused(rxd.rxctl(VIEWER, "ps", "--project", project)) == needs
    assert (
        refused(
            rxd.rxctl(VIEWER, "exec", "--project", project, "--no-wake", "--detach", "true"), 125
        )
        == needs
    )
    assert refused(rxd.rxctl(VIEWER, "kill", "--project", project, "0123abcd")) == needs


def test_kill_lets_a_commands_term_trap_run(rxd: Rxd, project: str) -> None:
    script = "trap 'echo got-term; exit 7' TERM; echo ready; sleep 600 & wait"
    command_id = detach(rxd, "sh", "-c", script)

    def ready() -> bool:
        shown = output(rxd.rxctl(OWNER, "logs", "--project", project, "--exec", command_id))
        return "ready" in shown

    wait_for(ready, 30, what="the command to set its trap")
    ok(rxd.rxctl(OWNER, "kill", "--project", project, command_id))
    wait_for(lambda: one(rxd, command_id)["state"] == "ended", 60, what="the command to end")

    shown = output(rxd.rxctl(OWNER, "logs", "--project", project, "--exec", command_id))
    assert "got-term" in shown
    assert one(rxd, command_id)["exit_code"] == 7


def instance_log_files(rxd: Rxd, project: str) -> list[str]:
    logs = rxd.root / "containers" / f"rx-{project}" / "apptainer" / "instances" / "logs"
    return sorted(p.name for p in logs.glob("*/*/*"))


def test_logs_instance_shows_what_the_instance_wrote_and_old_ones_are_cleaned(
    rxd: Rxd,
) -> None:
    name = "dt-inst"
    make_project(rxd, name)
    ok(rxd.rxctl(OWNER, "project", "member", "add", name, VIEWER, "--role", "viewer"))
    ok(rxd.rxctl(OWNER, "enable", "--project", name))
    first = int(wait_state(rxd, name, "running", timeout=BUSY_CLUSTER_S)["job_id"])
    # The instance's own stdout is its first process's: what reaches it is in Apptainer's log.
    ok(rxd.rxctl(OWNER, "exec", "--project", name, "--", "sh", "-c", "echo hi > /proc/1/fd/1"))

    shown = output(rxd.rxctl(VIEWER, "logs", "--project", name, "--instance", "out"))

    assert "hi\n" in shown, shown
    assert f"rx-{name}-{first}.out" in instance_log_files(rxd, name)

    ok(rxd.rxctl(OWNER, "stop", "--project", name))
    wait_state(rxd, name, "stopped")
    ok(rxd.rxctl(OWNER, "start", "--project", name))
    second = int(wait_state(rxd, name, "running", timeout=BUSY_CLUSTER_S)["job_id"])
    ok(rxd.rxctl(OWNER, "stop", "--project", name))
    wait_state(rxd, name, "stopped")

    def first_cleaned() -> bool:
        return not any(f"-{first}." in f for f in instance_log_files(rxd, name))

    wait_for(first_cleaned, 30, what=f"job {first}'s instance logs to be cleaned")
    assert any(f"-{second}." in f for f in instance_log_files(rxd, name))
    said = rxd.rxctl(OWNER, "logs", "--project", name, "--instance", "out", "--job", str(first))
    assert said.returncode == 0 and said.stdout == ""
    assert f"job {first}'s instance log (out) was cleaned" in said.stderr
