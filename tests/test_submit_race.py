"""A reconcile pass that adopts a job before its submitter records it must not get it cancelled."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rxslurm.daemon.config import Config
from rxslurm.daemon.containers.reconciler import Reconciler
from rxslurm.daemon.containers.service import ContainerService
from rxslurm.daemon.ledger.store import Ledger
from rxslurm.daemon.ledger.timestamps import to_timestamp, utcnow
from rxslurm.daemon.settings import Settings
from rxslurm.slurm.jobs import JobInfo, Listing

JOB = 77


class AdoptingSlurm:
    """sbatch answers only after a reconcile pass has already seen the job in the queue."""

    def __init__(self) -> None:
        self.reconciler: Reconciler | None = None
        self.cancelled: list[int] = []
        self.comment = ""

    def submit(self, script: str, spec: Any, as_user: Any) -> int:
        self.comment = spec.comment
        assert self.reconciler is not None
        report = self.reconciler.reconcile_once()
        assert report.changes == 1  # the pass adopted the job
        return JOB

    def queue(self, name_prefix: str | None = None) -> Listing:
        if not self.comment:
            return Listing()
        job = JobInfo(
            job_id=JOB,
            name="rx-p",
            user="rxalice",
            state="PENDING",
            comment=self.comment,
            submit_time=int(time.time()),
        )
        return Listing({JOB: job})

    def history(self, job_ids: Any) -> Listing:
        return Listing()

    def cancel(self, job_id: int, **_: Any) -> None:
        self.cancelled.append(job_id)


def test_the_submitter_keeps_a_job_the_reconciler_adopted_first(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "ledger.db", migrate=True)
    now = to_timestamp(utcnow())
    with ledger.transaction() as db:
        db["platform_users"].insert({"id": "rxalice", "created_at": now})
        project = (
            db["projects"]
            .insert(
                {
                    "name": "p",
                    "created_at": now,
                    "created_by": "rxalice",
                    "workspace": str(tmp_path),
                }
            )
            .last_pk
        )
        db["containers"].insert(
            {
                "project_id": project,
                "name": "rx-p",
                "state": "starting",
                "runtime_user": "rxalice",
                "image": "/img.sif",
                "overlay_path": str(tmp_path / "overlay.img"),
                "state_dir": str(tmp_path),
                "created_at": now,
                "updated_at": now,
            }
        )
    slurm = AdoptingSlurm()
    rt = ContainerService(ledger, Config(), slurm)  # type: ignore[arg-type]
    slurm.reconciler = Reconciler(rt, interval=3600)

    assert rt.submit(1, Settings(), actor="rxalice", origin="socket") == JOB

    assert slurm.cancelled == []
    container = ledger.db["containers"].get(1)
    assert (container["job_id"], container["state"]) == (JOB, "starting")
    assert ledger.db["jobs"].get(JOB)["container_id"] == 1
