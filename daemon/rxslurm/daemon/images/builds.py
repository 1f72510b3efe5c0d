"""Image build records: their states, how a row reads, and what a succeeded build gives.

A build is one Slurm job run as the project's runtime identity (containers/builds.py submits and
follows it); its row in ``image_builds`` is the truth about it. States:

    queued ──▶ building ──▶ succeeded
       │           ├──────▶ failed
       └───────────┴──────▶ cancelled

``queued`` (job submitted, or about to be), ``building`` (the job runs), and the three ends. A
build's SIF lives in its build folder, ``<state_root>/rxbuild-<project>-<id>/image.sif``, owned
by the runtime user who built it (root never opens it).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from rxslurm.daemon.ledger.store import Ledger, LedgerDatabase
from rxslurm.protocol.job_comment import BUILD_JOB_PREFIX, build_job_name

__all__ = ["BUILD_JOB_PREFIX", "build_job_name"]

IMAGE_FILE = "image.sif"


class BuildState(StrEnum):
    QUEUED = "queued"
    BUILDING = "building"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# A build in one of these has (or is about to have) a Slurm job and holds a lease.
ACTIVE_BUILDS = (BuildState.QUEUED, BuildState.BUILDING)
ENDED_BUILDS = (BuildState.SUCCEEDED, BuildState.FAILED, BuildState.CANCELLED)
# An image may be renamed while it is queued or once it exists.
RENAMABLE = (BuildState.QUEUED, BuildState.SUCCEEDED)


def build_comment(tag: str, build_id: int) -> str:
    return f"{tag}:build={int(build_id)}"


def build_dir_name(project: str, build_id: int) -> str:
    """The build's folder below containers.state_root (beside the container's rx-<project>)."""
    return build_job_name(project, build_id)


@dataclass(frozen=True)
class Build:
    """One row of ``image_builds``, typed."""

    id: int
    project_id: int
    name: str
    draft: str
    state: BuildState
    reason: str | None
    job_id: int | None
    runtime_user: str
    runtime_uid: int
    build_dir: str
    context: str
    image_path: str | None
    size_bytes: int | None
    sha256: str | None
    base: str
    created_at: str
    created_by: str
    started_at: str | None
    ended_at: str | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Build:
        return cls(
            id=row["id"],
            project_id=row["project_id"],
            name=row["name"],
            draft=row["draft"],
            state=BuildState(row["state"]),
            reason=row["reason"],
            job_id=row["job_id"],
            runtime_user=row["runtime_user"],
            runtime_uid=row["runtime_uid"],
            build_dir=row["build_dir"],
            context=row["context"],
            image_path=row["image_path"],
            size_bytes=row["size_bytes"],
            sha256=row["sha256"],
            base=row["base"],
            created_at=row["created_at"],
            created_by=row["created_by"],
            started_at=row["started_at"],
            ended_at=row["ended_at"],
        )


def _db(store: Ledger | LedgerDatabase) -> LedgerDatabase:
    return store.db if isinstance(store, Ledger) else store


def get_build(store: Ledger | LedgerDatabase, project_id: int, build_id: int) -> Build | None:
    """The build ``build_id`` of project ``project_id``; None when that project has no such."""
    rows = list(
        _db(store)
        .table("image_builds")
        .rows_where("id = ? AND project_id = ?", [build_id, project_id])
    )
    return Build.from_row(rows[0]) if rows else None


def succeeded_image(store: Ledger | LedgerDatabase, project_id: int, build_id: int) -> Path | None:
    """The SIF of build ``build_id`` if it is project ``project_id``'s and succeeded; else None.

    The file is the runtime user's (in the build's folder): whoever runs it as the image of a
    container runs it as that project's runtime identity, never as root.
    """
    build = get_build(store, project_id, build_id)
    if build is None or build.state is not BuildState.SUCCEEDED or not build.image_path:
        return None
    return Path(build.image_path)


def find_build(store: Ledger | LedgerDatabase, project_id: int, ref: str) -> Build | None:
    """A build named by its id ("12") or by its image's name; a name means the newest build of
    that name (a live one first: names of live images are unique)."""
    db = _db(store)
    if ref.isascii() and ref.isdigit() and len(ref) <= 18:
        found = get_build(db, project_id, int(ref))
        if found is not None:
            return found
    rows = list(
        db.table("image_builds").rows_where(
            "project_id = ? AND name = ?",
            [project_id, ref],
            order_by="state IN ('queued', 'building', 'succeeded') DESC, id DESC",
            limit=1,
        )
    )
    return Build.from_row(rows[0]) if rows else None


def project_builds(store: Ledger | LedgerDatabase, project_id: int) -> list[Build]:
    rows = (
        _db(store).table("image_builds").rows_where("project_id = ?", [project_id], order_by="id")
    )
    return [Build.from_row(row) for row in rows]
