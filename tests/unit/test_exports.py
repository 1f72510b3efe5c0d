"""Export and import decisions (containers/exports.py) with the fakes, the real scripts run as the
test's own user: which snapshot an export reads, which containers an import goes into, who may,
and what the ledger and audit say afterwards."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import pytest

from rxslurm.daemon.containers.exports import (
    LIMITS,
    finish_import,
    plan_export,
    plan_import,
)
from rxslurm.daemon.errors import Conflict, Forbidden
from rxslurm.daemon.runtime.archive_import import Outcome, framed, outcome, start_import
from tests.unit.test_archive_rules import HOSTILE, build, reg
from tests.unit.test_batch_plan import member
from tests.unit.test_reconciler_edges import OWNER, World, running
from tests.unit.test_snapshot_policy import events, snapshot_world, snapshots


def run_import(w: World, data: bytes) -> dict[str, object]:
    plan = plan_import(w.service, OWNER, "alpha")
    proc = start_import(plan.state_dir, plan.workspace, plan.stamp, 10 << 20, LIMITS, plan.runas)
    stdout, stderr = proc.communicate(framed(data), timeout=60)
    return finish_import(
        w.service, OWNER, plan, outcome(proc.returncode, stdout, stderr), len(data)
    )


def overlay(w: World) -> Path:
    return Path(w.row("alpha")["overlay_path"])


def test_export_of_a_sleeping_container_reads_a_fresh_snapshot_never_the_overlay(
    tmp_path: Path,
) -> None:
    w, _ = snapshot_world(tmp_path, state="stopped")
    plan = plan_export(w.service, OWNER, "alpha", workspace=True)
    [row] = snapshots(w)
    assert plan.snapshot == row["path"] != str(overlay(w))
    assert Path(plan.snapshot).read_bytes() == overlay(w).read_bytes()
    assert plan.manifest["format"] == 1 and plan.manifest["project"] == "alpha"
    [event] = events(w, "project.export")
    assert json.loads(event["detail"]) == {"snapshot": row["id"], "workspace": True}


def test_export_of_an_awake_container_reads_its_newest_snapshot_or_is_refused(
    tmp_path: Path,
) -> None:
    w, _ = snapshot_world(tmp_path, state="stopped")
    taken = plan_export(w.service, OWNER, "alpha", workspace=False).snapshot
    w.set("alpha", state="starting", desired="running")
    running(w, "alpha")
    assert plan_export(w.service, OWNER, "alpha", workspace=False).snapshot == taken

    w2, _ = snapshot_world(tmp_path / "second")
    running(w2, "alpha")
    with pytest.raises(Conflict, match="awake and has no snapshot.*rxctl stop --project alpha"):
        plan_export(w2.service, OWNER, "alpha", workspace=False)


def test_who_may_export_and_import(tmp_path: Path) -> None:
    w, _ = snapshot_world(tmp_path, state="stopped")
    editor = member(w, "eve", 70010, "editor")
    manager = member(w, "max", 70011, "manager")
    with pytest.raises(Forbidden, match="export in project alpha needs role owner or manager"):
        plan_export(w.service, editor, "alpha", workspace=False)
    plan_export(w.service, manager, "alpha", workspace=False)
    with pytest.raises(Forbidden, match="import in project alpha needs role owner"):
        plan_import(w.service, manager, "alpha")
    w.set("alpha", state="disabled")
    with pytest.raises(Conflict, match="not enabled"):
        plan_import(w.service, OWNER, "alpha")


def test_an_import_into_an_awake_container_is_refused_in_one_line(tmp_path: Path) -> None:
    w, _ = snapshot_world(tmp_path)
    running(w, "alpha")
    with pytest.raises(Conflict) as refused:
        plan_import(w.service, OWNER, "alpha")
    assert "\n" not in str(refused.value)
    assert "is awake (running): `rxctl stop --project alpha` first" in str(refused.value)


def test_an_import_swaps_the_overlay_keeps_the_old_and_replaces_the_snapshots(
    tmp_path: Path,
) -> None:
    w, _ = snapshot_world(tmp_path, state="stopped")
    old = overlay(w).read_bytes()
    w.service.snapshot(OWNER, "alpha")
    [before] = snapshots(w)

    answer = run_import(w, build([reg("workspace/notes", b"hi")]))

    assert overlay(w).read_bytes().startswith(b"\0" * 4096 + b"ext3 overlay")
    backup = overlay(w).with_name("overlay.img.before-import")
    assert backup.read_bytes() == old and answer["backup"] == str(backup)
    ((workspace,),) = w.ledger.db.execute("SELECT workspace FROM projects WHERE name = 'alpha'")
    assert (Path(workspace) / str(answer["workspace_folder"]) / "notes").read_bytes() == b"hi"
    [event] = events(w, "project.import")
    detail = json.loads(event["detail"])
    assert detail["backup"] == str(backup) and "garbage collection" in detail["backup_note"]
    rows = snapshots(w)
    assert [r["id"] for r in rows if r["removed_at"] is None] != [before["id"]]
    newest = [r for r in rows if r["removed_at"] is None][-1]
    assert Path(newest["path"]).read_bytes() == overlay(w).read_bytes()


def test_a_refused_import_changes_nothing_and_is_audited(tmp_path: Path) -> None:
    w, _ = snapshot_world(tmp_path, state="stopped")
    old = overlay(w).read_bytes()
    with pytest.raises(Conflict, match="refused: a symlink pointing out.*nothing was changed"):
        run_import(w, HOSTILE["symlink pointing out"]())
    assert overlay(w).read_bytes() == old
    assert not overlay(w).with_name("overlay.img.before-import").exists()
    [event] = events(w, "project.import-refused")
    assert "symlink pointing out" in json.loads(event["detail"])["refused"]


def test_an_import_while_a_job_holds_the_overlay_is_refused(tmp_path: Path) -> None:
    w, _ = snapshot_world(tmp_path, state="stopped")
    old = overlay(w).read_bytes()
    with open(overlay(w).with_name("overlay.lock"), "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the last job's processes still hold it
        with pytest.raises(Conflict, match="a job holds the overlay"):
            run_import(w, build([]))
    assert overlay(w).read_bytes() == old


def test_a_script_failure_is_a_refusal_not_a_crash(tmp_path: Path) -> None:
    w, _ = snapshot_world(tmp_path, state="stopped")
    plan = plan_import(w.service, OWNER, "alpha")
    with pytest.raises(Conflict, match="refused: the import failed: boom"):
        finish_import(w.service, OWNER, plan, Outcome(refused="the import failed: boom"), 0)


def test_export_while_the_last_job_still_holds_the_overlay_says_so(tmp_path: Path) -> None:
    w, _ = snapshot_world(tmp_path, state="stopped")
    with open(overlay(w).with_name("overlay.lock"), "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(Conflict, match="still held by its last job"):
            plan_export(w.service, OWNER, "alpha", workspace=False)
    assert events(w, "project.export") == []
