"""A project's variables and secrets end to end (issue 17): real rxd, real cluster, real Apptainer.

A secret set through stdin reaches a command in the container; while that command runs, its value
is in no process's command line, and afterwards in neither rxd's log, the ledger's files, the
holder's batch script, `rxctl status`, the history nor the batch plan.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import lifecycle
from tests.support.cli import ok, refused
from tests.support.cluster import run_as, spawn_as, wait_for
from tests.support.daemon import RXCTL, Rxd
from tests.support.lifecycle import lifecycle_rxd
from tests.support.real_apptainer import BASE_IMAGE
from tests.test_tcp_door import opened_door

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("container_runtime")]

# Jobs are Slurm singletons named rx-<project>: the name is this module's own.
PROJECT = "sec-main"
# Random per run, so finding it anywhere can only mean this test's secret leaked.
VALUE = "rxsecret-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    with lifecycle_rxd(bind=("rxalice", "rxbob", "rxcarol", "rxdave")) as daemon:
        try:
            yield daemon
        finally:
            # Free the cluster for others: no job of this module outlives it.
            if daemon.rxctl("rxalice", "stop", "--project", PROJECT).returncode == 0:
                lifecycle.wait_state(daemon, PROJECT, "stopped", "error", timeout=60)


def running_project(rxd: Rxd) -> dict:
    if rxd.rxctl("rxalice", "status", "--project", PROJECT, "--json").returncode != 0:
        ok(rxd.rxctl("rxalice", "project", "create", PROJECT, "--image", str(BASE_IMAGE)))
        ok(rxd.rxctl("rxalice", "env", "set", "--project", PROJECT, "PLAIN_VAR=plain value"))
        ok(rxd.rxctl("rxalice", "enable", "--project", PROJECT))
    return lifecycle.wait_state(rxd, PROJECT, "running", timeout=180)


def with_secret(rxd: Rxd) -> dict:
    project = running_project(rxd)
    ok(rxd.rxctl("rxalice", "secret", "set", "--project", PROJECT, "API_TOKEN", input=VALUE + "\n"))
    return project


def cmdlines() -> dict[int, bytes]:
    """Every process's command line (NUL-separated words), by pid."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            found[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
    return found


def cmdlines_with(needle: bytes) -> list[int]:
    return [pid for pid, cmdline in cmdlines().items() if needle in cmdline]


def sleeping(seconds: str) -> list[int]:
    """The command `sleep <seconds>` itself (Apptainer runs it by its path), not rxctl's or
    srun's processes whose command lines name it too."""
    return [
        pid
        for pid, cmdline in cmdlines().items()
        if cmdline.split(b"\0")[:2]
        in ([b"sleep", seconds.encode()], [b"/usr/bin/sleep", seconds.encode()])
    ]


