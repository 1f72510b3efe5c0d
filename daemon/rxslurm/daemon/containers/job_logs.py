"""A container's logs for its members (``rxctl logs``): which of its holder jobs, and that job's
output as the runtime user reads it (runtime/job_output.py); and which logs are kept.

Only jobs the ledger knows as the container's may be named, and only the container's own state
folder is read: a member cannot point rxd at another project's job or at any path.

The ledger decides which logs stay: the newest ``containers.job_logs_kept`` of the container's
jobs (and its current one). The rest are removed as the runtime user
(runtime/job_log_cleanup.py) when a job is submitted and when the reconciler sees one end.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from rxslurm.daemon.errors import BadRequest, Conflict, NotFound, Unavailable
from rxslurm.daemon.identity.actors import Actor
from rxslurm.daemon.ledger.store import Ledger, LedgerDatabase
from rxslurm.daemon.ledger.timestamps import to_timestamp, utcnow
from rxslurm.daemon.projects.roles import Action
from rxslurm.daemon.projects.service import authorize
from rxslurm.daemon.runtime.job_log_cleanup import Cleaned, CleanupError, Others, remove_old_logs
from rxslurm.daemon.runtime.job_output import MAX_BYTES, OutputError, read_output
from rxslurm.daemon.runtime.rotated_output import read_rotated
from rxslurm.protocol.states import ACTIVE, State
from rxslurm.slurm.runas import RunAs, RunAsError

log = logging.getLogger(__name__)

# The newest jobs an answer lists (each one's log can be asked for with `job`).
MAX_JOBS = 100

# Removals run here, a few at a time; each is bounded by the cleaner's own deadline.
_CLEANERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rxd-job-logs")


def kept_jobs(db: LedgerDatabase, container_id: int, kept: int) -> set[int]:
    """The jobs whose logs are kept: the container's newest `kept` and its current one."""
    newest = db.execute(
        "SELECT job_id FROM jobs WHERE container_id = ? ORDER BY job_id DESC LIMIT ?",
        [container_id, kept],
    ).fetchall()
    current = db.execute("SELECT job_id FROM containers WHERE id = ?", [container_id]).fetchone()
    return {r[0] for r in newest} | ({current[0]} if current and current[0] else set())


# A one-shot's output its caller never read to the end is kept this long after it ended.
ONE_SHOT_OUTPUT_KEPT_S = 24 * 3600


def one_shots_kept(db: LedgerDatabase, container_id: int) -> set[int]:
    """The one-shot jobs (`rxctl run-once`) of the container whose output stays: queued or
    running ones, and ended ones whose caller has not read it all yet (for a day at most)."""
    since = to_timestamp(utcnow() - timedelta(seconds=ONE_SHOT_OUTPUT_KEPT_S))
    return {
        r[0]
        for r in db.execute(
            "SELECT job_id FROM one_shot_jobs WHERE container_id = ? AND job_id IS NOT NULL "
            "AND (ended_at IS NULL OR (output_read = 0 AND ended_at > ?))",
            [container_id, since],
        ).fetchall()
    }


@dataclass(frozen=True)
class Cleaning:
    """What the ledger says of one container's logs: where, as whom, which jobs' to keep, and
    the newest job it knows (logs of newer ones, not yet recorded, are kept too)."""

    container_id: int
    state_dir: str
    runtime_user: str
    keep: frozenset[int]
    newest: int
    # Detached commands whose output stays (running, or of a kept job), and when that was read.
    keep_exec: frozenset[str] = frozenset()
    read_at: float = 0.0


