"""A project runs as one of its current owners, or as the service account, or not at all.

When the user a project runs as stops being an owner (removed, demoted, unbound), the project's
run-as user is cleared and its container stopped, in the transaction that made the change and
with an audit event; a current owner must choose again
(`rxctl project run-as --project NAME bound`).
Choosing another identity stops a container that runs as the old one too. Enable, wake and exec
check the identity again (projects.require_runtime_identity), so nothing runs as someone who
left, even when a stop is still under way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rxslurm.daemon.containers.states import State
from rxslurm.daemon.containers.stop_request import request_stop
from rxslurm.daemon.ledger.audit import record_event
from rxslurm.daemon.ledger.records import Record
from rxslurm.daemon.ledger.store import LedgerDatabase


@dataclass(frozen=True, kw_only=True)
class RunAsProject(Record):
    """What the run-as rule reads of a project's row."""

    table: ClassVar[str] = "projects"
    id: int
    name: str
    run_as_user: str | None


def release_run_as(
    db: LedgerDatabase,
    project: RunAsProject,
    why: str,
    *,
    clear: bool,
    actor: str,
    actor_uid: int | None,
    origin: str,
) -> int | None:
    """Stop the project's container (and, with `clear`, forget its run-as user) because `why`;
    the Slurm job to cancel after commit, if any."""
    if clear:
        db.table("projects").update(project.id, {"run_as_user": None})
    rows = list(db.table("containers").rows_where("project_id = ?", [project.id]))
    container = rows[0] if rows and rows[0]["state"] != State.DISABLED else None
    job_id = None
    if container is not None:
        job_id = request_stop(
            db,
            container,
            f"stopped: {why}",
            actor=actor,
            actor_uid=actor_uid,
            origin=origin,
        )
    record_event(
        db,
        actor=actor,
        actor_uid=actor_uid,
        origin=origin,
        action="project.run-as-released",
        target_type="project",
        target_id=project.name,
        detail={
            "run_as_user": project.run_as_user,
            "why": why,
            "cleared": clear,
            "container": container["state"] if container else None,
            "job_id": job_id,
        },
    )
    return job_id


def projects_run_as(db: LedgerDatabase, platform_user: str) -> list[RunAsProject]:
    """Projects that run as this platform user's bound identity."""
    rows = db.table("projects").rows_where("run_as = 'bound' AND run_as_user = ?", [platform_user])
    return [RunAsProject.from_row(row) for row in rows]