def environ_of(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def test_a_secret_set_through_stdin_reaches_the_command_with_the_variables(rxd: Rxd) -> None:
    with_secret(rxd)
    shown = 'printf "%s|%s|%s" "$API_TOKEN" "$PLAIN_VAR" "$ONE_OFF"'
    result = ok(
        rxd.rxctl(
            "rxalice", "exec", "--project", PROJECT, "-e", "ONE_OFF=x=y", "--", "sh", "-c", shown
        )
    )
    assert result.stdout == f"{VALUE}|plain value|x=y"
    # A manager execs with the secret too.
    ok(
        rxd.rxctl(
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
    result = ok(rxd.rxctl("rxdave", "exec", "--project", PROJECT, "--", "printenv", "API_TOKEN"))
    assert result.stdout == VALUE + "\n"


def test_the_value_is_in_no_argv_log_ledger_script_status_history_or_plan(rxd: Rxd) -> None:
    project = with_secret(rxd)
    needle = VALUE.encode()
    marker = "9713"
    proc = spawn_as(
        "rxalice",
        [RXCTL, "--socket", str(rxd.socket), "exec", "--project", PROJECT, "--", "sleep", marker],
        output=subprocess.DEVNULL,
    )
    try:
        sleepers = wait_for(lambda: sleeping(marker), timeout=60, what="the command")
        # The scan means something: the command running now holds the secret...
        assert any(needle in environ_of(pid) for pid in sleepers)
        # ...and no process on this machine (rxctl, rxd, srun, slurmstepd, apptainer, the
        # command) has it in its command line.
        assert cmdlines_with(needle) == []
    finally:
        proc.kill()
        proc.wait()

    assert needle not in rxd.log_text().encode()
    for suffix in ("", "-wal", "-shm", "-journal"):
        ledger_file = Path(f"{rxd.ledger}{suffix}")
        if ledger_file.exists():
            assert needle not in ledger_file.read_bytes(), ledger_file.name
    job_id = project["job_id"]
    script = subprocess.run(
        ["scontrol", "write", "batch_script", str(job_id), "-"],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    assert b"APPTAINER_CONFIGDIR" in script  # the holder's script, read in full
    assert needle not in script
    for words in (
        ("status", "--project", PROJECT, "--json"),
        ("status", "--project", PROJECT),
        ("history", "--project", PROJECT, "--json"),
        ("secret", "list", "--project", PROJECT, "--json"),
        ("env", "list", "--project", PROJECT, "--json"),
    ):
        shown = ok(rxd.rxctl("rxalice", *words))
        assert VALUE not in shown.stdout + shown.stderr, words
    history = json.loads(ok(rxd.rxctl("rxalice", "history", "--project", PROJECT, "--json")).stdout)
    assert {"name": "API_TOKEN"} in [e.get("detail") for e in history["events"]]
    # What `rxctl run` asks rxd for, asked as the member.
    plan_url = f"http://rxd/v1/projects/{PROJECT}/batch-plan"
    answer = ok(
        run_as("rxalice", ["curl", "-sf", "--unix-socket", str(rxd.socket), plan_url])
    ).stdout
    assert json.loads(answer)["env"] == {"PLAIN_VAR": "plain value"}
    assert VALUE not in answer


def test_the_store_is_root_only_and_a_viewer_sees_names_never_values(rxd: Rxd) -> None:
    project = with_secret(rxd)
    folder = rxd.ledger.parent / "secrets"
    info = folder.lstat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o700)
    files = list(folder.iterdir())
    assert [(f.stat().st_uid, stat.S_IMODE(f.stat().st_mode)) for f in files] == [(0, 0o600)]
    del project
    ok(
        rxd.rxctl(
            "rxalice",
            "project",
            "member",
            "add",
            "--project",
            PROJECT,
            "rxcarol",
            "--role",
            "viewer",
        )
    )
    listed = json.loads(
        ok(rxd.rxctl("rxcarol", "secret", "list", "--project", PROJECT, "--json")).stdout
    )
    assert [s["name"] for s in listed["secrets"]] == ["API_TOKEN"]
    assert VALUE not in json.dumps(listed)
    refused(rxd.rxctl("rxcarol", "secret", "set", "--project", PROJECT, "OTHER", input="x"))
    refused(rxd.rxctl("rxcarol", "exec", "--project", PROJECT, "--", "printenv", "API_TOKEN"), 125)
    # Nobody but root reads the file: not even the runtime user the container runs as.
    read = subprocess.run(
        ["runuser", "-u", "rxalice", "--", "cat", str(files[0])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert read.returncode != 0 and VALUE not in read.stdout


def test_reserved_and_malformed_names_are_refused_in_one_line_and_change_nothing(rxd: Rxd) -> None:
    running_project(rxd)
    for word, reason in (
        ("LD_PRELOAD=/tmp/x.so", "dynamic loader"),
        ("APPTAINER_BIND=/", "Apptainer"),
        ("SLURM_JOB_ID=1", "Slurm"),
        ("1BAD=x", "POSIX"),
    ):
        assert reason in refused(rxd.rxctl("rxalice", "env", "set", "--project", PROJECT, word))
    result = rxd.rxctl(
        "rxalice", "exec", "--project", PROJECT, "-e", "SINGULARITY_BIND=/", "--", "true"
    )
    assert "Apptainer" in refused(result, 125)
    names = [
        v["name"]
        for v in json.loads(
            ok(rxd.rxctl("rxalice", "env", "list", "--project", PROJECT, "--json")).stdout
        )["variables"]
    ]
    assert names == ["PLAIN_VAR"]


def test_deleting_a_project_removes_its_secrets_and_a_new_one_of_its_name_has_none(
    rxd: Rxd,
) -> None:
    gone = "sec-gone"
    ok(rxd.rxctl("rxalice", "project", "create", gone, "--image", str(BASE_IMAGE)))
    ok(rxd.rxctl("rxalice", "secret", "set", "--project", gone, "OLD", input="old-value"))
    folder = rxd.ledger.parent / "secrets"
    before = set(folder.iterdir())

    ok(rxd.rxctl("rxalice", "project", "delete", "--project", gone, "--yes"))
    ok(rxd.rxctl("rxalice", "project", "create", gone, "--image", str(BASE_IMAGE)))

    assert len(before - set(folder.iterdir())) == 1
    listed = json.loads(
        ok(rxd.rxctl("rxalice", "secret", "list", "--project", gone, "--json")).stdout
    )
    assert listed["secrets"] == []


def test_over_the_network_door_a_project_with_secrets_is_relayed_never_handed_over() -> None:
    """A step handed to its caller (the runtime user, on another host) carries its environment
    over TCP, and the exec agent's commands get none: with secrets, rxd runs the step itself;
    without, it hands the command over as before."""
    handed = "exec step handed to its caller"
    project = "sec-door"
    with opened_door() as door:
        try:
            ok(door.rxctl("rxalice", "project", "create", project, "--image", str(BASE_IMAGE)))
            ok(door.rxctl("rxalice", "enable", "--project", project))
            lifecycle.wait_state(door.rxd, project, "running", timeout=180)
            ok(door.rxctl("rxalice", "secret", "set", "--project", project, "API_TOKEN"))
            # (an empty value: stdin is not a terminal here and holds nothing)
            result = ok(door.rxctl("rxalice", "exec", "--project", project, "--", "env"))
            assert "API_TOKEN=\n" in result.stdout
            assert handed not in door.rxd.log_text()

            ok(door.rxctl("rxalice", "secret", "rm", "--project", project, "API_TOKEN"))
            ok(door.rxctl("rxalice", "exec", "--project", project, "--", "true"))
            # Without secrets the runtime user runs it themselves: a step handed over, or the
            # container's exec agent (whose commands get no project variables or secrets).
            log = door.rxd.log_text()
            assert handed in log or "exec handed to the container's agent" in log
        finally:
            if door.rxctl("rxalice", "stop", "--project", project).returncode == 0:
                lifecycle.wait_state(door.rxd, project, "stopped", "error", timeout=60)


def test_a_batch_step_gets_the_projects_variables_and_no_secret(rxd: Rxd) -> None:
    with_secret(rxd)
    shown = 'printf "%s|%s" "$PLAIN_VAR" "${API_TOKEN-unset}"'
    argv = [RXCTL, "--socket", str(rxd.socket), "run", "--project", PROJECT, "--", "sh", "-c"]
    result = ok(run_as("rxalice", [*argv, shown]))
    assert result.stdout == "plain value|unset"
