"""Garbage collection (`rxctl gc`, `rxctl admin gc`): gathering the facts, removing what
containers/gc_plan.py decides, and the audit.

An owner collects in the folders of the containers of the projects they own and among their
built images; an admin in every container's folder and among all built images, and besides in
the pulled-image cache and the state root's quarantine. Only
rx-slurm's own things are looked at: the ledger names the containers and their folders, the
folder scripts consider only names rx-slurm gives its files, the image cache and the quarantine
are root's. Files in a container's folder are listed and removed as its runtime user
(runtime/state_gc.py), a built image's by the build service (as its runtime user); root unlinks
only in its own folders. A project labelled keep=true is left
alone. One failure (a user's folder that cannot be read, a file that cannot go) is reported and
the rest goes on. Each removal is audited at once (`project.gc-collected` for a project's things,
`gc.removed` for a cached image or a quarantined folder), and the whole collection as one
`gc.collected` event listing what went; a dry run changes nothing and is not audited.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

from rxslurm.daemon.config import Config
from rxslurm.daemon.containers.gc_plan import (
    BuiltImage,
    Container,
    Item,
    container_items,
    old_quarantine,
    total_bytes,
    unused_builds,
    unused_images,
)
from rxslurm.daemon.containers.job_logs import kept_jobs
from rxslurm.daemon.errors import ApiError
from rxslurm.daemon.identity.actors import Actor, record_actor_event
from rxslurm.daemon.images import cache_walk
from rxslurm.daemon.images.cache import UnsafeImageDir
from rxslurm.daemon.images.digests import recorded_digest
from rxslurm.daemon.ledger.store import Ledger, LedgerDatabase
from rxslurm.daemon.ledger.timestamps import from_timestamp, to_timestamp, utcnow
from rxslurm.daemon.ports import Clock
from rxslurm.daemon.projects.labels import kept_project_ids
from rxslurm.daemon.projects.snapshot_access import file_name
from rxslurm.daemon.quarantine import purge, quarantined
from rxslurm.daemon.runtime import state_gc
from rxslurm.slurm.runas import RunAs, RunAsError

log = logging.getLogger("rxslurm.gc")

DEFAULT_OLDER_THAN_S = 30 * 86400
# The audit event lists at most this many removals (and says how many there were).
MAX_AUDITED = 500


@dataclass
class _Folder:
    container_id: int
    state_dir: str
    plan: Container
    items: list[Item] = field(default_factory=list)


@dataclass
class Outcome:
    items: list[Item] = field(default_factory=list)  # removed (or, dry run, to remove)
    failed: list[dict[str, Any]] = field(default_factory=list)
    # Records what was just removed, at once (a crash later loses no audit): None in a dry run.
    audit: Callable[[list[Item]], None] | None = None

    def removed(self, items: list[Item]) -> None:
        self.items += items
        if self.audit is not None and items:
            self.audit(items)

    def view(self, dry_run: bool, older_than_s: int) -> dict[str, Any]:
        return {
            "dry_run": dry_run,
            "older_than_s": older_than_s,
            "items": [i.view() for i in self.items],
            "bytes": total_bytes(self.items),
            "failed": self.failed,
        }


class GcService:
    def __init__(self, ledger: Ledger, config: Config, clock: Clock = utcnow) -> None:
        self.ledger = ledger
        self.config = config
        self.clock = clock
        # Who works in a container's folder: its runtime user (tests: None, this process).
        self.run_as: Callable[[str], RunAs | None] = RunAs.for_user
        # Removes a built image's files and record (BuildService.remove_unused; api/context.py
        # wires it). None: built images are listed but never removed.
        self.remove_build: Callable[[int], None] | None = None

    def collect(
        self, actor: Actor, *, deployment: bool, dry_run: bool, older_than_s: int
    ) -> dict[str, Any]:
        """Collect for ``actor``: their own projects, or (``deployment``, an admin) all of it."""
        now = self.clock()
        cutoff = int((now - timedelta(seconds=older_than_s)).timestamp())
        outcome = Outcome(audit=None if dry_run else partial(self._audit, actor))
        owner = None if deployment else actor
        with self.ledger.read() as db:
            folders = self._folders(db, owner)
            named = self._images(db)
            builds = unused_builds(self._builds(db, owner), set(named), cutoff)
            # The deployment's default image is every project's whose own setting is "": kept.
            # A reference keeps its digest's file, read in this same view of the ledger.
            images = (
                cache_walk.in_use(
                    [*named, self.config.defaults.image],
                    self.config.containers.image_dir,
                    lambda ref: recorded_digest(db, ref),
                )
                if deployment
                else set()
            )
        for folder in folders:
            self._collect_folder(folder, cutoff, int(now.timestamp()), dry_run, outcome)
        self._collect_builds(builds, dry_run, outcome)
        if deployment:
            self._collect_images(images, cutoff, dry_run, outcome)
            self._collect_quarantine(cutoff, dry_run, outcome)
        if not dry_run:
            self._record(actor, deployment, older_than_s, outcome)
        return outcome.view(dry_run, older_than_s)

    @staticmethod
    def _owned(owner: Actor | None) -> tuple[str, list[Any]]:
        """The SQL condition (on projects ``p``) of the projects collected in, and its args."""
        if owner is None:
            return "", []
        clause = (
            " AND EXISTS (SELECT 1 FROM members m WHERE m.project_id = p.id"
            " AND m.platform_user_id = ? AND m.role = 'owner')"
        )
        return clause, [owner.platform_user]

    def _builds(self, db: LedgerDatabase, owner: Actor | None) -> list[BuiltImage]:
        clause, args = self._owned(owner)
        rows = db.execute(
            "SELECT b.id, p.name, p.id, b.runtime_user, b.image_path, b.size_bytes, b.ended_at "
            "FROM image_builds b JOIN projects p ON p.id = b.project_id "
            "WHERE b.state = 'succeeded' AND b.image_path IS NOT NULL" + clause + " ORDER BY b.id",
            args,
        ).fetchall()
        kept = kept_project_ids(db)
        return [
            BuiltImage(
                build_id,
                project,
                user,
                path,
                size or 0,
                None if ended is None else int(from_timestamp(ended).timestamp()),
            )
            for build_id, project, project_id, user, path, size, ended in rows
            if project_id not in kept
        ]

    def _folders(self, db: LedgerDatabase, owner: Actor | None) -> list[_Folder]:
        clause, args = self._owned(owner)
        sql = (
            "SELECT c.id, c.state_dir, c.runtime_user, c.runtime_uid, p.name, p.id "
            "FROM containers c JOIN projects p ON p.id = c.project_id "
            "WHERE c.state_dir IS NOT NULL AND c.runtime_user IS NOT NULL" + clause
        )
        kept = kept_project_ids(db)
        folders = []
        rows = db.execute(sql + " ORDER BY p.name", args).fetchall()
        for cid, state_dir, user, uid, project, project_id in rows:
            if project_id in kept:
                continue
            keep = kept_jobs(db, cid, self.config.containers.job_logs_kept)
            newest = db.execute(
                "SELECT max(job_id) FROM jobs WHERE container_id = ?", [cid]
            ).fetchone()[0]
            snapshots = [
                (file_name(r), r["removed_at"])
                for r in db.table("overlay_snapshots").rows_where(
                    "container_id = ? AND runtime_uid = ?", [cid, uid], order_by="id DESC"
                )
            ]
            live = [name for name, removed in snapshots if removed is None]
            plan = Container(
                project=project,
                runtime_user=user,
                keep_jobs=frozenset(keep),
                newest_job=None if newest is None else max(newest, *keep),
                kept_snapshots=frozenset(live[: self.config.containers.snapshots_kept]),
                known_snapshots=frozenset(name for name, _ in snapshots),
            )
            folders.append(_Folder(cid, state_dir, plan))
        return folders

    @staticmethod
    def _images(db: LedgerDatabase) -> list[str]:
        rows = db.execute(
            "SELECT image FROM projects UNION SELECT image FROM containers WHERE image IS NOT NULL"
        ).fetchall()
        return [r[0] for r in rows]

    def _collect_folder(
        self, folder: _Folder, cutoff: int, now: int, dry_run: bool, out: Outcome
    ) -> None:
        project = folder.plan.project
        try:
            who = self.run_as(folder.plan.runtime_user)
            listing = state_gc.list_entries(folder.state_dir, who)
            folder.items = container_items(folder.plan, listing.items, cutoff, now)
            if dry_run or not folder.items:
                out.items += folder.items
                return
            done = state_gc.remove_entries(folder.state_dir, [i.name for i in folder.items], who)
        except (RunAsError, state_gc.StateGcError) as exc:
            log.warning("gc: folder skipped", extra={"project": project, "error": str(exc)})
            out.failed.append({"project": project, "kind": "container", "error": str(exc)})
            folder.items = []
            return
        removed = set(done.removed)
        folder.items = [i for i in folder.items if i.name in removed]
        out.removed(folder.items)
        out.failed += [{"project": project, "kind": "file", "error": f} for f in done.failed]
        self._mark_snapshots_removed(folder)

    def _mark_snapshots_removed(self, folder: _Folder) -> None:
        gone = [i.name.removeprefix("snapshots/") for i in folder.items if i.kind == "snapshot"]
        if not gone:
            return
        now = to_timestamp(self.clock())
        with self.ledger.transaction() as db:
            for row in db.table("overlay_snapshots").rows_where(
                "container_id = ? AND removed_at IS NULL", [folder.container_id]
            ):
                if file_name(row) in gone:
                    db.table("overlay_snapshots").update(row["id"], {"removed_at": now})

    def _collect_builds(self, items: list[tuple[int, Item]], dry_run: bool, out: Outcome) -> None:
        for build_id, item in items:
            if dry_run:
                out.items.append(item)
                continue
            if self.remove_build is None:
                continue
            try:
                self.remove_build(build_id)
            except ApiError as exc:
                why = f"build {build_id}: {exc.message}"
                out.failed.append({"project": item.project, "kind": item.kind, "error": why})
                continue
            out.removed([item])

    def _collect_images(self, in_use: set[str], cutoff: int, dry_run: bool, out: Outcome) -> None:
        image_dir = self.config.containers.image_dir
        try:
            items = unused_images(cache_walk.cached_images(image_dir), in_use, cutoff)
        except (OSError, UnsafeImageDir) as exc:
            out.failed.append({"project": None, "kind": "image", "error": str(exc)})
            return
        for item in items:
            try:
                if not dry_run:
                    cache_walk.remove_cached(image_dir, item.name)
            except (OSError, ValueError, UnsafeImageDir) as exc:
                why = f"{item.name}: {exc}"
                out.failed.append({"project": None, "kind": "image", "error": why})
                continue
            out.removed([item])

    def _collect_quarantine(self, cutoff: int, dry_run: bool, out: Outcome) -> None:
        root = self.config.containers.state_root
        try:
            items = old_quarantine(quarantined(root), cutoff)
        except OSError as exc:
            out.failed.append({"project": None, "kind": "quarantined", "error": str(exc)})
            return
        for item in items:
            try:
                if not dry_run:
                    purge(root, item.name)
            except (OSError, ValueError) as exc:
                out.failed.append(
                    {"project": None, "kind": "quarantined", "error": f"{item.name}: {exc}"}
                )
                continue
            out.removed([item])

    def _audit(self, actor: Actor, items: list[Item]) -> None:
        """One event for what was just removed: a project's (its history shows it), or the
        deployment's (a cached image, a quarantined folder)."""
        project = items[0].project
        detail = {"removed": [i.view() for i in items[:MAX_AUDITED]], "bytes": total_bytes(items)}
        with self.ledger.transaction() as db:
            if project is not None:
                record_actor_event(db, actor, "project.gc-collected", "project", project, detail)
            else:
                record_actor_event(db, actor, "gc.removed", "deployment", items[0].kind, detail)

    def _record(self, actor: Actor, deployment: bool, older_than_s: int, out: Outcome) -> None:
        """The summary: everything that went, and what could not."""
        if not out.items and not out.failed:
            return
        detail = {
            "scope": "deployment" if deployment else "own projects",
            "older_than_s": older_than_s,
            "removed": [i.view() for i in out.items[:MAX_AUDITED]],
            "count": len(out.items),
            "bytes": total_bytes(out.items),
            "failed": out.failed[:MAX_AUDITED],
        }
        target = ("deployment", "gc") if deployment else ("user", actor.name)
        with self.ledger.transaction() as db:
            record_actor_event(db, actor, "gc.collected", target[0], target[1], detail)
        log.info("gc collected", extra={"count": len(out.items), "bytes": total_bytes(out.items)})
