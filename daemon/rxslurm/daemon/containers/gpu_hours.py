"""GPU-hours a project's containers used, per project and per Slurm user, for `rxctl history`:
from Slurm's accounting (sacct through the Scheduler port), never from rxd's own clock.

Each of the project's holder jobs the ledger remembers counts elapsed time (start to end, or to
now while it runs) times the GPUs Slurm allocated it (AllocTRES; what it asked for before it
ran). Best effort: a record sacct cannot give, or that does not parse, is left out and counted
as skipped; no accounting at all is an answer too (`{"unavailable": why}`). The user is the
job's Slurm user: the runtime user the project ran as then.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rxslurm.daemon.identity.actors import Actor
from rxslurm.daemon.ledger.store import Ledger
from rxslurm.daemon.ports import Scheduler
from rxslurm.daemon.projects.roles import Action
from rxslurm.daemon.projects.service import authorize
from rxslurm.slurm.errors import SlurmError
from rxslurm.slurm.jobs import JobInfo

# How many of the project's newest holder jobs are asked about (one sacct call, a bounded argv).
MAX_JOBS = 500


@dataclass
class GpuUse:
    total_s: float = 0.0
    by_user_s: dict[str, float] = field(default_factory=dict)
    jobs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpu_hours": _hours(self.total_s),
            "by_user": {user: _hours(s) for user, s in sorted(self.by_user_s.items())},
            "jobs": self.jobs,
        }


def allocated_gpus(job: JobInfo) -> int:
    """The GPUs of a job: the plain `gres/gpu=N` count, else the sum of the typed ones (a TRES
    list that tracks only typed GPUs, e.g. "gres/gpu:a100=2")."""
    if job.gpus:
        return job.gpus
    return sum(
        int(m.group(1))
        for item in job.gres.split(",")
        if (m := re.fullmatch(r"gpu(?::[^:,]+)?:([0-9]{1,9})", item.strip()))
    )


def gpu_seconds(records: Iterable[JobInfo], now: float) -> GpuUse:
    """Elapsed × allocated GPUs, summed over the jobs that started (a running one up to now)."""
    use = GpuUse()
    for job in records:
        if job.start_time is None:
            continue
        gpus = allocated_gpus(job)
        if not gpus:
            continue
        end = job.end_time if job.end_time is not None and job.end_time >= job.start_time else now
        used = max(0.0, end - job.start_time) * gpus
        use.total_s += used
        use.by_user_s[job.user] = use.by_user_s.get(job.user, 0.0) + used
        use.jobs += 1
    return use


def project_gpu_hours(
    ledger: Ledger, scheduler: Scheduler, actor: Actor, project: str, now: float
) -> dict[str, Any]:
    """The project's GPU-hours for a member who may see it (404 otherwise, as its history)."""
    with ledger.read() as db:
        row, _ = authorize(db, actor, project, Action.VIEW)
        job_ids = [
            int(j)
            for (j,) in db.execute(
                "SELECT j.job_id FROM jobs j JOIN containers c ON c.id = j.container_id "
                "WHERE c.project_id = ? "
                "ORDER BY j.job_id DESC LIMIT ?",
                [row["id"], MAX_JOBS],
            ).fetchall()
        ]
    if not job_ids:
        return GpuUse().to_dict() | {"skipped": 0}
    try:
        found = scheduler.history(job_ids)
    except SlurmError as exc:
        return {"unavailable": str(exc)}
    use = gpu_seconds(found.values(), now)
    return use.to_dict() | {"skipped": len(found.skipped)}


def _hours(seconds: float) -> float:
    return round(seconds / 3600, 2)
