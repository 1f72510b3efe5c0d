"""When rxd snapshots a container's overlay (containers/snapshot_policy.py), with the fakes and the
real copy script run as the test's own user: taken when the container goes to sleep, pending while
it is awake, at once on request while it sleeps, the newest N kept, ledger rows and audit events,
and what `rxctl status` says of it."""

from __future__ import annotations

import fcntl
import os
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from rxslurm.cli.render import NO_SNAPSHOT, status_lines, when
from rxslurm.daemon.config import parse_config
from rxslurm.daemon.containers.snapshot_policy import SnapshotTaker, Taken
from rxslurm.daemon.errors import Conflict, Forbidden
from tests.unit.test_batch_plan import member
from tests.unit.test_overlay_snapshot import container_folder
from tests.unit.test_reconciler_edges import OWNER, World, running, world


def snapshot_world(tmp_path: Path, state: str = "starting", kept: int = 3) -> tuple[World, list]:
    """alpha's container with a real folder and overlay; snapshots copied as this process, and
    the futures of those the reconciler's passes queued."""
    w = world(tmp_path, ("alpha", state))
    folder = container_folder(tmp_path)
    w.set("alpha", state_dir=str(folder), overlay_path=str(folder / "overlay.img"))
    config = parse_config({"containers": {"snapshots_kept": kept}})
    w.service.config = config
    taker = SnapshotTaker(w.ledger, config, w.clock, runas=lambda user: None)
    queued: list[Future[Taken | None]] = []
    w.service.snapshots = taker
    w.service.take_due_snapshots = lambda: queued.extend(taker.take_due_soon())
    return w, queued


def settle(queued: list[Future[Taken | None]]) -> list[Taken | None]:
    done = [f.result(timeout=60) for f in queued]
    queued.clear()
    return done


def snapshots(w: World) -> list[dict[str, Any]]:
    return list(w.ledger.db.table("overlay_snapshots").rows_where(order_by="id"))


def events(w: World, action: str) -> list[dict[str, Any]]:
    return list(w.ledger.db.table("events").rows_where("action = ?", [action], order_by="id"))


def put_to_sleep(w: World, job_id: int) -> None:
    w.slurm.end(job_id, "CANCELLED")
    w.reconcile()
    assert w.state("alpha") == "stopped"


def touch_overlay(w: World, text: bytes) -> None:
    with open(w.row("alpha")["overlay_path"], "r+b") as f:
        f.seek(30 << 20)
        f.write(text)


def test_a_snapshot_is_taken_when_the_container_goes_to_sleep(tmp_path: Path) -> None:
    w, queued = snapshot_world(tmp_path)
    job_id = running(w, "alpha")
    w.reconcile()
    assert settle(queued) == [] and snapshots(w) == []  # awake: nothing is due

    put_to_sleep(w, job_id)
    [taken] = settle(queued)

    assert taken is not None and taken.outcome == "taken"
    [row] = snapshots(w)
    assert (row["trigger"], row["requested_by"]) == ("sleep", None)
    ((ended,),) = w.ledger.db.execute("SELECT ended_at FROM jobs WHERE job_id = ?", [job_id])
    assert row["covers_until"] >= ended
    assert Path(row["path"]).read_bytes() == Path(w.row("alpha")["overlay_path"]).read_bytes()
    [event] = events(w, "container.snapshot")
    assert (event["actor"], event["origin"], event["target_id"]) == (
        "rxd",
        "reconciler",
        "rx-alpha",
    )
    # Taken: not due again until another job has run.
    w.reconcile()
    assert settle(queued) == [] and len(snapshots(w)) == 1


