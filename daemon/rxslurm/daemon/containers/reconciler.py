"""The reconciler: keeps the ledger true to what Slurm says, on a timer and when poked.

One pass makes ONE squeue call for every rx job (a delimited text format: at 300 queued jobs it
took 10 ms against 114 ms for `squeue --json`), and one sacct call for the jobs that left the
queue. "Slurm did not answer" is never "the job is gone": an unanswered pass changes nothing.

Every user on the cluster can submit jobs with any name and comment, so a job is a container's
only when it proves it (see ``job_claims``): the comment names the container, the job runs as
the container's runtime user under its name, and, to be adopted, it was submitted after the
container asked for one. Anyone else's job that imitates ours is left alone: never adopted,
never cancelled. A record Slurm prints that cannot be read is skipped and logged; its job is
unknown for that pass, never gone.
"""

from __future__ import annotations

import logging
import pwd
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from rxslurm.daemon.containers import job_claims
from rxslurm.daemon.containers.job_claims import adoptable
from rxslurm.daemon.containers.service import ContainerService, container_id_from_comment
from rxslurm.daemon.containers.service_reports import parse_service_report, service_reason
from rxslurm.daemon.containers.states import ACTIVE, InvalidTransition, State, change_state
from rxslurm.daemon.containers.views import Queued
from rxslurm.daemon.ledger.timestamps import from_timestamp, to_timestamp
from rxslurm.daemon.metrics import Histogram
from rxslurm.daemon.runtime.holder_status import HolderStatus, Kind
from rxslurm.daemon.settings import Settings, effective
from rxslurm.protocol.job_comment import JOB_PREFIX
from rxslurm.slurm import job_states
from rxslurm.slurm.errors import SlurmError, SlurmUnavailable
from rxslurm.slurm.jobs import JobInfo, Listing, Skipped

log = logging.getLogger("rxslurm.reconciler")
ACTOR: dict[str, Any] = {"actor": "rxd", "origin": "reconciler"}

# While a container is starting or stopping, passes come this often: readiness is a file the
# holder writes, and a researcher waits on it.
BUSY_INTERVAL_S = 0.5
# For this long after its job was submitted, a pending container counts as starting.
FRESH_JOB_S = 30
# How often a running container's logs are tidied (its instance logs kept under their cap).
TIDY_EVERY_S = 600
# Skipped records and imitations are logged at most once per this many seconds per kind.
LOG_EVERY_S = 60.0
# How many skipped records one log line shows.
LOG_SAMPLE = 3
# A wake's latency (job submitted -> instance running), in seconds: from a free node's couple of
# seconds to an hour's wait on a full partition.
WAKE_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600)


@dataclass
class PassReport:
    ok: bool
    containers: int = 0
    jobs_seen: int = 0
    changes: int = 0
    seconds: float = 0.0


