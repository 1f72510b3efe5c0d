"""Which Slurm jobs are containers': a job's comment only claims it, the job has to prove it.

Any user can submit a job with any name and comment, so ``rx:container=7`` in a comment is a
claim, not a fact. A job is container 7's only if it also runs as the container's runtime user
and has the container's name; it can be adopted (taken as the answer to a submission rxd lost
track of) only if it was submitted after the container asked for a job. Everything else is a
stranger: the reconciler neither adopts nor cancels it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rxslurm.daemon.config import Config
from rxslurm.daemon.containers.service import container_id_from_comment
from rxslurm.daemon.containers.states import State
from rxslurm.daemon.ledger.store import LedgerDatabase
from rxslurm.daemon.ledger.timestamps import from_timestamp
from rxslurm.protocol.job_comment import is_tagged
from rxslurm.slurm.jobs import JobInfo, Skipped

# Slurm's submit times are whole seconds from slurmctld's clock, the container's request time
# is rxd's: a job submitted this much before the request still counts as after it.
CLOCK_SLACK_S = 2
# Container ids looked up per query (old SQLite builds allow 999 parameters).
_CHUNK = 500


@dataclass
class Claims:
    """The proved jobs by job id and by container id; the strangers, for the log."""

    jobs: dict[int, JobInfo] = field(default_factory=dict)
    by_container: dict[int, list[JobInfo]] = field(default_factory=dict)
    strangers: list[Skipped] = field(default_factory=list)


def claims(config: Config, db: LedgerDatabase, jobs: Iterable[JobInfo]) -> Claims:
    """Sort the jobs of a queue listing into containers' jobs and strangers."""
    claimed: dict[int, list[JobInfo]] = {}
    result = Claims()
    for job in jobs:
        cid = container_id_from_comment(config, job.comment)
        if cid is not None:
            claimed.setdefault(cid, []).append(job)
        elif is_tagged(config.slurm.tag, job.comment):
            result.strangers.append(Skipped.of("names no container", job.comment, job.job_id))
    owners = _containers(db, claimed)
    for cid, listed in claimed.items():
        row = owners.get(cid)
        for job in listed:
            if row is not None and job.user == row["runtime_user"] and job.name == row["name"]:
                result.jobs[job.job_id] = job
                result.by_container.setdefault(cid, []).append(job)
            else:
                why = f"imitates container {cid}" if row else f"names container {cid}"
                result.strangers.append(Skipped.of(f"{why}, left alone", job.user, job.job_id))
    return result


def adoptable(row: dict[str, Any], jobs: Iterable[JobInfo]) -> list[JobInfo]:
    """The container's proved jobs that answer its request for one: it is STARTING with no
    job, and they were submitted since it asked (an older job of the same user and name is
    not the answer to this request)."""
    if row["state"] != State.STARTING or row["job_id"] is not None:
        return []  # only a STARTING container has asked for a job; WAITING ones queue
    asked = int(from_timestamp(row["updated_at"]).timestamp())
    return [
        j
        for j in jobs
        if not j.is_finished
        and j.submit_time is not None
        and j.submit_time >= asked - CLOCK_SLACK_S
    ]


def _containers(db: LedgerDatabase, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    wanted = sorted(ids)
    found: dict[int, dict[str, Any]] = {}
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        where = f"id IN ({', '.join('?' * len(chunk))})"
        for r in db.table("containers").rows_where(where, chunk, select="id, name, runtime_user"):
            found[r["id"]] = r
    return found
