"""Overlay snapshots on the real cluster with the real Apptainer: what the owner installed in the
container reaches a member's own `apptainer exec --overlay SNAP:ro` once the container slept; a
request while it is awake waits for its sleep; viewers and strangers cannot open the snapshot;
the awake container keeps writing its overlay while a read-only mount of the snapshot reads the
old content, and neither fails."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rxslurm.cli.render import when
from tests.support.cli import ok, output
from tests.support.cluster import run_as, spawn_as, wait_for
from tests.support.daemon import Rxd
from tests.support.lifecycle import lifecycle_rxd, make_project, status, wait_state
from tests.support.real_apptainer import APPTAINER

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("container_runtime")]

PROJECT = "snaps"
OWNER = "rxalice"
EDITOR = "rxcarol"  # may run batch steps (role action `run`), may not exec
VIEWER = "rxdave"
STRANGER = "rxbob"
INSTALL = "mkdir -p /opt/rx && echo v1 > /opt/rx/VERSION"


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    with lifecycle_rxd(bind=(OWNER, EDITOR, VIEWER, STRANGER)) as daemon:
        make_project(daemon, PROJECT)
        ok(
            daemon.rxctl(
                OWNER, "project", "member", "add", "--project", PROJECT, EDITOR, "--role", "editor"
            )
        )
        ok(
            daemon.rxctl(
                OWNER, "project", "member", "add", "--project", PROJECT, VIEWER, "--role", "viewer"
            )
        )
        yield daemon


def batch_plan(rxd: Rxd, user: str) -> subprocess.CompletedProcess[str]:
    """GET the batch plan as `user` (what `rxctl run` and the SPANK plugin ask)."""
    url = f"http://rxd/v1/projects/{PROJECT}/batch-plan"
    return run_as(user, ["curl", "--silent", "--show-error", "--unix-socket", str(rxd.socket), url])


def step(user: str, plan: dict[str, Any], *command: str, **kw: Any) -> Any:
    """A member's batch step as the plan describes it, run as them: the image, the snapshot
    read-only, the workspace at /workspace."""
    argv = [APPTAINER, "exec", "--overlay", f"{plan['snapshot']['path']}:ro"]
    argv += ["-B", f"{plan['workspace']}:{plan['workspace_target']}", plan["image"], *command]
    if kw.pop("popen", False):
        return spawn_as(user, argv, stdin=subprocess.PIPE)
    return run_as(user, argv, cwd="/", **kw)


def wait_snapshot(rxd: Rxd, other_than: int | None = None) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def taken() -> bool:
        seen.update(status(rxd, OWNER, PROJECT))
        snap = seen.get("snapshot")
        return bool(snap) and snap["id"] != other_than and seen.get("snapshot_request") is None

    wait_for(taken, timeout=120, what="the overlay snapshot to be taken")
    return seen


def test_what_the_owner_installed_reaches_a_member_s_step_once_the_container_slept(
    rxd: Rxd,
) -> None:
    ok(rxd.rxctl(OWNER, "enable", "--project", PROJECT))
    wait_state(rxd, PROJECT, "running")
    ok(rxd.rxctl(OWNER, "exec", "--project", PROJECT, "--", "sh", "-c", INSTALL))
    none_yet = output(rxd.rxctl(OWNER, "status", "--project", PROJECT))
    assert "none yet: batch steps get the bare image" in none_yet

    # Awake: the request waits for the container's sleep, and says how to take it now.
    asked = output(rxd.rxctl(OWNER, "snapshot", "--project", PROJECT))
    assert asked == (
        f"the container of {PROJECT} is awake (running): its overlay is copied the moment it "
        f"next sleeps; `rxctl stop --project {PROJECT}` takes it now\n"
    )
    assert status(rxd, OWNER, PROJECT)["snapshot_request"]["requested_by"] == OWNER
    ok(rxd.rxctl(OWNER, "stop", "--project", PROJECT))
    wait_state(rxd, PROJECT, "stopped")
    shown = wait_snapshot(rxd)["snapshot"]

    plan = json.loads(output(batch_plan(rxd, EDITOR)))
    assert plan["snapshot"]["id"] == shown["id"] and plan["snapshot"]["path"] == shown["path"]
    snap = Path(plan["snapshot"]["path"])
    info = snap.stat()
    assert stat.S_IMODE(info.st_mode) & 0o222 == 0  # nobody may write it
    assert info.st_blocks * 512 < info.st_size  # sparse
    assert output(step(EDITOR, plan, "cat", "/opt/rx/VERSION")) == "v1\n"
    text = output(rxd.rxctl(OWNER, "status", "--project", PROJECT))
    assert (
        f"{shown['id']}, taken {when(shown['taken_at'])}" in text and "batch steps get it" in text
    )
    ((trigger, by),) = rxd.ledger_rows(
        "SELECT trigger, requested_by FROM overlay_snapshots WHERE id = ?", [shown["id"]]
    )
    assert (trigger, by) == ("request", OWNER)
    assert rxd.ledger_rows(
        "SELECT 1 FROM events WHERE action = 'container.snapshot' AND target_id = ?",
        [f"rx-{PROJECT}"],
    )

    # A viewer is refused the plan; neither a viewer nor a stranger can open the file.
    refused = batch_plan(rxd, VIEWER)
    assert "run in project snaps needs role owner or manager or editor; you are viewer" in (
        refused.stdout
    )
    for user in (VIEWER, STRANGER):
        opened = run_as(user, ["cat", str(snap)])
        assert opened.returncode != 0 and "Permission denied" in opened.stderr, opened
        mounted = step(user, plan, "cat", "/opt/rx/VERSION")
        assert mounted.returncode != 0 and "v1" not in mounted.stdout


def test_the_awake_container_writes_while_a_step_reads_the_snapshot_s_old_content(
    rxd: Rxd,
) -> None:
    before = status(rxd, OWNER, PROJECT)["snapshot"]
    assert before is not None, "needs the snapshot of the test above"
    plan = json.loads(output(batch_plan(rxd, EDITOR)))
    ok(rxd.rxctl(OWNER, "start", "--project", PROJECT))
    wait_state(rxd, PROJECT, "running")

    # The step mounts the snapshot and reads, then waits for a line while the container writes.
    reader = step(
        EDITOR,
        plan,
        "sh",
        "-c",
        "cat /opt/rx/VERSION; read go; cat /opt/rx/VERSION; ls /opt/rx",
        popen=True,
    )
    assert reader.stdout is not None and reader.stdin is not None
    assert reader.stdout.readline() == "v1\n"
    write = "echo v2 > /opt/rx/VERSION && head -c 8M /dev/urandom > /opt/rx/blob && sync"
    ok(rxd.rxctl(OWNER, "exec", "--project", PROJECT, "--", "sh", "-c", write))
    out, err = reader.communicate("go\n", timeout=120)
    assert reader.returncode == 0, err
    assert out == "v1\nVERSION\n"  # the old content: neither v2 nor the new file

    # The next sleep makes the new content the steps' snapshot; the old one is kept too.
    ok(rxd.rxctl(OWNER, "stop", "--project", PROJECT))
    wait_state(rxd, PROJECT, "stopped")
    after = wait_snapshot(rxd, other_than=before["id"])["snapshot"]
    newer = json.loads(output(batch_plan(rxd, EDITOR)))
    assert newer["snapshot"]["id"] == after["id"]
    assert output(step(EDITOR, newer, "cat", "/opt/rx/VERSION")) == "v2\n"
    assert Path(before["path"]).exists()
    assert not any(p.name.startswith(".tmp-") for p in Path(after["path"]).parent.iterdir())
    assert os.access(after["path"], os.R_OK)


def test_read_access_follows_the_members_roles(rxd: Rxd) -> None:
    path = status(rxd, OWNER, PROJECT)["snapshot"]["path"]

    def can_read(user: str) -> bool:
        return run_as(user, ["head", "-c", "1", path]).returncode == 0

    assert can_read(EDITOR) and not can_read(STRANGER)
    ok(rxd.rxctl(OWNER, "project", "member", "set-role", "--project", PROJECT, EDITOR, "viewer"))
    assert not can_read(EDITOR)
    ok(
        rxd.rxctl(
            OWNER, "project", "member", "add", "--project", PROJECT, STRANGER, "--role", "manager"
        )
    )
    assert can_read(STRANGER)
    ok(rxd.rxctl(OWNER, "project", "member", "rm", "--project", PROJECT, STRANGER))
    ok(rxd.rxctl(OWNER, "project", "member", "set-role", "--project", PROJECT, EDITOR, "editor"))
    assert can_read(EDITOR) and not can_read(STRANGER)