class Throttle:
    """At most one log line per key every ``period_s``; counts what it held back meanwhile."""

    def __init__(self, period_s: float = LOG_EVERY_S, clock: Callable[[], float] = time.monotonic):
        self.period_s = period_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str, count: int = 1) -> int | None:
        """None: keep quiet now. Else how many were held back since the last line (plus these)."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.period_s:
            self._held[key] = self._held.get(key, 0) + count
            return None
        self._last[key] = now
        return self._held.pop(key, 0) + count


@dataclass
class Sessions:
    """Open exec/shell sessions per container: they keep it awake."""

    _open: dict[int, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def opened(self, container_id: int) -> None:
        with self._lock:
            self._open[container_id] = self._open.get(container_id, 0) + 1

    def closed(self, container_id: int) -> None:
        with self._lock:
            left = self._open.get(container_id, 0) - 1
            if left > 0:
                self._open[container_id] = left
            else:
                self._open.pop(container_id, None)

    def count(self, container_id: int) -> int:
        with self._lock:
            return self._open.get(container_id, 0)

    def total(self) -> int:
        with self._lock:
            return sum(self._open.values())


class Reconciler:
    def __init__(
        self,
        service: ContainerService,
        interval: float,
        sessions: Sessions | None = None,
    ) -> None:
        self.service = service
        self.interval = interval
        self.sessions = sessions or Sessions()
        # Every age and timeout below is measured on the service's clock (a fake one in tests).
        self.clock = service.clock
        self.busy = False
        self._transient = False
        self.last_report: PassReport | None = None
        # For /metrics: passes run (answered by Slurm or not), and how long the last one took.
        self.passes = 0
        self.last_pass_seconds: float | None = None
        self.wake_latency = Histogram(WAKE_BUCKETS)
        self._throttle = Throttle()
        # Passes of others that Slurm's answers drive too (image builds); each returns its
        # changes, and one that fails is logged, never the end of this pass.
        self.extra_passes: list[Callable[[], int]] = []
        # When each running container's logs were last tidied (its instance logs capped).
        self._tidied: dict[int, datetime] = {}
        self._poked = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def slurm_reachable(self) -> bool:
        """Whether Slurm answered the last pass; the service's views say so too."""
        return self.service.slurm_reachable

    @slurm_reachable.setter
    def slurm_reachable(self, value: bool) -> None:
        self.service.slurm_reachable = value

    # -- running ---------------------------------------------------------------------------

    def poke(self) -> None:
        """Run a pass soon (a submission, a hook, a stop)."""
        self._poked.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._poked.set()
        if self._thread:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._poked.wait(min(self.interval, BUSY_INTERVAL_S) if self.busy else self.interval)
            self._poked.clear()
            if self._stop.is_set():
                break
            started = time.monotonic()
            try:
                self.last_report = self.reconcile_once()
            except Exception:
                log.exception("reconcile pass failed")
            self.passes += 1
            self.last_pass_seconds = time.monotonic() - started
            # A poke during a pass is served by a new pass, but not in a tight loop.
            time.sleep(0.05)

    # -- one pass --------------------------------------------------------------------------

    def reconcile_once(self) -> PassReport:
        started = time.monotonic()
        db = self.service.ledger.db
        rows = list(
            db.table("containers").rows_where("state IN (?, ?, ?, ?)", [s.value for s in ACTIVE])
        )
        try:
            queue = self.service.scheduler.queue(name_prefix=JOB_PREFIX)
        except SlurmUnavailable as exc:
            if self.slurm_reachable:
                log.warning("Slurm did not answer; states are unknown", extra={"error": str(exc)})
            self.slurm_reachable = False
            return PassReport(ok=False, containers=len(rows))
        self.slurm_reachable = True
        self._log_skipped("squeue", queue)
        # A record that could not be read: its job is unknown this pass, not gone. One without
        # even an id could be any job, so nothing is concluded from a job's absence then.
        unknown = queue.unknown_ids()
        blind = any(s.job_id is None for s in queue.skipped)
        claims = job_claims.claims(self.service.config, db, queue.values())
        if claims.strangers:
            self._log_sample("jobs that are no container's", claims.strangers, "strangers")
        ours = claims.jobs
        changes = 0
        self._transient = False
        gone: dict[int, dict[str, Any]] = {}
        for row in rows:
            job = ours.get(row["job_id"]) if row["job_id"] else None
            if row["job_id"] is None:
                changes += self._without_job(row, claims.by_container.get(row["id"], []))
            elif row["job_id"] in unknown:
                self._transient = True
            elif job is None or job.is_finished:
                if job is not None:
                    changes += self._ended(row, job)
                elif not blind:
                    gone[row["job_id"]] = row
            else:
                changes += self._active(row, job)
        if gone:
            changes += self._resolve_gone(gone)
        changes += self._orphans(ours)
        changes += self._idle()
        changes += self._serve_queue()
        for extra in self.extra_passes:
            try:
                changes += extra()
            except Exception:
                log.exception("a reconcile pass of %s failed", getattr(extra, "__qualname__", ""))
        self._snapshots()
        self._tidy_running(rows)
        # A job submitted moments ago usually starts within seconds: watch it closely too.
        recent = to_timestamp(self.clock() - timedelta(seconds=FRESH_JOB_S))
        self.busy = self._transient or bool(
            db.table("containers").count_where(
                "state IN (?, ?) OR (state = ? AND job_id IS NOT NULL AND updated_at > ?)",
                [State.STARTING.value, State.STOPPING.value, State.WAITING.value, recent],
            )
        )
        report = PassReport(
            ok=True,
            containers=len(rows),
            jobs_seen=len(ours),
            changes=changes,
            seconds=time.monotonic() - started,
        )
        if changes:
            log.debug("reconciled", extra={"changes": changes, "jobs": len(ours)})
        return report

    def _snapshots(self) -> None:
        """Sleeping containers whose overlay a job changed since its newest snapshot (or whose
        snapshot was asked for): copied on the snapshot thread, never on this pass's."""
        try:
            self.service.take_due_snapshots()
        except Exception:
            log.exception("cannot look for due overlay snapshots")

    # -- edges -----------------------------------------------------------------------------

    def _move(self, row: dict[str, Any], to: State, reason: str | None, **fields: Any) -> int:
        if row["state"] == to.value and row["reason"] == reason and not fields:
            return 0
        try:
            with self.service.ledger.transaction() as db:
                current = db.table("containers").get(row["id"])
                # Only act on what this pass saw: a concurrent stop or wake wins.
                if current["generation"] != row["generation"]:
                    return 0
                if current["state"] == to.value and current["reason"] == reason and not fields:
                    return 0
                change_state(
                    db,
                    row["id"],
                    to,
                    allowed_from=[State(row["state"])],
                    reason=reason,
                    fields=fields,
                    **ACTOR,
                )
        except InvalidTransition:
            return 0
        return 1

    def _without_job(self, row: dict[str, Any], candidates: list[JobInfo]) -> int:
        """STARTING with no job recorded: adopt the job it asked for, or submit again."""
        mine = adoptable(row, candidates)
        if mine:
            # STARTING -> (adopted) : rxd stopped between sbatch and recording the job id.
            job = min(mine, key=lambda j: j.job_id)
            with self.service.ledger.transaction() as db:
                current = db.table("containers").get(row["id"])
                if current["job_id"] is not None or current["generation"] != row["generation"]:
                    return 0
                db.table("containers").update(row["id"], {"job_id": job.job_id})
                db.table("jobs").insert(
                    {
                        "job_id": job.job_id,
                        "container_id": row["id"],
                        "state": job.state,
                        "submitted_at": to_timestamp(self.clock()),
                    },
                    replace=True,
                )
                log.info("adopted job", extra={"job_id": job.job_id, "container": row["name"]})
            return 1
        if row["state"] != State.STARTING:
            return 0
        age = (self.clock() - from_timestamp(row["updated_at"])).total_seconds()
        if age < self.service.config.slurm.timeout + 5:
            return 0  # a request is probably submitting right now
        # STARTING -> STARTING (resubmit): the submitter never recorded a job and none exists.
        settings = Settings.from_row(
            self.service.ledger.db.table("projects").get(row["project_id"])
        )
        try:
            self.service.submit(row["id"], settings, **ACTOR)
        except Exception as exc:  # the submit recorded the outcome in the ledger already
            log.warning("resubmit failed", extra={"container": row["name"], "error": str(exc)})
        return 1

    def _active(self, row: dict[str, Any], job: JobInfo) -> int:
        state = row["state"]
        if state == State.STOPPING:
            # STOPPING -> STOPPING: cancel again if an earlier cancel went unanswered.
            age = (self.clock() - from_timestamp(row["updated_at"])).total_seconds()
            if age > self.service.config.containers.stop_grace_s + 15:
                self.service.cancel_job(job.job_id)
            return 0
        if job.state == job_states.PENDING:
            # * -> WAITING: Slurm holds it back; say why.
            return self._move(row, State.WAITING, job_states.pending_reason(job.reason))
        if job.state == job_states.CONFIGURING:
            # WAITING -> STARTING: allocated, nodes being readied (the prolog hook pokes here).
            return self._move(row, State.STARTING, "starting the job", node=job.nodes)
        if job.state != job_states.RUNNING:
            # COMPLETING (the epilog hook pokes here), SUSPENDED, ...: look again soon.
            self._transient = True
            return 0
        read = self._holder_status(row, job.job_id)
        if read.kind == Kind.STUCK:
            # * -> * (same state): the user's own file hangs the read (e.g. their FUSE mount):
            # unknown; their containers wait, with the reason, nobody else's.
            self._transient = True
            return self._move(row, State(state), "its status file does not answer")
        if read.kind == Kind.REFUSED:
            # * -> ERROR: what is at the status file is not the holder's report (a FIFO, a
            # symlink, another owner's file, too big): the container cannot be watched; end it.
            moved = self._move(
                row,
                State.ERROR,
                "its status file is unsafe to read",
                last_error=f"rx-slurm refused the holder's status file: {read.text}",
                node=job.nodes,
            )
            self.service.cancel_job(job.job_id)
            return moved
        status = read.line
        if status.startswith("running"):
            # STARTING/WAITING -> RUNNING: the holder says the instance is up.
            if state == State.RUNNING:
                return self._service_report(row, status)
            # "running <instance>[ service <port>]": the instance is the second word.
            words = status.split()
            instance = words[1] if len(words) > 1 else None
            moved = self._move(
                row,
                State.RUNNING,
                None,
                node=job.nodes,
                instance=instance,
                started_at=to_timestamp(self.clock()),
                last_activity_at=to_timestamp(self.clock()),
                service_restarts=0,
            )
            # The wake's latency: its job was submitted as the wake went STARTING.
            submitted = self._submitted_at(job.job_id) if moved else None
            if submitted is not None:
                self.wake_latency.observe((self.clock() - submitted).total_seconds())
            return moved
        if status.startswith("error"):
            # STARTING -> ERROR: the instance failed to start; end the job.
            message = status.partition(":")[2].strip() or status
            moved = self._move(
                row,
                State.ERROR,
                "the container failed to start",
                last_error=message,
                node=job.nodes,
            )
            self.service.cancel_job(job.job_id)
            return moved
        # WAITING -> STARTING: the job runs, the instance is not ready yet.
        return self._move(row, State.STARTING, "starting the container instance", node=job.nodes)

    def _service_report(self, row: dict[str, Any], status: str) -> int:
        """RUNNING -> RUNNING with the reason: what the holder says of the project's service
        (service_reports.py): restarted, waiting to be restarted, or ended for good; the
        container stays up for exec. Each change is a state event, so history shows it."""
        report = parse_service_report(status)
        if report is None:
            return 0
        reason = service_reason(report)
        if reason is None or (
            row["reason"] == reason and row["service_restarts"] == report.restarts
        ):
            return 0
        last_error = reason if report.kind == "exited" else row["last_error"]
        return self._move(
            row,
            State.RUNNING,
            reason,
            last_error=last_error,
            service_restarts=report.restarts,
        )

    def _holder_status(self, row: dict[str, Any], job_id: int) -> HolderStatus:
        """The holder's report, read as root from the runtime user's folder: see holder_status."""
        if not row["state_dir"]:
            return HolderStatus(Kind.MISSING)
        uid = row["runtime_uid"]
        if uid is None:
            try:
                uid = pwd.getpwnam(row["runtime_user"]).pw_uid
            except (KeyError, TypeError):
                return HolderStatus(Kind.REFUSED, f"unknown runtime user {row['runtime_user']}")
        return self.service.runtime.holder_status(row["state_dir"], job_id, uid)

    def _agent_active(self, row: dict[str, Any], last: datetime, timeout_min: int) -> bool:
        """Whether the container's exec agent has a session open, or had one within the idle
        timeout after rxd's own last record: its sessions are sessions like rxd's own. Read only
        for a container that looks idle; a missing or bad report is no activity."""
        if not row["state_dir"] or not row["job_id"]:
            return False
        uid = self._runtime_uid(row)
        if uid is None:
            return False
        report = self.service.runtime.agent_sessions(row["state_dir"], row["job_id"], uid)
        if report is None:
            return False
        if report.open > 0:
            return True
        changed = datetime.fromtimestamp(report.changed_at, UTC)
        return changed > last and (self.clock() - changed).total_seconds() < timeout_min * 60

    def _runtime_uid(self, row: dict[str, Any]) -> int | None:
        if row["runtime_uid"] is not None:
            return int(row["runtime_uid"])
        try:
            return pwd.getpwnam(row["runtime_user"]).pw_uid
        except (KeyError, TypeError):
            return None

    def _resolve_gone(self, gone: dict[int, dict[str, Any]]) -> int:
        try:
            history = self.service.scheduler.history(gone)
        except SlurmError as exc:
            log.warning(
                "sacct did not answer; leaving states as they are", extra={"error": str(exc)}
            )
            return 0
        self._log_skipped("sacct", history)
        unknown = history.unknown_ids()
        changes = 0
        for job_id, row in gone.items():
            if job_id in unknown:
                continue  # its record could not be read: unknown, not gone
            job = history.get(job_id)
            if job is not None and job.user != row["runtime_user"]:
                # slurmctld's ids were reset and reused: this record is another job's.
                job = None
            if job is not None and job.is_finished:
                changes += self._ended(row, job)
            elif job is None:
                submitted = self._submitted_at(job_id)
                # Neither squeue nor sacct knows it: after a grace period, it is gone.
                if submitted is None or (self.clock() - submitted).total_seconds() > 60:
                    changes += self._finish(
                        row, State.STOPPED, "its Slurm job vanished", job_id, job_states.UNKNOWN
                    )
        return changes

    def _submitted_at(self, job_id: int) -> Any:
        row = (
            self.service.ledger.db.table("jobs").get(job_id)
            if self.service.ledger.db.table("jobs").count_where("job_id = ?", [job_id])
            else None
        )
        return from_timestamp(row["submitted_at"]) if row and row["submitted_at"] else None

    def _ended(self, row: dict[str, Any], job: JobInfo) -> int:
        base = job.base_state or job.state
        # A file that is not the holder's report says nothing: the job's end decides.
        status = self._holder_status(row, job.job_id).line
        where = f" on {job.nodes}" if job.nodes else ""
        if status.startswith("error") and row["state"] != State.STOPPING:
            # * -> ERROR: the holder reported why it gave up.
            message = status.partition(":")[2].strip()
            return self._finish(
                row, State.ERROR, "the container failed", job.job_id, base, last_error=message
            )
        if base in job_states.FAILED_STATES:
            # RUNNING/STARTING -> ERROR: the job failed under it.
            message = f"Slurm job {job.job_id} ended {base}{where}"
            return self._finish(row, State.ERROR, message, job.job_id, base, last_error=message)
        if base in job_states.REWAKE_STATES and row["desired"] == "running":
            # RUNNING -> STOPPED -> STARTING: time limit or preemption while wanted.
            moved = self._finish(
                row, State.STOPPED, f"job ended {base}; starting a new one", job.job_id, base
            )
            if moved:
                self._rewake(row["id"])
            return moved
        if row["state"] == State.STOPPING:
            # STOPPING -> STOPPED: our own stop finished.
            return self._finish(row, State.STOPPED, row["reason"] or "stopped", job.job_id, base)
        # RUNNING -> STOPPED: cancelled or ended outside rx-slurm.
        reason = (
            "cancelled outside rx-slurm" if base == job_states.CANCELLED else f"job ended {base}"
        )
        return self._finish(row, State.STOPPED, reason, job.job_id, base, desired="stopped")

    def _finish(
        self,
        row: dict[str, Any],
        to: State,
        reason: str,
        job_id: int,
        job_state: str,
        **fields: Any,
    ) -> int:
        now = to_timestamp(self.clock())
        moved = self._move(
            row, to, reason, job_id=None, node=None, instance=None, started_at=None, **fields
        )
        if moved:
            with self.service.ledger.transaction() as db:
                if db.table("jobs").count_where("job_id = ?", [job_id]):
                    db.table("jobs").update(
                        job_id, {"state": job_state, "ended_at": now, "last_seen_at": now}
                    )
            self.service.clean_job_logs(row["id"])
        return moved

    def _rewake(self, container_id: int) -> None:
        row = self.service.ledger.db.table("containers").get(container_id)
        if row["state"] != State.STOPPED:
            return
        try:
            project = self.service.ledger.db.table("projects").get(row["project_id"])
            default_partition = self.service.default_partition()
            request = self.service.quota_request(project, row["runtime_user"], default_partition)
            with self.service.ledger.transaction() as db:
                current = db.table("containers").get(container_id)
                if current["state"] != State.STOPPED:
                    return
                # STOPPED -> STARTING, or -> WAITING (queued) when its quota was taken
                # meanwhile: queued even under policy "reject", nobody waits to be told.
                outcome = self.service.start_or_queue(
                    db, current, request, who=ACTOR, default_partition=default_partition
                )
            if isinstance(outcome, Queued):
                return
            self.service.submit(container_id, Settings.from_row(project), **ACTOR)
        except Exception as exc:
            log.warning("re-wake failed", extra={"container": row["name"], "error": str(exc)})

    def _orphans(self, ours: dict[int, JobInfo]) -> int:
        """Containers' jobs (see job_claims) that no container expects: cancel them. A job that
        only imitates one (another user's, another name) is not ours to cancel."""
        db = self.service.ledger.db
        expected = {
            r["job_id"]
            for r in db.table("containers").rows_where("job_id IS NOT NULL", select="job_id")
        }
        changes = 0
        for job in ours.values():
            if job.is_finished or job.job_id in expected or job.state == job_states.COMPLETING:
                continue
            cid = container_id_from_comment(self.service.config, job.comment)
            rows = list(db.table("containers").rows_where("id = ?", [cid]))
            if rows and adoptable(rows[0], [job]):
                continue  # adopted by _without_job in the next pass
            log.warning(
                "cancelling orphan job", extra={"job_id": job.job_id, "comment": job.comment}
            )
            self.service.cancel_job(job.job_id)
            changes += 1
        return changes

    def _log_skipped(self, command: str, listing: Listing) -> None:
        if listing.skipped:
            self._log_sample(f"unreadable {command} records skipped", listing.skipped, command)

    def _log_sample(self, what: str, items: list[Skipped], key: str) -> None:
        """One warning per kind and minute however many records: any user can make many."""
        count = self._throttle.allow(key, len(items))
        if count is None:
            return
        sample = [
            {"job_id": s.job_id, "why": s.reason, "record": s.record} for s in items[:LOG_SAMPLE]
        ]
        log.warning(what, extra={"count": count, "sample": sample})

    def _serve_queue(self) -> int:
        """WAITING (queued) -> STARTING: in queue order, as far as quotas allow.

        First come, first served per quota: once a waiting container does not fit a quota,
        later ones under the same quota wait too, so a large request is not starved; those
        under other quotas (another user's, another partition) go on.
        """
        db = self.service.ledger.db
        try:
            default_partition = self.service.default_partition()
            waiting = self.service.queued(db, default_partition)
        except Exception as exc:  # Slurm's default partition unknown now: next pass
            log.warning("cannot size the waiting containers", extra={"error": str(exc)})
            return 0
        held: dict[int, list[str]] = {}
        started = 0
        for row, request in waiting:
            project = db.table("projects").get(row["project_id"])
            with self.service.ledger.transaction() as tx:
                current = tx.table("containers").get(row["id"])
                if current["generation"] != row["generation"]:
                    continue
                # WAITING (queued) -> STARTING, or still WAITING behind what `held` keeps.
                outcome = self.service.start_or_queue(tx, current, request, who=ACTOR, held=held)
            if isinstance(outcome, Queued):
                continue
            try:
                self.service.submit(row["id"], Settings.from_row(project), **ACTOR)
            except Exception as exc:  # submit recorded the outcome (error or stopped)
                log.warning(
                    "submit from the queue failed",
                    extra={"container": row["name"], "error": str(exc)},
                )
            started += 1
        return started

    def _tidy_running(self, rows: list[dict[str, Any]]) -> None:
        """Every TIDY_EVERY_S per running container: its logs cleaned as on a job's end, which
        also keeps Apptainer's instance log of a job that runs for days under its cap."""
        now = self.clock()
        running = {r["id"] for r in rows if r["state"] == State.RUNNING}
        self._tidied = {cid: at for cid, at in self._tidied.items() if cid in running}
        for cid in sorted(running):
            last = self._tidied.get(cid)
            if last is None:
                # Its job's start already cleaned: the first tidy is one period later.
                self._tidied[cid] = now
            elif (now - last).total_seconds() >= TIDY_EVERY_S:
                self._tidied[cid] = now
                self.service.clean_job_logs(cid)

    def _idle(self) -> int:
        """RUNNING -> STOPPING: no session and no activity for the idle timeout."""
        db = self.service.ledger.db
        changes = 0
        for row in db.table("containers").rows_where("state = ?", [State.RUNNING.value]):
            if self.sessions.count(row["id"]):
                continue
            project = db.table("projects").get(row["project_id"])
            timeout_min = effective(
                Settings.from_row(project), self.service.config.defaults
            ).idle_timeout_min
            if timeout_min <= 0:
                continue
            last = row["last_activity_at"] or row["started_at"]
            if (
                last is None
                or (self.clock() - from_timestamp(last)).total_seconds() < timeout_min * 60
            ):
                continue
            if self._agent_active(row, from_timestamp(last), timeout_min):
                continue
            reason = f"idle for {timeout_min} min"
            if self._move(row, State.STOPPING, reason, desired="stopped") and row["job_id"]:
                self.service.cancel_job(row["job_id"])
                changes += 1
        return changes
