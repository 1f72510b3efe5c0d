"""What garbage collection removes: the decisions alone, from facts gathered elsewhere
(containers/gc.py), so each rule is tested without files or users.

- A pulled image goes when no project or container names its reference and it was installed
  at or before the cutoff.
- A built image (a succeeded image build's SIF) goes when no project or container names its path
  and the build ended at or before the cutoff; its record goes with it.
- A quarantined folder (a deleted project's container or build folder) goes when it was moved to
  quarantine at or before the cutoff.
- An overlay backup (`overlay.img.before-*`, a reset's or an import's) goes when it was made
  at or before the cutoff.
- A holder job's log and status file go when the job is not one whose log is kept
  (`containers.job_logs_kept`, and the current job) and is older than the newest job rxd knows.
- A leftover goes once nothing in it changed for its SETTLED_S, whatever the cutoff: what a
  `start --fresh` cut short left (`.fresh-*`, instance state its owner already asked to remove)
  and a killed import's folder (`import-<stamp>`, an upload that never became the overlay).
- A snapshot goes when the ledger knows it and it is not one of the newest
  `containers.snapshots_kept`; a snapshot file the ledger does not know yet (one being taken) stays.

A project labelled `keep=true` loses nothing: its container is not even listed.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from rxslurm.daemon.images.cache_walk import CachedImage
from rxslurm.daemon.quarantine import Quarantined
from rxslurm.daemon.runtime.state_gc import Entry

_JOB_FILE = re.compile(r"job-([0-9]{1,18})\.(?:out|status)", re.ASCII)


@dataclass(frozen=True)
class Item:
    """One thing garbage collection removes (or, in a dry run, would)."""

    kind: str  # image, built-image, quarantined, backup, job-log, job-status, snapshot,
    # fresh-leftover, import-leftover
    name: str  # a file name or a path relative to its container's folder
    owner: str  # who owns it on disk ("root", or the runtime user)
    bytes: int
    project: str | None = None  # the project whose container holds it

    def view(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "name": self.name,
            "owner": self.owner,
            "bytes": self.bytes,
            "project": self.project,
        }


def unused_images(
    cached: Iterable[CachedImage], in_use: Collection[str], cutoff: int
) -> list[Item]:
    """Cached images whose file no project or container names, installed at or before ``cutoff``."""
    return [
        Item("image", c.name, "root", c.bytes)
        for c in cached
        if c.name not in in_use and c.installed <= cutoff
    ]


@dataclass(frozen=True)
class BuiltImage:
    """A succeeded image build, as the ledger records it."""

    build_id: int
    project: str
    runtime_user: str
    image_path: str
    bytes: int
    ended: int | None  # seconds since the epoch; None: unknown, kept


def unused_builds(
    builds: Iterable[BuiltImage], in_use: Collection[str], cutoff: int
) -> list[tuple[int, Item]]:
    """Built images whose path no project or container names, built at or before ``cutoff``,
    with their build's id."""
    return [
        (b.build_id, Item("built-image", b.image_path, b.runtime_user, b.bytes, b.project))
        for b in builds
        if b.image_path not in in_use and b.ended is not None and b.ended <= cutoff
    ]


def old_quarantine(entries: Iterable[Quarantined], cutoff: int) -> list[Item]:
    return [
        Item("quarantined", q.name, "root", q.bytes)
        for q in entries
        if q.moved is not None and q.moved <= cutoff
    ]


@dataclass(frozen=True)
class Container:
    """What the ledger says of one container's folder."""

    project: str
    runtime_user: str
    keep_jobs: frozenset[int]  # whose logs are kept
    newest_job: int | None  # the newest job rxd knows (None: none yet, every log stays)
    kept_snapshots: frozenset[str]  # the newest snapshots_kept the ledger knows
    known_snapshots: frozenset[str]  # every snapshot file name the ledger knows


# A leftover untouched for this long (nothing in it changed): the script that made it is long
# past its deadline (runtime/fresh_state.py's two minutes; an import's 30 once its upload ended,
# and an upload writes as it goes), so nothing but gc will ever remove it.
FRESH_SETTLED_S = 600
IMPORT_SETTLED_S = 4 * 3600
SETTLED_S = {"fresh-leftover": FRESH_SETTLED_S, "import-leftover": IMPORT_SETTLED_S}


def container_items(
    container: Container, entries: Iterable[Entry], cutoff: int, now: int
) -> list[Item]:
    """The entries of the container's folder that go (``now``: seconds since the epoch)."""
    items = []
    for e in entries:
        if e.kind in SETTLED_S:
            goes = e.changed <= now - SETTLED_S[e.kind]
        else:
            goes = _goes(container, e, cutoff)
        if goes:
            items.append(Item(e.kind, e.name, container.runtime_user, e.bytes, container.project))
    return items


def _goes(container: Container, entry: Entry, cutoff: int) -> bool:
    if entry.kind == "backup":
        return entry.changed <= cutoff
    if entry.kind in ("job-log", "job-status"):
        found = _JOB_FILE.fullmatch(entry.name)
        if found is None or container.newest_job is None:
            return False
        job = int(found.group(1))
        return job not in container.keep_jobs and job < container.newest_job
    if entry.kind == "snapshot":
        name = entry.name.removeprefix("snapshots/")
        return name in container.known_snapshots and name not in container.kept_snapshots
    return False


def total_bytes(items: Iterable[Item]) -> int:
    return sum(i.bytes for i in items)
