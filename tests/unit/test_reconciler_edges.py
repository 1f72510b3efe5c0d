"""Every edge the reconciler handles, on a temp-dir ledger with a fake scheduler, runtime and
clock (tests/support/fakes.py): no root, no Slurm. Each test is named for its edge."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rxslurm.daemon.config import Config
from rxslurm.daemon.containers.reconciler import Reconciler
from rxslurm.daemon.containers.service import ContainerService, container_name, job_comment
from rxslurm.daemon.identity.actors import Actor
from rxslurm.daemon.ledger.store import Ledger
from rxslurm.daemon.ledger.timestamps import to_timestamp
from rxslurm.daemon.quotas import leases as quotas
from rxslurm.daemon.runtime.agent_files import AgentSessions
from tests.support.fakes import FakeClock, FakeRuntime, FakeScheduler

# Every account the tests act as exists on any Linux host: no test users needed.
RUNTIME_USER = "nobody"
OWNER = Actor(platform_user="ada", uid=65534, user=RUNTIME_USER, admin=False, origin="socket")


@dataclass
class World:
    ledger: Ledger
    clock: FakeClock
    slurm: FakeScheduler
    runtime: FakeRuntime
    service: ContainerService
    reconciler: Reconciler

    def row(self, project: str) -> dict[str, Any]:
        rows = list(self.ledger.db.table("containers").rows_where("name = ?", [f"rx-{project}"]))
        return rows[0]

    def state(self, project: str) -> str:
        return str(self.row(project)["state"])

    def set(self, project: str, **values: Any) -> None:
        with self.ledger.transaction() as db:
            db.table("containers").update(self.row(project)["id"], values)

    def add_job(self, project: str, state: str = "PENDING", **values: Any) -> int:
        """A job of the container as rxd would submit it, recorded in the ledger."""
        row = self.row(project)
        job_id = self.slurm.next_id
        self.slurm.next_id += 1
        self.slurm.jobs[job_id] = self.slurm_job(project, job_id, state)
        self.set(project, job_id=job_id, **values)
        with self.ledger.transaction() as db:
            db.table("jobs").insert(
                {
                    "job_id": job_id,
                    "container_id": row["id"],
                    "state": state,
                    "submitted_at": to_timestamp(self.clock()),
                }
            )
        return job_id

    def slurm_job(self, project: str, job_id: int, state: str) -> Any:
        from rxslurm.slurm.jobs import JobInfo

        return JobInfo(
            job_id=job_id,
            name=container_name(project),
            user=RUNTIME_USER,
            state=state,
            reason="None" if state == "RUNNING" else "Priority",
            nodes="n1" if state == "RUNNING" else "",
            comment=job_comment(self.service.config, self.row(project)["id"]),
            submit_time=int(self.clock().timestamp()),
        )

    def lease_holders(self) -> list[int]:
        return sorted(r["container_id"] for r in self.ledger.db.table("leases").rows)

    def reconcile(self) -> int:
        report = self.reconciler.reconcile_once()
        return report.changes


def world(tmp_path: Path, *projects: tuple[str, str], **settings: Any) -> World:
    """A ledger with one project per (name, container state), each owned by OWNER and run as
    RUNTIME_USER; project settings (gpus, partition, idle_timeout_min...) for all of them."""
    ledger = Ledger.open(tmp_path / "ledger.db", migrate=True)
    clock = FakeClock()
    now = to_timestamp(clock())
    with ledger.transaction() as db:
        db.table("platform_users").insert({"id": "ada", "created_at": now})
        db.table("bindings").insert(
            {
                "platform_user_id": "ada",
                "uid": 65534,
                "username": RUNTIME_USER,
                "bound_at": now,
                "bound_by": "test",
            }
        )
        for name, state in projects:
            project = db.table("projects").insert(
                {
                    "name": name,
                    "created_at": now,
                    "created_by": "ada",
                    "workspace": str(tmp_path),
                    "image": "/images/base.sif",
                    "run_as": "bound",
                    "run_as_user": "ada",
                    **settings,
                }
            )
            db.table("members").insert(
                {
                    "project_id": project.last_pk,
                    "platform_user_id": "ada",
                    "role": "owner",
                    "added_at": now,
                    "added_by": "ada",
                }
            )
            db.table("containers").insert(
                {
                    "project_id": project.last_pk,
                    "name": container_name(name),
                    "state": state,
                    "desired": "running" if state != "stopped" else "stopped",
                    "runtime_user": RUNTIME_USER,
                    "runtime_uid": 65534,
                    "image": "/images/base.sif",
                    "overlay_path": str(tmp_path / f"{name}.img"),
                    "state_dir": str(tmp_path),
                    "created_at": now,
                    "updated_at": now,
                }
            )
    slurm = FakeScheduler(clock)
    runtime = FakeRuntime()
    service = ContainerService(
        ledger, Config(), slurm, runtime, clock=clock, default_partition=lambda: "cpu"
    )
    reconciler = Reconciler(service, interval=3600)
    service.poke = lambda: None
    # No overlay copies behind the tests' backs (tests/unit/test_snapshot_policy.py turns them on).
    service.take_due_snapshots = lambda: None
    return World(ledger, clock, slurm, runtime, service, reconciler)


def running(w: World, project: str) -> int:
    """The container runs: its job RUNNING on n1 and its holder reporting the instance."""
    job_id = w.add_job(project, "RUNNING")
    w.runtime.report(job_id, f"running rx-{project}-{job_id}")
    w.reconcile()
    assert w.state(project) == "running"
    return job_id


# -- adopt and orphan ------------------------------------------------------------------------------


def test_transition_starting_adopts_the_job_rxd_lost_between_sbatch_and_the_ledger(
    tmp_path: Path,
) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    job_id = w.slurm.submit("#!/bin/sh\n", _spec(w, "alpha"), _nobody())

    w.reconcile()

    assert w.row("alpha")["job_id"] == job_id
    assert w.slurm.cancelled == []


def test_transition_orphan_job_of_a_stopped_container_is_cancelled(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    job_id = w.slurm.submit("#!/bin/sh\n", _spec(w, "alpha"), _nobody())

    w.reconcile()

    assert w.slurm.cancelled == [job_id]
    assert w.state("alpha") == "stopped" and w.row("alpha")["job_id"] is None


def test_a_job_imitating_a_container_as_another_user_is_neither_adopted_nor_cancelled(
    tmp_path: Path,
) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    from rxslurm.slurm.runas import RunAs

    w.slurm.submit("#!/bin/sh\n", _spec(w, "alpha"), RunAs("mallory", 4242, 4242, (4242,)))

    w.reconcile()

    assert w.row("alpha")["job_id"] is None and w.slurm.cancelled == []


def test_starting_without_any_job_is_submitted_again_after_the_submit_timeout(
    tmp_path: Path,
) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    w.reconcile()
    assert w.slurm.submitted == []  # a request may be submitting right now

    w.clock.advance(w.service.config.slurm.timeout + 6)
    w.reconcile()

    assert len(w.slurm.submitted) == 1
    assert w.row("alpha")["job_id"] == w.slurm.of("rx-alpha")[0]


# -- jobs that left the queue ----------------------------------------------------------------------


def test_transition_running_to_stopped_when_sacct_says_the_vanished_job_completed(
    tmp_path: Path,
) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    job_id = running(w, "alpha")
    w.slurm.end(job_id, "COMPLETED", in_queue=False)

    w.reconcile()

    row = w.row("alpha")
    assert (row["state"], row["reason"], row["desired"]) == (
        "stopped",
        "job ended COMPLETED",
        "stopped",
    )
    assert row["job_id"] is None
    assert w.ledger.db.table("jobs").get(job_id)["state"] == "COMPLETED"


def test_a_job_neither_squeue_nor_sacct_knows_is_gone_only_after_a_grace_period(
    tmp_path: Path,
) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    job_id = running(w, "alpha")
    w.slurm.forget(job_id)

    w.reconcile()
    assert w.state("alpha") == "running"  # slurmctld may not have written it down yet

    w.clock.advance(61)
    w.reconcile()

    assert (w.state("alpha"), w.row("alpha")["reason"]) == ("stopped", "its Slurm job vanished")


@pytest.mark.parametrize("ending", ["TIMEOUT", "PREEMPTED"])
def test_transition_running_to_starting_when_the_time_limit_or_preemption_ends_the_job(
    tmp_path: Path, ending: str
) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    job_id = running(w, "alpha")
    w.slurm.end(job_id, ending)

    w.reconcile()

    row = w.row("alpha")
    assert row["state"] == "starting" and row["desired"] == "running"
    new_jobs = [j for j in w.slurm.of("rx-alpha") if j != job_id]
    assert row["job_id"] == new_jobs[0] and len(new_jobs) == 1
    assert w.lease_holders() == [row["id"]]


def test_transition_running_to_error_when_the_node_fails(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    job_id = running(w, "alpha")
    w.slurm.end(job_id, "NODE_FAIL")

    w.reconcile()

    row = w.row("alpha")
    assert row["state"] == "error"
    assert row["last_error"] == f"Slurm job {job_id} ended NODE_FAIL on n1"
    assert w.lease_holders() == []  # an error rests: no lease
    assert w.slurm.submitted == []  # no new job: a failure is not re-woken


def test_transition_running_to_stopped_when_cancelled_outside_rx_slurm(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    job_id = running(w, "alpha")
    w.slurm.end(job_id, "CANCELLED")

    w.reconcile()

    assert (w.state("alpha"), w.row("alpha")["reason"]) == (
        "stopped",
        "cancelled outside rx-slurm",
    )


# -- Slurm not answering ---------------------------------------------------------------------------


def test_slurm_not_answering_changes_nothing_and_views_say_as_last_seen(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    job_id = running(w, "alpha")
    w.slurm.forget(job_id)
    w.slurm.answering = False
    w.clock.advance(3600)

    report = w.reconciler.reconcile_once()

    assert not report.ok
    assert w.state("alpha") == "running" and w.row("alpha")["job_id"] == job_id
    view = w.service.status(OWNER, "alpha")
    assert view.state_unknown and view.reason == "Slurm is not answering; state as last seen"
    assert view.to_dict()["state_unknown"] is True


# -- pending, idle, sessions -----------------------------------------------------------------------


def test_transition_starting_to_waiting_says_why_slurm_holds_the_job(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    job_id = w.add_job("alpha")
    w.slurm.pend(job_id, "Resources")

    w.reconcile()

    assert (w.state("alpha"), w.row("alpha")["reason"]) == (
        "waiting_for_resources",
        "waiting for free resources on the partition (Slurm: Resources)",
    )


def test_transition_running_to_stopping_after_the_idle_timeout(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"), idle_timeout_min=5)
    job_id = running(w, "alpha")

    w.clock.advance(4 * 60)
    w.reconcile()
    assert w.state("alpha") == "running"

    w.clock.advance(61)
    w.reconcile()

    assert (w.state("alpha"), w.row("alpha")["reason"]) == ("stopping", "idle for 5 min")
    assert w.slurm.cancelled == [job_id]


def test_an_open_session_keeps_an_idle_container_awake(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"), idle_timeout_min=5)
    running(w, "alpha")
    w.reconciler.sessions.opened(w.row("alpha")["id"])

    w.clock.advance(3600)
    w.reconcile()

    assert w.state("alpha") == "running" and w.slurm.cancelled == []


def test_an_open_agent_session_keeps_an_idle_container_awake(tmp_path: Path) -> None:
    # A command run through the container's exec agent is a session rxd never sees: the holder
    # reports the agent's open sessions.
    w = world(tmp_path, ("alpha", "starting"), idle_timeout_min=5)
    job_id = running(w, "alpha")
    w.clock.advance(3600)
    w.runtime.agent_reports[job_id] = AgentSessions(
        open=1, changed_at=int(w.clock().timestamp()) - 3000
    )

    w.reconcile()

    assert w.state("alpha") == "running" and w.slurm.cancelled == []


def test_an_agent_session_that_ended_lately_counts_as_activity(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"), idle_timeout_min=5)
    job_id = running(w, "alpha")
    w.clock.advance(10 * 60)
    ended = int(w.clock().timestamp()) - 60
    w.runtime.agent_reports[job_id] = AgentSessions(open=0, changed_at=ended)

    w.reconcile()
    assert w.state("alpha") == "running"

    # Five minutes after the agent's last session ended, it is idle.
    w.clock.advance(4 * 60 + 1)
    w.reconcile()
    assert (w.state("alpha"), w.row("alpha")["reason"]) == ("stopping", "idle for 5 min")
    assert w.slurm.cancelled == [job_id]


def test_an_agent_report_older_than_rxds_record_changes_nothing(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"), idle_timeout_min=5)
    job_id = running(w, "alpha")
    w.runtime.agent_reports[job_id] = AgentSessions(open=0, changed_at=0)
    w.clock.advance(5 * 60 + 1)

    w.reconcile()

    assert w.state("alpha") == "stopping"


# -- the quota queue -------------------------------------------------------------------------------


def test_the_quota_queue_starts_waiting_containers_first_come_first_served(
    tmp_path: Path,
) -> None:
    w = world(
        tmp_path,
        ("first", "stopped"),
        ("second", "stopped"),
        ("third", "stopped"),
        gpus=1,
        partition="gpu",
    )
    with w.ledger.transaction() as db:
        quotas.set_quota(
            db, {"partition": "gpu", "scope": "deployment", "subject": "", "max_gpus": 1}, "op"
        )
    started = w.service.wake(OWNER, "first")
    assert started.state == "starting"
    for name in ("second", "third"):
        w.clock.advance(1)
        assert w.service.wake(OWNER, name).over_quota
    first_job = w.row("first")["job_id"]

    w.reconcile()
    assert w.state("second") == w.state("third") == "waiting_for_resources"

    w.service.stop(OWNER, "first")
    w.reconcile()

    assert w.state("second") == "starting" and w.row("second")["job_id"] is not None
    assert w.state("third") == "waiting_for_resources" and w.row("third")["job_id"] is None
    assert w.slurm.cancelled == [first_job]
    assert w.lease_holders() == [w.row("second")["id"]]


def test_a_submit_racing_the_reconciler_makes_one_job(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    submit = w.slurm.submit

    def submit_then_reconcile(*args: Any) -> int:
        # The reconciler passes between sbatch and the ledger write, and adopts the job.
        job_id = submit(*args)
        w.reconcile()
        assert w.row("alpha")["job_id"] == job_id
        return job_id

    w.slurm.submit = submit_then_reconcile  # type: ignore[method-assign]
    w.service.wake(OWNER, "alpha")
    w.reconcile()

    assert len(w.slurm.submitted) == 1 and w.slurm.cancelled == []
    assert w.row("alpha")["job_id"] == w.slurm.of("rx-alpha")[0]


# -- waiting is notified ---------------------------------------------------------------------------


def test_wait_running_returns_when_the_reconciler_sees_the_holder_ready(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    w.service.wake(OWNER, "alpha")
    cid = w.row("alpha")["id"]
    seen: list[dict[str, Any]] = []
    # The waiter pokes the reconciler once it has read the state and is about to wait.
    waiting = threading.Event()
    w.service.poke = waiting.set
    waiter = threading.Thread(target=lambda: seen.append(w.service.wait_running(cid, 60) or {}))
    waiter.start()
    assert waiting.wait(60)

    job_id = w.row("alpha")["job_id"]
    w.slurm.run(job_id)
    w.runtime.report(job_id, f"running rx-alpha-{job_id}")
    w.reconcile()
    waiter.join(60)

    assert not waiter.is_alive()
    assert seen[0]["state"] == "running" and seen[0]["instance"] == f"rx-alpha-{job_id}"


def test_wait_running_gives_up_at_its_timeout(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    w.service.wake(OWNER, "alpha")

    assert w.service.wait_running(w.row("alpha")["id"], 0.05) is None


# -- helpers ---------------------------------------------------------------------------------------


def _spec(w: World, project: str) -> Any:
    from rxslurm.slurm.adapter import JobSpec

    return JobSpec(
        name=container_name(project), comment=job_comment(w.service.config, w.row(project)["id"])
    )


def _nobody() -> Any:
    from rxslurm.slurm.runas import RunAs

    return RunAs.for_user(RUNTIME_USER)