def test_an_overlay_no_job_changed_is_not_copied_again_and_its_snapshot_covers_the_job(
    tmp_path: Path,
) -> None:
    w, queued = snapshot_world(tmp_path)
    put_to_sleep(w, running(w, "alpha"))
    settle(queued)
    w.set("alpha", state="starting", desired="running")
    second = running(w, "alpha")
    w.clock.advance(60)

    put_to_sleep(w, second)  # the overlay's mtime did not move
    [taken] = settle(queued)

    assert taken is not None and taken.outcome == "unchanged"
    [row] = snapshots(w)
    ((ended,),) = w.ledger.db.execute("SELECT ended_at FROM jobs WHERE job_id = ?", [second])
    assert row["covers_until"] >= ended
    w.reconcile()
    assert settle(queued) == []  # covered: not due again


def test_a_request_while_awake_is_recorded_and_served_when_it_next_sleeps(
    tmp_path: Path,
) -> None:
    w, queued = snapshot_world(tmp_path)
    job_id = running(w, "alpha")

    answer = w.service.snapshot(OWNER, "alpha")

    assert (answer["taken"], answer["pending"]) == (False, True)
    assert answer["message"] == (
        "the container of alpha is awake (running): its overlay is copied the moment it next "
        "sleeps; `rxctl stop --project alpha` takes it now"
    )
    assert snapshots(w) == [] and len(events(w, "container.snapshot-requested")) == 1
    view = w.service.status(OWNER, "alpha")
    assert view.snapshot is None and view.snapshot_request is not None
    assert view.snapshot_request["requested_by"] == "ada"
    touch_overlay(w, b"installed while awake")

    put_to_sleep(w, job_id)
    settle(queued)

    [row] = snapshots(w)
    assert (row["trigger"], row["requested_by"]) == ("request", "ada")
    assert b"installed while awake" in Path(row["path"]).read_bytes()
    assert w.service.status(OWNER, "alpha").snapshot_request is None


def test_a_request_while_asleep_is_taken_at_once_even_if_unchanged(tmp_path: Path) -> None:
    w, queued = snapshot_world(tmp_path, state="stopped")

    first = w.service.snapshot(OWNER, "alpha")
    second = w.service.snapshot(OWNER, "alpha")

    assert first["taken"] and second["taken"] and not second["pending"]
    assert second["message"] == (
        f"snapshot {second['snapshot']['id']} of alpha taken: batch steps get it from now on"
    )
    assert [r["trigger"] for r in snapshots(w)] == ["request", "request"]
    [*_, event] = events(w, "container.snapshot")
    assert (event["actor"], event["origin"]) == ("ada", "socket")
    plan = w.service.batch_plan(OWNER, "alpha")
    assert plan.snapshot is not None and plan.snapshot.id == second["snapshot"]["id"]


def test_only_the_newest_n_are_kept_on_disk_and_in_the_ledger(tmp_path: Path) -> None:
    w, _ = snapshot_world(tmp_path, state="stopped", kept=2)
    for n in range(4):
        touch_overlay(w, f"version {n}".encode())
        w.clock.advance(1)
        w.service.snapshot(OWNER, "alpha")

    rows = snapshots(w)
    kept = [r for r in rows if r["removed_at"] is None]
    assert len(rows) == 4 and [r["id"] for r in kept] == [rows[2]["id"], rows[3]["id"]]
    on_disk = sorted(p.name for p in (Path(w.row("alpha")["state_dir"]) / "snapshots").iterdir())
    assert on_disk == sorted(Path(r["path"]).name for r in kept)
    assert b"version 3" in Path(kept[-1]["path"]).read_bytes()


