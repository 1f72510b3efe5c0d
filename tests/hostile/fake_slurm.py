"""A reconciler on a real ledger with a Slurm stand-in whose queue a test writes: fast tier."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from rxslurm.daemon.config import Config
from rxslurm.daemon.containers.reconciler import Reconciler
from rxslurm.daemon.containers.service import ContainerService, job_comment
from rxslurm.daemon.ledger.store import Ledger
from rxslurm.daemon.ledger.timestamps import to_timestamp, utcnow
from rxslurm.slurm.jobs import JobInfo, Listing

CONFIG = Config()


@dataclass
class QueueSlurm:
    """squeue answers what ``jobs`` holds; cancels are recorded, never done; no submits."""

    jobs: dict[int, JobInfo] = field(default_factory=dict)
    cancelled: list[int] = field(default_factory=list)
    skipped: list[Any] = field(default_factory=list)

    def queue(self, name_prefix: str | None = None) -> Listing:
        listing = Listing(
            {k: j for k, j in self.jobs.items() if j.name.startswith(name_prefix or "")}
        )
        listing.skipped.extend(self.skipped)
        return listing

    def history(self, job_ids: Any) -> Listing:
        return Listing()

    def cancel(self, job_id: int, **_: Any) -> None:
        self.cancelled.append(job_id)

    def submit(self, *args: Any, **kwargs: Any) -> int:
        raise AssertionError("this test submits nothing")

    def add(self, job_id: int, user: str, name: str, container_id: int, **kw: Any) -> JobInfo:
        job = JobInfo(
            job_id=job_id,
            name=name,
            user=user,
            state=kw.pop("state", "PENDING"),
            reason=kw.pop("reason", "JobHeldUser"),
            comment=kw.pop("comment", job_comment(CONFIG, container_id)),
            submit_time=kw.pop("submit_time", int(utcnow().timestamp())),
            **kw,
        )
        self.jobs[job_id] = job
        return job


@dataclass
class Rig:
    ledger: Ledger
    slurm: QueueSlurm
    reconciler: Reconciler

    def container(self, cid: int = 1) -> dict[str, Any]:
        return self.ledger.db["containers"].get(cid)


def rig(tmp_path: Path, *containers: dict[str, Any]) -> Rig:
    """A ledger with one project and container per dict (name, state, runtime_user, job_id,
    state_dir, asked_s_ago: how long ago it last changed state), and a reconciler over a
    QueueSlurm."""
    ledger = Ledger.open(tmp_path / "ledger.db", migrate=True)
    now = utcnow()
    with ledger.transaction() as db:
        db["platform_users"].insert({"id": "rxalice", "created_at": to_timestamp(now)})
        for spec in containers:
            name = spec["name"]
            project = (
                db["projects"]
                .insert(
                    {
                        "name": name.removeprefix("rx-"),
                        "created_at": to_timestamp(now),
                        "created_by": "rxalice",
                        "workspace": str(tmp_path),
                    }
                )
                .last_pk
            )
            changed = now - timedelta(seconds=spec.get("asked_s_ago", 0))
            db["containers"].insert(
                {
                    "project_id": project,
                    "name": name,
                    "state": spec.get("state", "starting"),
                    "desired": "running",
                    "runtime_user": spec.get("runtime_user", "rxalice"),
                    "job_id": spec.get("job_id"),
                    "image": "/img.sif",
                    "overlay_path": str(tmp_path / "overlay.img"),
                    # No status file to read unless a test asks for one.
                    "state_dir": spec.get("state_dir"),
                    "created_at": to_timestamp(changed),
                    "updated_at": to_timestamp(changed),
                }
            )
    slurm = QueueSlurm()
    rt = ContainerService(ledger, CONFIG, slurm)  # type: ignore[arg-type]
    return Rig(ledger, slurm, Reconciler(rt, interval=3600))
