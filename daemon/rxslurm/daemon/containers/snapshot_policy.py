"""When rxd snapshots a container's overlay, and what it records.

A snapshot is due when the container sleeps (no job holds it: stopped, in error, queued without a
job, pulling) and a job of it ended since the newest snapshot read the overlay (`covers_until`),
or someone asked for one. The reconciler's pass looks for due containers and takes their
snapshots on threads of their own (two copies at a time), so a pass never waits on a copy. The
copy itself runs as the runtime user (runtime/overlay_snapshot.py) under the overlay's lock: if a
job holds it after all, nothing is copied and the snapshot stays due. An overlay unchanged since
the newest snapshot is not copied again; that snapshot then covers the newer jobs too.

On request (`rxctl snapshot`): a sleeping container's overlay is copied at once, changed or not;
an awake one's request is recorded (`overlay_snapshot_requests`) and served the moment it next
sleeps, since a mounted ext3 image cannot be copied consistently.

Everything is recorded in the ledger (`overlay_snapshots`, m007) with its audit event, in one
transaction after the file is in place: a crash before leaves an unrecorded file, which the next
snapshot of the container removes; the snapshot stays due.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rxslurm.daemon.config import Config
from rxslurm.daemon.containers.states import State
from rxslurm.daemon.errors import Conflict
from rxslurm.daemon.identity.actors import Actor, record_actor_event
from rxslurm.daemon.ledger.audit import record_event
from rxslurm.daemon.ledger.store import Ledger, LedgerDatabase
from rxslurm.daemon.ledger.timestamps import from_timestamp, to_timestamp
from rxslurm.daemon.projects.snapshot_access import file_name, kept_rows, run_member_uids
from rxslurm.daemon.runtime import overlay_snapshot
from rxslurm.daemon.runtime.overlay_snapshot import SnapshotError
from rxslurm.slurm.runas import RunAs

# Whom the copy runs as, by the runtime user's name (None: this process, for tests).
RunAsOf = Callable[[str], RunAs | None]

log = logging.getLogger("rxslurm.snapshots")

# No job holds the overlay in these states (WAITING only without a job: queued for a quota).
ASLEEP = (State.STOPPED, State.ERROR, State.PULLING)
# After a failed or busy attempt, the pass tries the container again this much later.
RETRY_AFTER_S = 60.0


def asleep(container: dict[str, Any]) -> bool:
    return container["state"] in ASLEEP or (
        container["state"] == State.WAITING and container["job_id"] is None
    )


@dataclass(frozen=True)
class Taken:
    """What one attempt did: a new snapshot (its row), the newest one kept as still current, or
    nothing because a job holds the overlay or the container is awake."""

    outcome: str  # "taken", "unchanged", "busy", "awake"
    snapshot: dict[str, Any] | None = None


def due_containers(db: LedgerDatabase) -> list[int]:
    """Sleeping containers with a job that ended since their newest snapshot, or a request
    waiting."""
    rows = db.execute(
        "SELECT c.id FROM containers c WHERE c.state_dir IS NOT NULL "
        "AND c.overlay_path IS NOT NULL AND c.runtime_uid IS NOT NULL "
        "AND (c.state IN (?, ?, ?) OR (c.state = ? AND c.job_id IS NULL)) AND ("
        " EXISTS (SELECT 1 FROM overlay_snapshot_requests r WHERE r.container_id = c.id)"
        " OR EXISTS (SELECT 1 FROM jobs j WHERE j.container_id = c.id AND j.ended_at > COALESCE(("
        "  SELECT s.covers_until FROM overlay_snapshots s WHERE s.container_id = c.id"
        "  AND s.runtime_uid = c.runtime_uid AND s.removed_at IS NULL ORDER BY s.id DESC LIMIT 1"
        " ), ''))) ORDER BY c.id",
        [*(s.value for s in ASLEEP), State.WAITING.value],
    ).fetchall()
    return [cid for (cid,) in rows]


def new_file_name(now: datetime) -> str:
    """snap-<UTC time to the microsecond>.img: unique per container, sorted by age."""
    return f"snap-{now.strftime('%Y%m%d%H%M%S%f')}.img"


class SnapshotTaker:
    """Takes a container's overlay snapshots: due ones in the background, requested ones now."""

    def __init__(
        self,
        ledger: Ledger,
        config: Config,
        clock: Callable[[], datetime],
        runas: RunAsOf = RunAs.for_user,
    ) -> None:
        self.ledger = ledger
        self.config = config
        self.clock = clock
        self.runas = runas
        # Copies are disk-bound: two at a time (one slow folder does not hold up every other
        # project's), on threads of their own so a pass never waits for them.
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rxd-snapshots")
        self._guard = threading.Lock()
        self._queued: set[int] = set()
        self._retry_at: dict[int, float] = {}
        # One attempt per container at a time, whoever asks: a second copier would find the
        # overlay's lock taken and think a job holds it.
        self._locks: dict[int, threading.Lock] = {}

    # -- the reconciler's side -----------------------------------------------------------------

    def take_due_soon(self) -> list[Future[Taken | None]]:
        """Queue the due snapshots (read here, on the pass's thread) for the snapshot thread."""
        with self.ledger.read() as db:
            due = due_containers(db)
        now = time.monotonic()
        started = []
        with self._guard:
            for cid in due:
                if cid in self._queued or self._retry_at.get(cid, 0.0) > now:
                    continue
                self._queued.add(cid)
                started.append(self._pool.submit(self._take_logged, cid))
        return started

    def _take_logged(self, container_id: int) -> Taken | None:
        try:
            taken = self.take(container_id, force=False)
        except Exception as exc:
            # Housekeeping: a failed copy is logged and tried again later, never fails a pass.
            log.warning(
                "overlay snapshot failed", extra={"container_id": container_id, "error": str(exc)}
            )
            taken = None
        finally:
            with self._guard:
                self._queued.discard(container_id)
        if taken is None or taken.outcome == "busy":
            with self._guard:
                self._retry_at[container_id] = time.monotonic() + RETRY_AFTER_S
        return taken

    def stop(self) -> None:
        """rxd is stopping: queued copies are dropped (still due at the next start), a running
        one finishes within its deadline. A copy cut short leaves only a temporary file."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- one attempt ---------------------------------------------------------------------------

    def exclusive(self, container_id: int) -> threading.Lock:
        """The lock a snapshot of the container is taken under: a reset or a fresh start holds
        it, so it waits for a copy under way instead of finding the overlay busy."""
        return self._lock_of(container_id)

    def _lock_of(self, container_id: int) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(container_id, threading.Lock())

    def take(self, container_id: int, *, force: bool, actor: Actor | None = None) -> Taken:
        """Copy the overlay of a sleeping container unless it is unchanged (``force``: copy
        anyway), record it, keep the newest ``snapshots_kept``. ``actor``: who asked (None: rxd,
        as it went to sleep)."""
        with self._lock_of(container_id):
            return self._take(container_id, force, actor)

    def _take(self, container_id: int, force: bool, actor: Actor | None) -> Taken:
        kept_n = self.config.containers.snapshots_kept
        with self.ledger.read() as db:
            container = dict(db.table("containers").get(container_id))
            if not asleep(container) or not container["state_dir"]:
                return Taken("awake")
            kept = kept_rows(db, container)
            newest = kept[0] if kept else None
            uids = run_member_uids(db, container["project_id"], container["runtime_uid"])
            request = _request_of(db, container_id)
        now = self.clock()
        name = new_file_name(now)
        keep = [file_name(r) for r in kept[: kept_n - 1]]
        # Unchanged: the newest stays, so the one older than the kept ones that a new snapshot
        # would have pushed out stays too.
        keep_if_unchanged = [file_name(r) for r in kept[kept_n - 1 : kept_n]]
        outcome = overlay_snapshot.take(
            container["state_dir"],
            name,
            keep,
            uids,
            None if force or newest is None else newest["source_mtime_ns"],
            self.runas(container["runtime_user"]),
            keep_if_unchanged=keep_if_unchanged,
        )
        if outcome.busy:
            log.info(
                "overlay held by a job; snapshot stays due", extra={"container": container["name"]}
            )
            return Taken("busy")
        with self.ledger.transaction() as db:
            current = db.table("containers").get(container_id)
            if current["runtime_uid"] != container["runtime_uid"] or (
                current["state_dir"] != container["state_dir"]
            ):
                # Its folder changed hands meanwhile: what was copied went with the old one.
                return Taken("awake")
            if outcome.taken is None:
                assert newest is not None  # no last time was given without a newest snapshot
                db.table("overlay_snapshots").update(
                    newest["id"], {"covers_until": to_timestamp(now)}
                )
                for old in kept[kept_n:]:  # beyond a snapshots_kept lowered meanwhile
                    db.table("overlay_snapshots").update(
                        old["id"], {"removed_at": to_timestamp(now)}
                    )
                _served(db, container_id, now)
                return Taken("unchanged", dict(db.table("overlay_snapshots").get(newest["id"])))
            table = db.table("overlay_snapshots")
            table.insert(
                {
                    "container_id": container_id,
                    "runtime_uid": container["runtime_uid"],
                    "path": str(
                        Path(container["state_dir"])
                        / overlay_snapshot.SNAPSHOTS_FOLDER
                        / outcome.taken
                    ),
                    "taken_at": to_timestamp(now),
                    "size_bytes": outcome.size,
                    "source_mtime_ns": outcome.mtime_ns or 0,
                    "covers_until": to_timestamp(now),
                    "trigger": "request" if actor is not None or request else "sleep",
                    "requested_by": actor.name if actor else (request or {}).get("requested_by"),
                }
            )
            assert table.last_pk is not None
            snapshot = dict(table.get(table.last_pk))
            stale = [r["id"] for r in kept[kept_n - 1 :]]
            for old_id in stale:
                table.update(old_id, {"removed_at": to_timestamp(now)})
            _served(db, container_id, now)
            detail = {
                "snapshot": snapshot["id"],
                "path": snapshot["path"],
                "size_bytes": outcome.size,
                "disk_bytes": outcome.disk,
                "trigger": snapshot["trigger"],
                "removed": stale,
                "readers": uids,
            }
            if actor is not None:
                record_actor_event(
                    db, actor, "container.snapshot", "container", container["name"], detail
                )
            else:
                record_event(
                    db,
                    actor="rxd",
                    actor_uid=None,
                    origin="reconciler",
                    action="container.snapshot",
                    target_type="container",
                    target_id=container["name"],
                    detail=detail,
                )
        log.info("overlay snapshot taken", extra={"container": container["name"], **detail})
        return Taken("taken", snapshot)

    def remove_all(self, container: dict[str, Any]) -> None:
        """The overlay went (disable): its snapshots go too, or a fresh overlay's batch steps
        would get the old one's software. A failure is logged; the rows go either way, and the
        container's next snapshot removes files left behind."""
        with self._lock_of(container["id"]):
            with self.ledger.transaction() as db:
                forget_snapshots(db, container["id"], self.clock())
            try:
                overlay_snapshot.clear(
                    container["state_dir"], self.runas(container["runtime_user"])
                )
            except (SnapshotError, ValueError) as exc:
                log.warning(
                    "snapshots not removed",
                    extra={"container": container["name"], "error": str(exc)},
                )

    # -- requests --------------------------------------------------------------------------------

    def record_request(self, actor: Actor, container: dict[str, Any]) -> dict[str, Any]:
        """An awake container's request, served when it next sleeps; audited."""
        now = to_timestamp(self.clock())
        with self.ledger.transaction() as db:
            db.table("overlay_snapshot_requests").insert(
                {"container_id": container["id"], "requested_at": now, "requested_by": actor.name},
                replace=True,
            )
            record_actor_event(
                db,
                actor,
                "container.snapshot-requested",
                "container",
                container["name"],
                {"state": container["state"]},
            )
        return {"requested_at": now, "requested_by": actor.name}