def cleaning_of(ledger: Ledger, container_id: int, kept: int) -> Cleaning | None:
    """The container's cleaning; None when there is nothing to decide on (no folder, no jobs)."""
    with ledger.read() as db:
        found = db.execute(
            "SELECT state_dir, runtime_user, "
            "(SELECT max(job_id) FROM jobs WHERE container_id = containers.id) "
            "FROM containers WHERE id = ?",
            [container_id],
        ).fetchone()
        if found is None or not found[0] or not found[1]:
            return None
        state_dir, runtime_user, newest = found
        keep = kept_jobs(db, container_id, kept) | one_shots_kept(db, container_id)
        # A one-shot's output (containers/one_shots.py) goes once its caller has read it all:
        # the newest such job counts as known, so its file (and older ones not kept) may go.
        # A holder job submitted but not yet recorded has no output file yet (Slurm makes it
        # when the job starts), so raising `newest` past it removes nothing of it.
        read = db.execute(
            "SELECT max(job_id) FROM one_shot_jobs WHERE container_id = ? AND output_read = 1",
            [container_id],
        ).fetchone()[0]
        newest = max(newest or 0, read + 1 if read else 0)
        if not newest:
            return None
        # Before reading the commands: one started after this keeps its output (its file is
        # newer than this moment).
        read_at = time.time()
        keep_exec = {
            command
            for command, state, job_id in db.execute(
                "SELECT id, state, job_id FROM exec_sessions WHERE container_id = ?",
                [container_id],
            ).fetchall()
            if state == "running" or job_id in keep
        }
    return Cleaning(
        container_id,
        state_dir,
        runtime_user,
        frozenset(keep),
        max(newest, *keep),
        frozenset(keep_exec),
        read_at,
    )


def clean(cleaning: Cleaning) -> Cleaned:
    """Remove the logs beyond the kept ones, as the runtime user."""
    who = RunAs.for_user(cleaning.runtime_user)
    others = Others(cleaning.keep_exec, cleaning.read_at)
    cleaned = remove_old_logs(
        cleaning.state_dir, cleaning.keep, cleaning.newest, who, others=others
    )
    if any((cleaned.removed, cleaned.skipped, cleaned.instance_logs, cleaned.exec_logs)) or (
        cleaned.trimmed
    ):
        log.info(
            "job logs cleaned",
            extra={
                "container_id": cleaning.container_id,
                "removed": list(cleaned.removed),
                "skipped": list(cleaned.skipped),
                "instance_logs": list(cleaned.instance_logs),
                "exec_logs": list(cleaned.exec_logs),
                "trimmed": list(cleaned.trimmed),
            },
        )
    return cleaned


def clean_job_logs(ledger: Ledger, container_id: int, kept: int) -> Cleaned | None:
    """The container's logs beyond the kept ones removed, here and now; None: nothing to do."""
    cleaning = cleaning_of(ledger, container_id, kept)
    return clean(cleaning) if cleaning else None


def _clean_logged(cleaning: Cleaning) -> None:
    try:
        clean(cleaning)
    except (CleanupError, RunAsError) as exc:
        log.warning(
            "job logs not cleaned",
            extra={"container_id": cleaning.container_id, "error": str(exc)},
        )
    except Exception:
        log.exception("job logs not cleaned", extra={"container_id": cleaning.container_id})


def clean_job_logs_soon(ledger: Ledger, container_id: int, kept: int) -> Future[None] | None:
    """`clean_job_logs` with the removal on the cleaners' threads: a slow or hanging folder of
    one user holds up neither a submission nor the reconciler's pass. The ledger is read here
    (its connections are per thread; the cleaners open none). A cleaning that fails is logged;
    the container's next submission or job end tries again."""
    try:
        cleaning = cleaning_of(ledger, container_id, kept)
    except Exception:
        # Cleaning is housekeeping: it never fails the submission or pass that asked for it.
        log.exception("job logs not cleaned", extra={"container_id": container_id})
        return None
    return _CLEANERS.submit(_clean_logged, cleaning) if cleaning else None


