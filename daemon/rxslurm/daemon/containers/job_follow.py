"""What Slurm says of a job rxd submitted for a record of its own (an image build, a one-shot
command): one look per reconciler pass, the same rules for each kind.

A record's job proves to be its own by its comment and its user (any user can name a job
anything). A record whose job id was never recorded (rxd stopped between sbatch and the ledger)
adopts its job from the queue by that proof; with none after ``SUBMIT_GRACE_S`` it was never
submitted. A job gone from squeue is asked of sacct; one that neither knows has ended
``GONE_GRACE_S`` after the record last changed. While Slurm cannot be asked, or squeue skipped
records it could not read, nothing is concluded: the next pass looks again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from rxslurm.daemon.ledger.timestamps import from_timestamp
from rxslurm.daemon.ports import Scheduler
from rxslurm.slurm.errors import SlurmUnavailable
from rxslurm.slurm.jobs import JobInfo, Listing

log = logging.getLogger("rxslurm.job_follow")

SUBMIT_GRACE_S = 120
GONE_GRACE_S = 300


class Seen(Enum):
    WAIT = "wait"  # nothing to change this pass
    ADOPT = "adopt"  # its job found in the queue: record its id
    STARTED = "started"  # its job runs and the record is still in its first state
    ENDED = "ended"  # its job finished: `job` says how
    NEVER_SUBMITTED = "never submitted"
    GONE = "gone"  # neither squeue nor sacct knows its job any more


@dataclass(frozen=True)
class Look:
    seen: Seen
    job: JobInfo | None = None


@dataclass(frozen=True)
class Follower:
    """How to look at one kind of record: its scheduler, clock, first state, and the proof that
    a job is a record's own."""

    scheduler: Scheduler
    clock: Callable[[], datetime]
    first_state: str
    is_ours: Callable[[dict[str, Any], JobInfo], bool]

    def look(self, row: dict[str, Any], queue: Listing, blind: bool) -> Look:
        """What to do with an active record (``row``: its ``job_id``, ``state``, ``created_at``
        and ``updated_at``), given this pass's squeue (``blind``: it skipped unreadable jobs)."""
        job_id = row["job_id"]
        if job_id is None:
            return self._without_job(row, queue)
        if job_id in queue.unknown_ids():
            return Look(Seen.WAIT)
        job = queue.get(job_id)
        if job is not None and not self.is_ours(row, job):
            job = None
        if job is not None and not job.is_finished:
            if job.state == "RUNNING" and row["state"] == self.first_state:
                return Look(Seen.STARTED, job)
            return Look(Seen.WAIT)
        if job is None:
            if blind:
                return Look(Seen.WAIT)
            try:
                job = self.scheduler.history([job_id]).get(job_id)
            except SlurmUnavailable:
                return Look(Seen.WAIT)
            if job is None or not job.is_finished:
                if self._within(row["updated_at"], GONE_GRACE_S):
                    return Look(Seen.WAIT)
                return Look(Seen.GONE)
        return Look(Seen.ENDED, job)

    def still_active(self, row: dict[str, Any], queue: Listing) -> bool:
        """Whether a record rxd ended (cancelled) still has its own job active in Slurm."""
        job = queue.get(row["job_id"])
        return job is not None and job.is_active and self.is_ours(row, job)

    def _without_job(self, row: dict[str, Any], queue: Listing) -> Look:
        for job in queue.values():
            if self.is_ours(row, job):
                return Look(Seen.ADOPT, job)
        if self._within(row["created_at"], SUBMIT_GRACE_S):
            return Look(Seen.WAIT)
        return Look(Seen.NEVER_SUBMITTED)

    def _within(self, stamp: str, seconds: float) -> bool:
        return self.clock() - from_timestamp(stamp) < timedelta(seconds=seconds)


FollowOne = Callable[[dict[str, Any], Follower, Listing, bool], int]


def follow_records(
    rows: list[dict[str, Any]],
    scheduler: Scheduler,
    name_prefix: str,
    follower: Follower,
    follow: FollowOne,
    what: str,
    key: str,
) -> int:
    """One reconciler pass over a kind's records: one squeue for all (none while there are no
    records; nothing concluded while Slurm cannot be asked), each record followed; one that fails
    is logged (``what``, the record's id under ``key``) and left for the next pass. The number
    of changes."""
    if not rows:
        return 0
    try:
        queue = scheduler.queue(name_prefix=name_prefix)
    except SlurmUnavailable:
        return 0
    blind = any(s.job_id is None for s in queue.skipped)
    changes = 0
    for row in rows:
        try:
            changes += follow(row, follower, queue, blind)
        except Exception:
            log.exception(f"could not follow {what}", extra={key: row["id"]})
    return changes
