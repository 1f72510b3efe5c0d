"""One-shot commands (`rxctl run-once`): ``OneShotService``.

A one-shot is a Slurm job of its own, submitted through the ``Scheduler`` port as the project's
runtime identity, that runs one command with ``apptainer exec`` in the project's image (the newest
overlay snapshot read-only, the workspace, the binds: what a member's batch step gets, see
batch_plan.py) and ends with the command's exit code. No instance is started, so none outlives it.
While it is queued or runs it holds a lease against partition quotas, as a build does; the lease
goes when it ends. Its output is the job's output file in the container's folder (``job-N.out``),
read as the runtime user (runtime/job_output.py) and removed with the container's other job logs.

The command reaches the job only as data: a tuple of words rendered as quoted words of a bash
array in oneshot.sh, never a shell line. The reconciler's pass (``reconcile``) follows each
one-shot from what Slurm says, by the rules builds follow too (job_follow.py); one that cannot
be followed this pass is logged and left for the next. Every change is audited with the project
as target.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from datetime import timedelta
from enum import StrEnum
from typing import Any

from rxslurm.daemon.config import Config
from rxslurm.daemon.containers.batch_plan import batch_plan
from rxslurm.daemon.containers.job_follow import Follower, Seen, follow_records
from rxslurm.daemon.containers.job_logs import clean_job_logs_soon
from rxslurm.daemon.containers.service import ContainerService, _gres
from rxslurm.daemon.errors import BadRequest, Conflict, NotFound, Unavailable
from rxslurm.daemon.identity.actors import Actor, record_actor_event
from rxslurm.daemon.ledger.audit import record_event
from rxslurm.daemon.ledger.store import Ledger, LedgerDatabase, LedgerError
from rxslurm.daemon.ledger.timestamps import to_timestamp
from rxslurm.daemon.ports import OneShotRequest, Scheduler
from rxslurm.daemon.projects.roles import Action
from rxslurm.daemon.projects.service import authorize
from rxslurm.daemon.quotas import leases as quotas
from rxslurm.daemon.runtime.job_output import MAX_BYTES, JobOutput, OutputError, read_output
from rxslurm.daemon.settings import Settings, effective
from rxslurm.protocol.states import State
from rxslurm.slurm.adapter import JobSpec
from rxslurm.slurm.errors import SlurmError, SlurmUnavailable
from rxslurm.slurm.jobs import JobInfo, Listing
from rxslurm.slurm.runas import RunAs, RunAsError

log = logging.getLogger("rxslurm.one_shots")

# Never the containers' prefix (rx-), so the container reconciler never takes one for a holder.
JOB_PREFIX = "rxonce-"
# Cancelled one-shots whose job Slurm still lists are cancelled again for this long.
RECANCEL_S = 3600
# Bounds of a command: it travels in the batch script, which sbatch and slurmctld keep.
MAX_WORDS = 1024
MAX_COMMAND_BYTES = 64 * 1024
MAX_GPUS = 64
MAX_CPUS = 1024
MAX_MEM_MB = 16 * 1024 * 1024
MAX_TIME_MIN = 7 * 24 * 60
_PARTITION = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# Slurm's states of a job that ended but not by its command's own exit.
_NOT_THE_COMMANDS = {
    "TIMEOUT": "the command ran out of its time limit ({limit}; --time)",
    "OUT_OF_MEMORY": "the command ran out of memory ({mem} MB; --mem)",
    "NODE_FAIL": "the node running the command failed",
    "BOOT_FAIL": "the node for the command failed to boot",
    "DEADLINE": "the job reached its deadline",
    "PREEMPTED": "the job was preempted",
}


class OneShotState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    EXITED = "exited"  # the command ran and exited: exit_code is its code
    FAILED = "failed"  # rx-slurm, Apptainer or Slurm failed it: reason says why
    CANCELLED = "cancelled"


ACTIVE = (OneShotState.QUEUED, OneShotState.RUNNING)


def job_name(project: str, one_shot_id: int) -> str:
    return f"{JOB_PREFIX}{project}-{int(one_shot_id)}"


def job_comment(tag: str, one_shot_id: int) -> str:
    return f"{tag}:once={int(one_shot_id)}"


def check_command(value: Any) -> tuple[str, ...]:
    """The command's words, or a 400 saying what is wrong with them."""
    if not isinstance(value, list) or not value:
        raise BadRequest("command must be a non-empty list of words")
    if len(value) > MAX_WORDS:
        raise BadRequest(f"command has more than {MAX_WORDS} words")
    total = 0
    for word in value:
        if not isinstance(word, str):
            raise BadRequest("every word of the command must be a text")
        for char, what in (("\0", "a NUL byte"), ("\n", "a newline"), ("\r", "a carriage return")):
            if char in word:
                raise BadRequest(
                    f"a word of the command holds {what}; put a longer script in a file under "
                    "/workspace and run that"
                )
        total += len(word.encode("utf-8", "surrogateescape")) + 1
    if total > MAX_COMMAND_BYTES:
        raise BadRequest(f"the command is longer than {MAX_COMMAND_BYTES // 1024} KiB")
    if not value[0]:
        raise BadRequest("the command's first word (the program) is empty")
    return tuple(value)


