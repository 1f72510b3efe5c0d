"""A container's logs for its members (``rxctl logs``): which of its holder jobs, and that job's
output as the runtime user reads it (runtime/job_output.py).

Only jobs the ledger knows as the container's may be named, and only the container's own state
folder is read: a member cannot point rxd at another project's job or at any path.
"""

from __future__ import annotations

from typing import Any

from rxslurm.daemon.errors import Conflict, NotFound, Unavailable
from rxslurm.daemon.identity.actors import Actor
from rxslurm.daemon.ledger.store import Ledger
from rxslurm.daemon.projects.roles import Action
from rxslurm.daemon.projects.service import authorize
from rxslurm.daemon.runtime.job_output import MAX_BYTES, OutputError, read_output
from rxslurm.protocol.states import ACTIVE, State
from rxslurm.slurm.runas import RunAs, RunAsError

# The newest jobs an answer lists (each one's log can be asked for with `job`).
MAX_JOBS = 100


def container_logs(
    ledger: Ledger,
    actor: Actor,
    project: str,
    *,
    job_id: int | None = None,
    offset: int | None = None,
    max_bytes: int = MAX_BYTES,
) -> dict[str, Any]:
    """The output of the container's current (else latest) job, or of `job_id`, one of its jobs:
    the last `max_bytes`, or from byte `offset` on (how `rxctl logs -f` follows)."""
    with ledger.read() as db:
        row, _ = authorize(db, actor, project, Action.LOGS)
        found = db.execute(
            "SELECT id, state, job_id, state_dir, runtime_user FROM containers "
            "WHERE project_id = ?",
            [row["id"]],
        ).fetchone()
        if found is None or (found[1] == State.DISABLED and found[3] is None):
            raise Conflict(f"the container of {project} is not enabled")
        container_id, state, current_job, state_dir, runtime_user = found
        jobs = [
            dict(zip(("job_id", "state", "submitted_at", "started_at", "ended_at"), r, strict=True))
            for r in db.execute(
                "SELECT job_id, state, submitted_at, started_at, ended_at FROM jobs "
                "WHERE container_id = ? ORDER BY job_id DESC LIMIT ?",
                [container_id, MAX_JOBS],
            ).fetchall()
        ]
    known = {job["job_id"] for job in jobs} | ({current_job} if current_job else set())
    if job_id is None:
        job_id = current_job or (jobs[0]["job_id"] if jobs else None)
        if job_id is None:
            raise Conflict(f"the container of {project} has run no job yet")
    elif job_id not in known:
        raise NotFound(f"job {job_id} is not one of the jobs of {project}'s container")
    if not state_dir or not runtime_user:
        raise Conflict(f"the container of {project} has no folder")
    try:
        who = RunAs.for_user(runtime_user)
        piece = read_output(state_dir, job_id, who, offset=offset, max_bytes=max_bytes)
    except RunAsError as exc:
        raise Conflict(f"cannot read the logs of {project}: {exc}") from None
    except OutputError as exc:
        raise Unavailable(f"cannot read the logs of {project}: {exc}") from None
    return {
        "project": project,
        "job_id": job_id,
        "state": state,
        # The job still holds the container: more output may come (`rxctl logs -f` goes on).
        "live": job_id == current_job and state in {s.value for s in ACTIVE},
        "text": piece.text,
        "start": piece.start,
        "end": piece.end,
        "size": piece.size,
        "cut": piece.cut,
        "missing": piece.missing,
        "jobs": jobs,
    }