def container_logs(
    ledger: Ledger,
    actor: Actor,
    project: str,
    *,
    job_id: int | None = None,
    offset: int | None = None,
    max_bytes: int = MAX_BYTES,
    kept: int = 10,
    instance: str | None = None,
    service: bool = False,
) -> dict[str, Any]:
    """The output of the container's current (else latest) job, or of `job_id`, one of its jobs:
    the last `max_bytes`, or from byte `offset` on (how `rxctl logs -f` follows). `kept`: how
    many of its jobs' logs are kept (a missing log of an older one was cleaned). `instance`
    ("out" or "err"): that job's Apptainer instance log instead (the instance's own stdout or
    stderr, which Apptainer keeps under the container's state folder). `service`: the output
    of the project's service in that job instead (capped: runtime/rotated_output.py)."""
    if instance not in (None, *INSTANCE_STREAMS):
        raise BadRequest("instance must be out or err")
    if instance is not None and service:
        raise BadRequest("ask for the instance's log or the service's output, not both")
    with ledger.read() as db:
        row, _ = authorize(db, actor, project, Action.LOGS)
        found = db.execute(
            "SELECT id, state, job_id, state_dir, runtime_user, name FROM containers "
            "WHERE project_id = ?",
            [row["id"]],
        ).fetchone()
        if found is None or (found[1] == State.DISABLED and found[3] is None):
            raise Conflict(f"the container of {project} is not enabled")
        container_id, state, current_job, state_dir, runtime_user, container_name = found
        jobs = [
            dict(zip(("job_id", "state", "submitted_at", "started_at", "ended_at"), r, strict=True))
            for r in db.execute(
                "SELECT job_id, state, submitted_at, started_at, ended_at FROM jobs "
                "WHERE container_id = ? ORDER BY job_id DESC LIMIT ?",
                [container_id, MAX_JOBS],
            ).fetchall()
        ]
        keep = kept_jobs(db, container_id, kept)
        known = (
            job_id is None
            or job_id == current_job
            or db.execute(
                "SELECT 1 FROM jobs WHERE container_id = ? AND job_id = ?", [container_id, job_id]
            ).fetchone()
            is not None
        )
    for job in jobs:
        job["kept"] = job["job_id"] in keep
    if job_id is None:
        job_id = current_job or (jobs[0]["job_id"] if jobs else None)
        if job_id is None:
            raise Conflict(f"the container of {project} has run no job yet")
    elif not known:
        raise NotFound(f"job {job_id} is not one of the jobs of {project}'s container")
    if not state_dir or not runtime_user:
        raise Conflict(f"the container of {project} has no folder")
    try:
        who = RunAs.for_user(runtime_user)
        if service:
            read = read_rotated(
                state_dir, service_log_name(job_id), who, offset=offset, max_bytes=max_bytes
            )
            fields = read.fields()
        else:
            name = None
            if instance is not None:
                name = instance_log_name(container_name, runtime_user, job_id, instance)
            piece = read_output(
                state_dir, job_id, who, offset=offset, max_bytes=max_bytes, name=name
            )
            fields = {
                "text": piece.text,
                "start": piece.start,
                "end": piece.end,
                "size": piece.size,
                "cut": piece.cut,
                "missing": piece.missing,
            }
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
        **fields,
        # Gone because it is older than the logs rxd keeps (`containers.job_logs_kept`).
        "cleaned": bool(fields["missing"]) and job_id not in keep,
        "jobs": jobs,
        **({"instance": instance} if instance else {}),
        **({"service": True} if service else {}),
    }


def service_log_name(job_id: int) -> str:
    """Where holder.sh keeps the output of the project's service in job `job_id` (its older
    part: .1; .dropped when an even older one went)."""
    return f"job-{int(job_id)}.service"


# Apptainer's instance logs: the instance's stdout and stderr.
INSTANCE_STREAMS = ("out", "err")


def instance_log_name(container_name: str, runtime_user: str, job_id: int, stream: str) -> str:
    """Where Apptainer keeps the log of the container's instance of `job_id`, under the state
    folder (its APPTAINER_CONFIGDIR): `instances/logs/<node's host name>/<user>/<instance>`; the
    host is whichever folder holds it (the reader's "*")."""
    return f"apptainer/instances/logs/*/{runtime_user}/{container_name}-{int(job_id)}.{stream}"