def _whole(body: dict[str, Any], key: str, default: int | None, low: int, most: int) -> int | None:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= most:
        raise BadRequest(f"{key} must be a whole number from {low} to {most}")
    return value


class OneShotService:
    def __init__(self, containers: ContainerService) -> None:
        self.containers = containers
        self.ledger = containers.ledger
        # As root would do it on a cluster; the unit tests, run as nobody, replace it.
        self.read_output: Callable[..., JobOutput] = read_output
        # The container's old job logs removed on the cleaners' threads; tests replace it.
        self.clean_logs: Callable[[Ledger, int, int], object] = clean_job_logs_soon
        # What Slurm says of the partition and its nodes (api/context.py gives its cache).
        self.validate_resources: Callable[[Settings], None] = lambda settings: None

    @property
    def scheduler(self) -> Scheduler:
        return self.containers.scheduler

    def _now(self) -> str:
        return to_timestamp(self.containers.clock())

    # -- the caller's part -----------------------------------------------------------------

    def run(self, actor: Actor, project: str, body: dict[str, Any]) -> dict[str, Any]:
        """Submit one command: refused (nothing changes) unless the caller may exec in the
        project, the project has an image and a container folder, and the job fits the quotas."""
        config = self.config
        command = check_command(body.get("command"))
        with self.ledger.read() as db:
            row, _ = authorize(db, actor, project, Action.EXEC)
            plan = batch_plan(db, config, row)
            container = self._container(db, row)
        own = Settings.from_row(row)
        eff = effective(own, config.defaults)
        # The GPU type and driver even when the container itself asks for no GPU (effective()
        # drops them then): a one-shot's GPUs are its own, as a batch step's are.
        gpu_type = own.gpu_type or config.defaults.gpu_type
        gpu_driver = own.gpu_driver or config.defaults.gpu_driver
        partition = body.get("partition") or eff.partition or self.containers.default_partition()
        if not partition:
            raise BadRequest("no partition to run in: give --partition")
        if not isinstance(partition, str) or not _PARTITION.fullmatch(partition):
            raise BadRequest("partition may hold only letters, digits, '.', '_' and '-'")
        gpus = _whole(body, "gpus", 0, 0, MAX_GPUS) or 0
        cpus = _whole(body, "cpus", eff.cpus or 1, 1, MAX_CPUS) or 1
        mem_mb = _whole(body, "mem_mb", eff.mem_mb or None, 1, MAX_MEM_MB)
        time_limit = _whole(body, "time_limit_min", eff.time_limit_min or None, 1, MAX_TIME_MIN)
        asked = Settings(
            partition=partition,
            cpus=cpus,
            mem_mb=mem_mb or 0,
            gpus=gpus,
            gpu_type=gpu_type if gpus else "",
        )
        self.validate_resources(asked)
        runtime_user = container["runtime_user"]
        try:
            owner = RunAs.for_user(runtime_user)
        except RunAsError as exc:
            raise Conflict(f"cannot run as {runtime_user}: {exc}") from None
        try:
            script = self.containers.runtime.one_shot_script(
                OneShotRequest(
                    image=plan.image,
                    snapshot=plan.snapshot.path if plan.snapshot else "",
                    workspace=plan.workspace,
                    command=command,
                    state_dir=container["state_dir"],
                    user=owner,
                    binds=plan.binds,
                    gpus=gpus,
                    gpu_driver=gpu_driver,
                    own_home_and_tmp=row["run_as"] == "service",
                )
            )
        except ValueError as exc:
            raise Conflict(f"cannot write the command's job script: {exc}") from None
        request = quotas.Request(
            partition=partition,
            project=project,
            linux_user=runtime_user,
            gpus=gpus,
            cpus=cpus,
            mem_mb=mem_mb or 0,
        )
        now = self._now()
        with self.ledger.transaction() as db:
            row, _ = authorize(db, actor, project, Action.EXEC)
            why = quotas.bottleneck(db, request, asker="this command")
            if why is not None:
                raise Conflict(f"the command does not fit: {why}", code="quota")
            one_shot_id = (
                db.table("one_shot_jobs")
                .insert(
                    {
                        "project_id": row["id"],
                        "container_id": container["id"],
                        "state": OneShotState.QUEUED.value,
                        "argv": json.dumps(list(command)),
                        "runtime_user": runtime_user,
                        "state_dir": container["state_dir"],
                        "partition": partition,
                        "gpus": gpus,
                        "cpus": cpus,
                        "mem_mb": mem_mb or 0,
                        "time_limit_min": time_limit,
                        "created_at": now,
                        "created_by": actor.name,
                        "updated_at": now,
                    }
                )
                .last_pk
            )
            if not isinstance(one_shot_id, int):  # an INTEGER PRIMARY KEY always gets one
                raise LedgerError("the new one-shot command got no id")
            quotas.acquire_for_one_shot(db, one_shot_id, request)
            record_actor_event(
                db,
                actor,
                "run-once.submitted",
                "project",
                project,
                {
                    "one_shot": one_shot_id,
                    "argv": list(command),
                    "runtime_user": runtime_user,
                    "partition": partition,
                    "gpus": gpus,
                    "cpus": cpus,
                    "mem_mb": mem_mb,
                    "time_limit_min": time_limit,
                },
            )

        def spec() -> JobSpec:
            return JobSpec(
                name=job_name(project, one_shot_id),
                comment=job_comment(config.slurm.tag, one_shot_id),
                partition=partition,
                cpus=cpus,
                mem_mb=mem_mb,
                gres=_gres(asked),
                time_limit_min=time_limit,
                account=eff.account or None,
                qos=eff.qos or None,
                constraint=eff.constraint or None,
                reservation=eff.reservation or None,
                workdir=container["state_dir"],
                output=f"{container['state_dir']}/job-%j.out",
                # A command runs once: a node failure ends it rather than running it again.
                requeue=False,
            )

        self._submit(one_shot_id, script, spec, owner)
        self.containers.poke()
        return self._view(project, self._row(one_shot_id))

    @property
    def config(self) -> Config:
        return self.containers.config

    def _container(self, db: LedgerDatabase, project: dict[str, Any]) -> dict[str, Any]:
        rows = list(db.table("containers").rows_where("project_id = ?", [project["id"]]))
        if rows and rows[0]["state"] == State.DISABLED:
            raise Conflict(
                f"the container of {project['name']} is disabled; an owner runs "
                f"`rxctl enable --project {project['name']}`"
            )
        if not rows or not rows[0]["state_dir"] or not rows[0]["runtime_user"]:
            raise Conflict(
                f"project {project['name']} has no container folder yet; an owner runs "
                f"`rxctl enable --project {project['name']}`"
            )
        return dict(rows[0])

    def _submit(
        self, one_shot_id: int, script: str, spec: Callable[[], JobSpec], owner: RunAs
    ) -> None:
        """After the commit: sbatch as the runtime user. A failure ends the one-shot `failed`
        with the reason (its lease goes with it)."""
        try:
            job_id = self.scheduler.submit(script, spec(), owner)
        except (SlurmError, OSError, ValueError) as exc:
            self._end(one_shot_id, OneShotState.FAILED, f"the job was not submitted: {exc}")
            raise Unavailable(f"the command's job was not submitted: {exc}") from None
        with self.ledger.transaction() as db:
            db.table("one_shot_jobs").update(
                one_shot_id, {"job_id": job_id, "updated_at": self._now()}
            )

    def _row(self, one_shot_id: int) -> dict[str, Any]:
        return dict(self.ledger.db.table("one_shot_jobs").get(one_shot_id))

    def _find(
        self, db: LedgerDatabase, project: dict[str, Any], one_shot_id: int
    ) -> dict[str, Any]:
        rows = list(
            db.table("one_shot_jobs").rows_where(
                "id = ? AND project_id = ?", [one_shot_id, project["id"]]
            )
        )
        if not rows:
            raise NotFound(f"no one-shot command {one_shot_id} in project {project['name']}")
        return dict(rows[0])

    def _view(self, project: str, row: dict[str, Any]) -> dict[str, Any]:
        return {
            "project": project,
            "id": row["id"],
            "state": row["state"],
            "argv": json.loads(row["argv"]),
            "job_id": row["job_id"],
            "node": row["node"],
            "exit_code": row["exit_code"],
            "reason": row["reason"],
            "partition": row["partition"],
            "gpus": row["gpus"],
            "cpus": row["cpus"],
            "mem_mb": row["mem_mb"] or None,
            "time_limit_min": row["time_limit_min"],
            "created_by": row["created_by"],
            "created_at": row["created_at"],
            "started_at": row["started_at"],
            "ended_at": row["ended_at"],
        }

    def status(self, actor: Actor, project: str, one_shot_id: int) -> dict[str, Any]:
        with self.ledger.read() as db:
            row, _ = authorize(db, actor, project, Action.EXEC)
            found = self._find(db, row, one_shot_id)
        return self._view(project, found)

    def output(
        self, actor: Actor, project: str, one_shot_id: int, offset: int | None = None
    ) -> dict[str, Any]:
        """The one-shot's state and its job's output from ``offset`` (read as the runtime user,
        as `rxctl logs` reads a holder's): the client follows it until the state has ended and
        it has read to the end."""
        with self.ledger.read() as db:
            row, _ = authorize(db, actor, project, Action.EXEC)
            found = self._find(db, row, one_shot_id)
        view = self._view(project, found)
        empty = {"text": "", "start": offset or 0, "end": offset or 0, "size": 0, "missing": True}
        if found["job_id"] is None:
            return {**view, **empty}
        try:
            piece = self.read_output(
                found["state_dir"],
                found["job_id"],
                RunAs.for_user(found["runtime_user"]),
                offset=offset,
                max_bytes=MAX_BYTES,
            )
        except RunAsError as exc:
            raise Conflict(f"cannot read the command's output: {exc}") from None
        except OutputError as exc:
            raise Unavailable(f"cannot read the command's output: {exc}") from None
        if found["state"] not in ACTIVE and piece.end >= piece.size and not found["output_read"]:
            self._output_read(found)
        return {
            **view,
            "text": piece.text,
            "start": piece.start,
            "end": piece.end,
            "size": piece.size,
            "missing": piece.missing,
        }

    def _output_read(self, found: dict[str, Any]) -> None:
        """The caller has all the output of an ended one-shot: its file goes with the
        container's old job logs, now (containers/job_logs.py)."""
        with self.ledger.transaction() as db:
            db.table("one_shot_jobs").update(found["id"], {"output_read": 1})
        self.clean_logs(self.ledger, found["container_id"], self.config.containers.job_logs_kept)

    def cancel(self, actor: Actor, project: str, one_shot_id: int) -> dict[str, Any]:
        """Cancel a queued or running one-shot (scancel through the adapter); its lease goes."""
        with self.ledger.transaction() as db:
            row, _ = authorize(db, actor, project, Action.EXEC)
            found = self._find(db, row, one_shot_id)
            if found["state"] not in ACTIVE:
                raise Conflict(f"one-shot command {one_shot_id} is {found['state']}, not running")
            self._end_in(db, one_shot_id, OneShotState.CANCELLED, f"cancelled by {actor.name}")
            record_actor_event(
                db, actor, "run-once.cancelled", "project", project, {"one_shot": one_shot_id}
            )
        if found["job_id"] is not None:
            self._cancel_job(found["job_id"])
        return self._view(project, self._row(one_shot_id))

    def _cancel_job(self, job_id: int) -> None:
        try:
            self.scheduler.cancel(job_id)
        except SlurmUnavailable:
            log.warning(
                "one-shot cancel not answered; the pass cancels again", extra={"job": job_id}
            )

    # -- the reconciler's part -------------------------------------------------------------

    def reconcile(self) -> int:
        """Follow every queued or running one-shot (and cancel again cancelled ones Slurm still
        lists as active); one squeue for all. The number of changes."""
        db = self.ledger.db
        since = to_timestamp(self.containers.clock() - timedelta(seconds=RECANCEL_S))
        rows = [
            dict(r)
            for r in db.table("one_shot_jobs").rows_where(
                "state IN (?, ?) OR (state = ? AND job_id IS NOT NULL AND ended_at > ?)",
                [*(s.value for s in ACTIVE), OneShotState.CANCELLED.value, since],
            )
        ]
        follower = Follower(
            self.scheduler, self.containers.clock, OneShotState.QUEUED.value, self._is_ours
        )
        return follow_records(
            rows,
            self.scheduler,
            JOB_PREFIX,
            follower,
            self._follow,
            "a one-shot command",
            "one_shot",
        )

    def _is_ours(self, row: dict[str, Any], job: JobInfo) -> bool:
        """A job proves to be this one-shot's by its comment and its user (any user can name a
        job anything)."""
        return job.comment == job_comment(self.config.slurm.tag, row["id"]) and (
            job.user == row["runtime_user"]
        )

    def _follow(self, row: dict[str, Any], follower: Follower, queue: Listing, blind: bool) -> int:
        one_shot_id = row["id"]
        if row["state"] == OneShotState.CANCELLED:
            if follower.still_active(row, queue):
                self._cancel_job(row["job_id"])
                return 1
            return 0
        look = follower.look(row, queue, blind)
        if look.seen is Seen.ADOPT and look.job is not None:
            with self.ledger.transaction() as db:
                db.table("one_shot_jobs").update(
                    one_shot_id, {"job_id": look.job.job_id, "updated_at": self._now()}
                )
        elif look.seen is Seen.STARTED and look.job is not None:
            self._started(one_shot_id, look.job.nodes)
        elif look.seen is Seen.NEVER_SUBMITTED:
            self._end(one_shot_id, OneShotState.FAILED, "the job was never submitted")
        elif look.seen is Seen.GONE:
            self._end(one_shot_id, OneShotState.FAILED, "the job left no record in Slurm")
        elif look.seen is Seen.ENDED and look.job is not None:
            return self._finished(row, look.job)
        else:
            return 0
        return 1

    def _finished(self, row: dict[str, Any], job: JobInfo) -> int:
        one_shot_id = row["id"]
        if job.base_state == "CANCELLED" or job.state == "CANCELLED":
            self._end(one_shot_id, OneShotState.CANCELLED, "the job was cancelled outside rx-slurm")
            return 1
        words = _NOT_THE_COMMANDS.get(job.state)
        if words is not None:
            limit = f"{row['time_limit_min']} min" if row["time_limit_min"] else "the partition's"
            reason = words.format(limit=limit, mem=row["mem_mb"] or "the partition's")
            self._end(one_shot_id, OneShotState.FAILED, reason)
            return 1
        if job.exit_code is None:
            self._end(one_shot_id, OneShotState.FAILED, f"the job ended {job.state}, no exit code")
            return 1
        self._end(one_shot_id, OneShotState.EXITED, None, exit_code=job.exit_code, node=job.nodes)
        return 1

    def _started(self, one_shot_id: int, node: str) -> None:
        with self.ledger.transaction() as db:
            now = self._now()
            changed = db.execute(
                "UPDATE one_shot_jobs SET state = ?, started_at = ?, node = ?, updated_at = ? "
                "WHERE id = ? AND state = ?",
                [OneShotState.RUNNING.value, now, node or None, now, one_shot_id,
                 OneShotState.QUEUED.value],
            ).rowcount  # fmt: skip
            if changed:
                self._event(db, one_shot_id, "run-once.started", {"node": node})

    def _end(
        self, one_shot_id: int, state: OneShotState, reason: str | None, **values: Any
    ) -> None:
        with self.ledger.transaction() as db:
            if self._end_in(db, one_shot_id, state, reason, **values):
                detail = {"state": state.value, "reason": reason, **values}
                self._event(db, one_shot_id, f"run-once.{state.value}", detail)

    def _end_in(
        self,
        db: LedgerDatabase,
        one_shot_id: int,
        state: OneShotState,
        reason: str | None,
        **values: Any,
    ) -> bool:
        """-> an end state, only from queued or running; its lease goes with it."""
        now = self._now()
        fields = {"state": state.value, "reason": reason, "ended_at": now, "updated_at": now}
        sets = ", ".join(f"{k} = ?" for k in [*fields, *values])
        changed = db.execute(
            f"UPDATE one_shot_jobs SET {sets} WHERE id = ? AND state IN (?, ?)",  # noqa: S608
            [*fields.values(), *values.values(), one_shot_id, *(s.value for s in ACTIVE)],
        ).rowcount
        quotas.release_for_one_shot(db, one_shot_id)
        return bool(changed)

    def _event(
        self, db: LedgerDatabase, one_shot_id: int, action: str, detail: dict[str, Any]
    ) -> None:
        """An event of rxd's own (the reconciler's) about a one-shot, its project the target."""
        found = db.execute(
            "SELECT p.name FROM one_shot_jobs o JOIN projects p ON p.id = o.project_id "
            "WHERE o.id = ?",
            [one_shot_id],
        ).fetchone()
        record_event(
            db,
            actor="rxd",
            actor_uid=None,
            origin="reconciler",
            action=action,
            target_type="project",
            target_id=str(found[0]) if found else "",
            detail={"one_shot": one_shot_id, **detail},
        )