def forget_snapshots(db: LedgerDatabase, container_id: int, now: datetime) -> None:
    """The container's snapshots no longer exist for batch steps (its overlay went, or its folder
    went to quarantine with a former runtime identity), in the caller's transaction."""
    db.execute(
        "UPDATE overlay_snapshots SET removed_at = ? WHERE container_id = ? AND removed_at IS NULL",
        [to_timestamp(now), container_id],
    )
    db.execute("DELETE FROM overlay_snapshot_requests WHERE container_id = ?", [container_id])


def _served(db: LedgerDatabase, container_id: int, read_at: datetime) -> None:
    """Requests made before the overlay was read are served; one made during the copy (the
    container woke meanwhile) waits for the next sleep."""
    db.execute(
        "DELETE FROM overlay_snapshot_requests WHERE container_id = ? AND requested_at <= ?",
        [container_id, to_timestamp(read_at)],
    )


def _request_of(db: LedgerDatabase, container_id: int) -> dict[str, Any] | None:
    rows = list(
        db.table("overlay_snapshot_requests").rows_where("container_id = ?", [container_id])
    )
    return rows[0] if rows else None


def snapshot_status(
    db: LedgerDatabase, container: dict[str, Any] | None, now: datetime
) -> dict[str, Any]:
    """What `rxctl status` shows: the snapshot batch steps get (None: the bare image), its age,
    and a request waiting for the container to sleep."""
    if container is None:
        return {"snapshot": None, "snapshot_request": None}
    kept = kept_rows(db, container)
    snapshot = None
    if kept:
        row = kept[0]
        snapshot = {
            "id": row["id"],
            "path": row["path"],
            "taken_at": row["taken_at"],
            "age_s": max(0, int((now - from_timestamp(row["taken_at"])).total_seconds())),
            "size_bytes": row["size_bytes"],
        }
    request = _request_of(db, container["id"])
    return {
        "snapshot": snapshot,
        "snapshot_request": None
        if request is None
        else {"requested_at": request["requested_at"], "requested_by": request["requested_by"]},
    }