def test_a_copy_that_finds_the_overlay_locked_leaves_it_due(tmp_path: Path) -> None:
    w, queued = snapshot_world(tmp_path)
    job_id = running(w, "alpha")
    with open(Path(w.row("alpha")["state_dir"]) / "overlay.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the holder's processes are still going
        put_to_sleep(w, job_id)
        [taken] = settle(queued)
    assert taken is not None and taken.outcome == "busy" and snapshots(w) == []
    # Tried again later (the retry delay is in monotonic time: skip it here).
    w.service.snapshots._retry_at.clear()
    w.reconcile()
    [again] = settle(queued)
    assert again is not None and again.outcome == "taken"


def test_who_may_ask_for_a_snapshot_and_of_what(tmp_path: Path) -> None:
    w, _ = snapshot_world(tmp_path, state="stopped")
    editor = member(w, "eve", 70010, "editor")
    with pytest.raises(Forbidden, match="stop in project alpha needs role owner or manager"):
        w.service.snapshot(editor, "alpha")
    w.set("alpha", state="disabled")
    with pytest.raises(Conflict, match="not enabled"):
        w.service.snapshot(OWNER, "alpha")
    assert snapshots(w) == []


def test_run_members_get_read_on_the_snapshot_and_others_do_not(tmp_path: Path) -> None:
    w, _ = snapshot_world(tmp_path, state="stopped")
    member(w, "eve", 70010, "editor")
    member(w, "vic", 70011, "viewer")

    answer = w.service.snapshot(OWNER, "alpha")

    acl = os.getxattr(answer["snapshot"]["path"], "system.posix_acl_access")
    named = {
        int.from_bytes(acl[i + 4 : i + 8], "little")
        for i in range(4, len(acl), 8)
        if int.from_bytes(acl[i : i + 2], "little") == 0x02
    }
    assert named == {70010}


def test_status_says_which_snapshot_batch_steps_get_and_how_old(tmp_path: Path) -> None:
    w, _ = snapshot_world(tmp_path, state="stopped")
    before = status_lines(w.service.status(OWNER, "alpha").to_dict())
    assert any(x.startswith("snapshot ") and x.endswith(NO_SNAPSHOT) for x in before)
    taken = w.service.snapshot(OWNER, "alpha")["snapshot"]
    w.clock.advance(125)

    shown = w.service.status(OWNER, "alpha").to_dict()

    assert shown["snapshot"]["age_s"] == 125 and shown["snapshot"]["id"] == taken["id"]
    line = next(x for x in status_lines(shown) if x.startswith("snapshot"))
    taken_at = when(taken["taken_at"])  # to the second: "2026-12-01 00:52:10Z"
    assert line.endswith(f"{taken['id']}, taken {taken_at} (2m05s ago): batch steps get it")


def test_status_text_shows_a_request_waiting_for_sleep() -> None:
    base = {
        "project": "alpha",
        "state": "running",
        "name": "rx-alpha",
        "gpus": 0,
        "workspace": "/w",
        "snapshot": None,
        "snapshot_request": {"requested_by": "ada", "requested_at": "2026-12-01T00:00:00Z"},
    }
    lines = status_lines(base)
    assert any(x.endswith(NO_SNAPSHOT) for x in lines)
    assert any(
        x.startswith("snapshot asked")
        and x.endswith("by ada at 2026-12-01 00:00:00Z; taken when the container next sleeps")
        for x in lines
    )


def test_disable_removes_the_snapshots_with_the_overlay(tmp_path: Path) -> None:
    w, _ = snapshot_world(tmp_path, state="stopped")
    path = Path(w.service.snapshot(OWNER, "alpha")["snapshot"]["path"])
    # The overlay is removed as its runtime user (rm as nobody): take it away here first.
    Path(w.row("alpha")["overlay_path"]).unlink()

    w.service.disable(OWNER, "alpha")

    assert not path.exists()
    assert all(r["removed_at"] is not None for r in snapshots(w))
    assert w.service.batch_plan(OWNER, "alpha").snapshot is None


def test_deleting_a_project_takes_its_snapshot_records_with_its_container(tmp_path: Path) -> None:
    from rxslurm.daemon.projects.service import delete_project

    w, _ = snapshot_world(tmp_path, state="stopped")
    w.service.snapshot(OWNER, "alpha")
    w.set("alpha", state="running")
    w.service.snapshot(OWNER, "alpha")  # a request waiting too
    w.set("alpha", state="disabled")

    delete_project(w.ledger, OWNER, "alpha")

    assert snapshots(w) == []
    assert w.ledger.db.table("overlay_snapshot_requests").count == 0