def request_snapshot(taker: SnapshotTaker, actor: Actor, project: dict[str, Any]) -> dict[str, Any]:
    """`rxctl snapshot`: a sleeping container's overlay copied now; an awake one's request
    recorded for when it next sleeps. The answer says which, in one line (`message`)."""
    name = project["name"]
    with taker.ledger.read() as db:
        rows = list(db.table("containers").rows_where("project_id = ?", [project["id"]]))
    container = rows[0] if rows else None
    if container is None or container["state"] == State.DISABLED or not container["state_dir"]:
        raise Conflict(f"the container of {name} is not enabled; there is no overlay to snapshot")
    answer: dict[str, Any] = {"project": name, "taken": False, "pending": False, "snapshot": None}
    if asleep(container):
        try:
            taken = taker.take(container["id"], force=True, actor=actor)
        except (SnapshotError, ValueError) as exc:
            raise Conflict(f"cannot snapshot the overlay of {name}: {exc}") from None
        if taken.outcome in ("taken", "unchanged") and taken.snapshot is not None:
            snap = taken.snapshot
            answer.update(
                taken=True,
                snapshot={
                    "id": snap["id"],
                    "path": snap["path"],
                    "taken_at": snap["taken_at"],
                    "size_bytes": snap["size_bytes"],
                },
                message=f"snapshot {snap['id']} of {name} taken: batch steps get it from now on",
            )
            return answer
        with taker.ledger.read() as db:
            container = dict(db.table("containers").get(container["id"]))
    # Awake (or woken meanwhile): a mounted ext3 image cannot be copied consistently.
    request = taker.record_request(actor, container)
    if asleep(container):
        # Its last job's processes still hold the overlay's lock; the next pass tries again.
        message = (
            f"the overlay of {name} is still held by its last job: it is copied the moment the "
            "job lets go of it"
        )
    else:
        message = (
            f"the container of {name} is awake ({container['state']}): its overlay is copied the "
            f"moment it next sleeps; `rxctl stop --project {name}` takes it now"
        )
    answer.update(pending=True, request=request, message=message)
    return answer
