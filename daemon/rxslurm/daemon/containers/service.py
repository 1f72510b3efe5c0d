"""A project's persistent container: ``ContainerService`` (enable, wake, stop, disable, retry,
status, the exec target, the quota commands), which routes, the exec server and the reconciler
call; Slurm, the runtime and the clock only through its ports (ports.py).

The container is a runtime instance inside a Slurm job (the "holder") that runs as the
project's runtime identity. Its overlay (the persistent writable layer) and the project workspace
outlive every job. Slurm calls happen outside ledger transactions; each state change is a
conditional update (see states.change_state), so racing requests make exactly one job and a
crash between submitting and recording leaves a job the reconciler adopts by its comment.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlite_utils.db import NotFoundError

from rxslurm.daemon import failpoints
from rxslurm.daemon.config import Config
from rxslurm.daemon.containers import start_image
from rxslurm.daemon.containers.batch_plan import BatchPlan, batch_plan
from rxslurm.daemon.containers.countdowns import countdowns
from rxslurm.daemon.containers.job_logs import clean_job_logs_soon
from rxslurm.daemon.containers.open_work import OpenWork
from rxslurm.daemon.containers.pulls import ImagePulls, carry_on
from rxslurm.daemon.containers.snapshot_policy import (
    SnapshotTaker,
    forget_snapshots,
    request_snapshot,
    snapshot_status,
)
from rxslurm.daemon.containers.state_changes import STATE_CHANGES, ring_after_commit
from rxslurm.daemon.containers.states import ACTIVE, InvalidTransition, State, change_state
from rxslurm.daemon.containers.stop_request import request_stop
from rxslurm.daemon.containers.usage import LiveUsage
from rxslurm.daemon.containers.views import (
    SERVICE_EXITED,
    SERVICE_FAILED,
    ContainerView,
    Queued,
    Started,
)
from rxslurm.daemon.errors import BadRequest, Conflict, Forbidden, Unavailable
from rxslurm.daemon.folders import make_folder
from rxslurm.daemon.identity.actors import Actor, record_actor_event
from rxslurm.daemon.images import cache as image_cache
from rxslurm.daemon.images import pull as image_pull
from rxslurm.daemon.ledger.records import from_json, to_json
from rxslurm.daemon.ledger.store import Ledger, LedgerDatabase
from rxslurm.daemon.ledger.timestamps import from_timestamp, to_timestamp, utcnow
from rxslurm.daemon.ports import Clock, ContainerRuntime, HolderRequest, Scheduler
from rxslurm.daemon.projects.environment import (
    container_variables,
    project_variables,
    secret_store,
)
from rxslurm.daemon.projects.labels import labels_of
from rxslurm.daemon.projects.roles import Action, Role
from rxslurm.daemon.projects.service import authorize, require_runtime_identity, runtime_identity
from rxslurm.daemon.projects.volumes import project_binds
from rxslurm.daemon.quarantine import quarantine
from rxslurm.daemon.quotas import leases as quotas
from rxslurm.daemon.runtime.apptainer import ApptainerError, ApptainerRuntime
from rxslurm.daemon.settings import (
    Settings,
    differs_from_snapshot,
    effective,
    service_restarts,
    service_words,
)
from rxslurm.protocol.job_comment import format_comment, parse_comment
from rxslurm.protocol.job_comment import job_name as container_name
from rxslurm.protocol.settings import JOB_FLAGS
from rxslurm.slurm.adapter import JobSpec
from rxslurm.slurm.errors import SlurmError, SlurmRejected, SlurmUnavailable
from rxslurm.slurm.runas import RunAs, run

log = logging.getLogger("rxslurm.containers")

# How many awake containers' usage the admin list samples at once (one sstat each, not cached).
USAGE_SAMPLERS = 4


def job_comment(config: Config, container_id: int) -> str:
    return format_comment(config.slurm.tag, container_id)


def container_id_from_comment(config: Config, comment: str | None) -> int | None:
    """The container a job's comment names, if this deployment's tag marks it. Anyone can
    write any comment: this is a claim, which the reconciler checks against the container."""
    return parse_comment(config.slurm.tag, comment)


# -- helpers -----------------------------------------------------------------------------------


# A container with no job: what a job leaves in its row goes.
_NO_JOB = {"job_id": None, "node": None, "instance": None, "started_at": None}


def _container_of(db: LedgerDatabase, project_id: int) -> dict[str, Any] | None:
    rows = list(db.table("containers").rows_where("project_id = ?", [project_id]))
    return rows[0] if rows else None


def _actor_kw(actor: Actor) -> dict[str, Any]:
    return {"actor": actor.name, "actor_uid": actor.uid, "origin": actor.origin}


def state_dir_for(config: Config, name: str) -> Path:
    return config.containers.state_root / name


def _prepare_state_dir(config: Config, name: str, owner: RunAs, prepared_for: int | None) -> Path:
    """The container's folder: made by root inside the root-owned state root, then handed over.

    A folder already there is kept only if the ledger says it was prepared for this very identity
    (`prepared_for`, the container's runtime uid) and it still belongs to it. Anything else (a
    deleted project's, or the former run-as user's with their overlay) goes to quarantine and a
    fresh one is made: a squatter cannot block the name, and no identity gets another's files.
    """
    root = config.containers.state_root
    make_folder(root)
    info = root.lstat()
    if info.st_uid != 0 or info.st_mode & 0o022:
        raise Conflict(
            f"containers.state_root {root} must be owned by root and not writable by others"
        )
    path = root / name
    try:
        current = path.lstat()
    except FileNotFoundError:
        current = None
    if current is not None:
        if stat.S_ISDIR(current.st_mode) and current.st_uid == owner.uid == prepared_for:
            return path
        moved = quarantine(root, name)
        log.warning("container folder moved to quarantine", extra={"path": str(moved)})
    os.mkdir(path, 0o700)
    os.chown(path, owner.uid, owner.gid, follow_symlinks=False)
    return path


def _gres(settings: Settings) -> str | None:
    if settings.gpus <= 0:
        return None
    return (
        f"gpu:{settings.gpu_type}:{settings.gpus}" if settings.gpu_type else f"gpu:{settings.gpus}"
    )


def _delete_overlay(container: dict[str, Any]) -> None:
    overlay = container["overlay_path"]
    if not overlay or not Path(overlay).exists():
        return
    # The overlay is the runtime user's file in their folder: remove it as them.
    who = RunAs.for_user(container["runtime_user"])
    result = run(["rm", "-f", "--", overlay], as_user=who, timeout=60)
    if result.returncode != 0 or Path(overlay).exists():
        raise OSError(result.stderr.strip() or f"{overlay} still exists")


@dataclass(frozen=True)
class HolderJob:
    """Everything sbatch gets for a container's holder, built (and so validated) in one place."""

    script: str
    spec: JobSpec
    runas: RunAs
    snapshot: dict[str, Any]


def _project_for(
    db: LedgerDatabase, actor: Actor, project: str, check: Action | None
) -> tuple[dict[str, Any], Role | None]:
    """The project row and the actor's role if the actor may `check` in it; `check` None: an
    admin acting on any."""
    if check is None:
        if not actor.admin:
            raise Forbidden("this needs an rx-slurm admin")
        return authorize(db, actor, project, Action.VIEW)
    return authorize(db, actor, project, check)


def _fresh_project(db: LedgerDatabase, authorized: dict[str, Any]) -> dict[str, Any]:
    """The authorized project's row as it is now (its settings may have changed since)."""
    try:
        return dict(db.table("projects").get(authorized["id"]))
    except NotFoundError:
        raise Conflict(f"project {authorized['name']} was deleted meanwhile") from None


@dataclass(frozen=True)
class ExecTarget:
    """Where a command for a running container goes: a step in its job, as the job's user."""

    container_id: int
    job_id: int
    node: str
    instance: str
    state_dir: str
    runas: RunAs
    # The project's variables and secrets (projects/environment.py): never printed.
    variables: Mapping[str, str] = field(default_factory=dict, repr=False)
    has_secrets: bool = False
    # The port its service listens on, as the job started (0: none; `rxctl port-forward`).
    service_port: int = 0


@dataclass(frozen=True)
class Access:
    """A project an actor was authorized for, once, for one action: what a request of several
    steps (an exec that wakes the container and waits for it) carries instead of asking again at
    every step. The project's row is read afresh at each step; only the role check is not redone."""

    actor: Actor
    project: dict[str, Any]
    role: Role | None


class ContainerService:
    """The container lifecycle: every command on a container, from the routes, the exec server
    and the reconciler, goes through here; Slurm, the runtime and the clock through its ports.
    One per daemon."""

    def __init__(
        self,
        ledger: Ledger,
        config: Config,
        scheduler: Scheduler,
        runtime: ContainerRuntime | None = None,
        clock: Clock = utcnow,
        poke: Callable[[], None] = lambda: None,
        default_partition: Callable[[], str] = lambda: "",
        mirror_quotas: Callable[[], list[dict[str, Any]]] = list,
    ) -> None:
        self.ledger = ledger
        self.config = config
        self.scheduler = scheduler
        # The container runtime on the nodes; Apptainer as [apptainer] configures it by default.
        self.runtime: ContainerRuntime = runtime or ApptainerRuntime(config.apptainer)
        self.clock = clock
        # Called after a change the reconciler should look at soon.
        self.poke = poke
        # Slurm's default partition (asked of Slurm, cached): where a container without one runs.
        self.default_partition = default_partition
        # Brings Slurm's QOSes in line with the quotas marked for mirroring; what it did.
        self.mirror_quotas = mirror_quotas
        # Image pulls run in their own threads, as the pull account (see containers/pulls.py).
        self.pulls = ImagePulls(self)
        # Whether Slurm answered the reconciler's last pass; views say "as last seen" if not.
        self.slurm_reachable = True
        self.changes = STATE_CHANGES
        # Live CPU, memory and GPUs of awake containers' jobs, cached briefly.
        self.usage = LiveUsage(scheduler)
        # The sessions and detached commands open in a container (its id), read in the caller's
        # ledger transaction; the detached commands' keeper (containers/sessions.py) sets it.
        self.open_work: Callable[[LedgerDatabase, int], OpenWork] = lambda db, cid: OpenWork()
        # Called with a container's id when one of its jobs is submitted or ends: its logs
        # beyond the kept ones go, as the runtime user, on a thread of their own.
        self.clean_job_logs: Callable[[int], object] = lambda container_id: clean_job_logs_soon(
            ledger, container_id, config.containers.job_logs_kept
        )
        # Overlay snapshots for batch steps (containers/snapshot_policy.py); the reconciler's
        # pass asks for the due ones, which are copied on a thread of their own.
        self.snapshots = SnapshotTaker(ledger, config, clock)
        self.take_due_snapshots: Callable[[], object] = self.snapshots.take_due_soon

    def wait_for(
        self, container_id: int, done: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any] | None:
        """The container's row once ``done(row)``, woken by its state changes (never a timed
        poll); None when ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        with self.changes.watch(container_id) as changed:
            while True:
                row = dict(self.ledger.db.table("containers").get(container_id))
                if done(row):
                    return row
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.poke()
                changed.wait(left)

    def wait_running(self, container_id: int, timeout: float) -> dict[str, Any] | None:
        """The container's row once it runs or rests (stopped, in error, disabled: it will not
        run without a new wake); None when ``timeout`` seconds pass first."""
        return self.wait_for(
            container_id,
            lambda row: row["state"] == State.RUNNING or row["state"] not in ACTIVE,
            timeout,
        )

    def _prepare_storage(
        self, name: str, owner: RunAs, prepared_for: int | None
    ) -> tuple[Path, Path]:
        """The state folder and the overlay in it, for `owner`."""
        state_dir = _prepare_state_dir(self.config, name, owner, prepared_for)
        overlay = state_dir / "overlay.img"
        if not overlay.exists():
            self.runtime.create_overlay(overlay, self.config.containers.overlay_size_mb, owner)
        return state_dir, overlay

    def status(self, actor: Actor, project: str) -> ContainerView:
        """The container as the actor may see it; the state as last seen when Slurm did not
        answer the reconciler's last pass. An awake one's view carries its job's usage now
        (best effort: "unavailable" when Slurm does not say)."""
        view = self._view(*self._authorize(actor, project, Action.VIEW))
        if view.state == State.RUNNING and view.job_id:
            # Slurm not answering the reconciler: sstat would only add its deadline to the wait.
            usage = (
                self.usage.of(view.job_id)
                if self.slurm_reachable
                else {"unavailable": "Slurm did not answer rxd's last look"}
            )
            view = replace(view, usage=usage, countdowns=self._countdowns(view))
        return view

    def _countdowns(self, view: ContainerView) -> dict[str, Any] | None:
        """Open work and the time left until idle sleep and the job's time limit (best effort:
        None when the ledger no longer has the container or its project)."""
        with self.ledger.read() as db:
            # Deleted meanwhile (the status was read a moment ago): nothing to count down.
            container = next(
                iter(db.table("containers").rows_where("id = ?", [view.container_id])), None
            )
            if container is None:
                return None
            project = next(
                iter(db.table("projects").rows_where("id = ?", [container["project_id"]])), None
            )
            if project is None:
                return None
            job = db.execute(
                "SELECT started_at FROM jobs WHERE job_id = ?", [container["job_id"]]
            ).fetchone()
            work = self.open_work(db, container["id"])
        eff = effective(Settings.from_row(project), self.config.defaults)
        started_with = from_json(container["settings"]) or {}
        limit = started_with.get("effective", {}).get("time_limit_min", eff.time_limit_min)
        last = container["last_activity_at"] or container["started_at"]
        job_start = (job[0] if job else None) or container["started_at"]
        return countdowns(
            self.clock(),
            sessions=len(work.sessions),
            detached=len(work.commands),
            idle_timeout_min=eff.idle_timeout_min,
            last_activity=from_timestamp(last) if last else None,
            time_limit_min=limit if isinstance(limit, int) else None,
            job_started=from_timestamp(job_start) if job_start else None,
        ).to_dict()

    def _authorize(
        self, actor: Actor, project: str, check: Action
    ) -> tuple[dict[str, Any], Role | None]:
        """The project's row and the actor's role in it, if the actor may `check` there: the
        one authorization of a command."""
        with self.ledger.read() as db:
            return authorize(db, actor, project, check)

    def _view(self, authorized: dict[str, Any], role: Role | None) -> ContainerView:
        """The container of an authorized project as it is now (after the command)."""
        with self.ledger.read() as db:
            row = _fresh_project(db, authorized)
            project = row["name"]
            container = _container_of(db, row["id"])
            runtime_user = runtime_identity(db, self.config, row)
            snapshot = snapshot_status(db, container, self.clock())
            project_labels = labels_of(db, row["id"])
        saved = Settings.from_row(row)
        eff = effective(saved, self.config.defaults)
        view: dict[str, Any] = {
            "project": project,
            "role": role.value if role else None,
            "state": State.DISABLED.value,
            "reason": None,
            "name": container_name(project),
            "image": eff.image,
            "job_id": None,
            "node": None,
            "gpus": eff.gpus,
            "gres": _gres(eff),
            "uptime_s": None,
            "runtime_user": runtime_user,
            "workspace": row["workspace"],
            "fixed_mounts": tuple(self.config.containers.fixed_mounts),
            "last_error": None,
            "settings_pending": False,
            "desired": None,
            "over_quota": False,
            "partition": eff.partition or None,
            **{flag: getattr(eff, flag) or None for flag in JOB_FLAGS},
            **snapshot,
            "labels": project_labels,
        }
        if container is None:
            return ContainerView(**view)
        started_with = from_json(container["settings"])
        view.update(
            state=container["state"],
            reason=container["reason"],
            job_id=container["job_id"],
            node=container["node"],
            desired=container["desired"],
            last_error=container["last_error"],
            image=container["image"] or eff.image,
            runtime_user=container["runtime_user"] or runtime_user,
        )
        # Waiting with no job: held back by a quota, not by Slurm.
        view["over_quota"] = container["state"] == State.WAITING and container["job_id"] is None
        if container["state"] in (State.RUNNING, State.STARTING, State.WAITING) and started_with:
            view["settings_pending"] = differs_from_snapshot(
                saved, started_with
            ) or start_image.image_moved(
                started_with, start_image.current_file(self.ledger, self.config, row)
            )
            view["gpus"] = started_with.get("effective", {}).get("gpus", eff.gpus)
            view["gres"] = started_with.get("gres")
        port = (started_with or {}).get("effective", {}).get("port", 0)
        service_up = not (container["reason"] or "").startswith((SERVICE_EXITED, SERVICE_FAILED))
        if container["state"] == State.RUNNING and port and container["node"] and service_up:
            view["service"] = f"{container['node']}:{port}"
        if container["state"] == State.RUNNING:
            view["service_restarts"] = container["service_restarts"]
        if container["state"] == State.RUNNING and container["started_at"]:
            view["uptime_s"] = int(
                (self.clock() - from_timestamp(container["started_at"])).total_seconds()
            )
        if not self.slurm_reachable and container["state"] in ACTIVE:
            view["state_unknown"] = True
            view["reason"] = "Slurm is not answering; state as last seen"
        return ContainerView(**view, container_id=container["id"])

    def list_containers(
        self, actor: Actor, with_labels: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """The containers of the actor's projects; only those whose project carries every label
        of ``with_labels``, when given."""
        with self.ledger.read() as db:
            rows = db.execute(
                "SELECT p.name, m.role, c.state, c.reason, c.job_id, c.node, p.id FROM members m "
                "JOIN projects p ON p.id = m.project_id "
                "LEFT JOIN containers c ON c.project_id = p.id "
                "WHERE m.platform_user_id = ? ORDER BY p.name",
                [actor.platform_user],
            ).fetchall()
            found = [(row, labels_of(db, row[6])) for row in rows]
        wanted = (with_labels or {}).items()
        return [
            {
                "project": name,
                "role": role,
                "state": state or State.DISABLED.value,
                "reason": reason,
                "job_id": job_id,
                "node": node,
                "labels": project_labels,
            }
            for (name, role, state, reason, job_id, node, _), project_labels in found
            if wanted <= project_labels.items()
        ]

    def enable(self, actor: Actor, project: str) -> ContainerView:
        """Create the container's record, folder and overlay, then wake it."""
        row, role = self._authorize(actor, project, Action.ENABLE)
        self._enable(actor, row)
        return self._view(row, role)

    def _enable(self, actor: Actor, authorized: dict[str, Any]) -> None:
        config = self.config
        with self.ledger.read() as db:
            row = _fresh_project(db, authorized)
            project = row["name"]
            runtime_user = require_runtime_identity(db, config, row)
            container = _container_of(db, row["id"])
        if container is not None and container["state"] != State.DISABLED:
            raise Conflict(f"the container of {project} is already enabled ({container['state']})")
        eff = effective(Settings.from_row(row), config.defaults)
        if not eff.image:
            raise BadRequest(
                f"project {project} has no image; "
                f"set one with `rxctl project set --project {project} --image`"
            )
        owner = RunAs.for_user(runtime_user)
        name = container_name(project)
        now = to_timestamp(self.clock())
        with self.ledger.transaction() as db:
            current = _container_of(db, row["id"])
            if current is None:
                db.table("containers").insert(
                    {
                        "project_id": row["id"],
                        "name": name,
                        "state": State.DISABLED.value,
                        "desired": "running",
                        "runtime_user": owner.user,
                        "runtime_uid": owner.uid,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                current = _container_of(db, row["id"])
            elif current["state"] != State.DISABLED:
                raise Conflict(
                    f"the container of {project} is already enabled ({current['state']})"
                )
            assert current is not None
            prepared_for = current["runtime_uid"] if current["state_dir"] else None
            db.table("containers").update(
                current["id"],
                {"desired": "running", "runtime_user": owner.user, "runtime_uid": owner.uid},
            )
            container_id = current["id"]
        try:
            state_dir, overlay = self._prepare_storage(name, owner, prepared_for)
            with self.ledger.read() as db:
                image = start_image.local_image(db, config, eff.image)
            if image is None:
                # DISABLED -> PULLING: no lease and no job while the image is pulled.
                with self.ledger.transaction() as db:
                    change_state(
                        db,
                        container_id,
                        State.PULLING,
                        allowed_from=[State.DISABLED],
                        reason=f"waiting to pull {eff.image}",
                        fields={
                            "state_dir": str(state_dir),
                            "overlay_path": str(overlay),
                            "image": eff.image,
                            "last_error": None,
                        },
                        **_actor_kw(actor),
                    )
                self._request_pull(container_id, eff.image, actor)
        except (Conflict, BadRequest, ApptainerError, OSError) as exc:
            message = getattr(exc, "message", None) or str(exc)
            with self.ledger.transaction() as db:
                change_state(
                    db,
                    container_id,
                    State.ERROR,
                    allowed_from=[State.DISABLED, State.PULLING],
                    reason="enable failed",
                    fields={"last_error": message, "desired": "stopped"},
                    **_actor_kw(actor),
                )
            raise
        if image is None:
            self._after_pull(actor, row, container_id, eff.image)
            return
        with self.ledger.transaction() as db:
            change_state(
                db,
                container_id,
                State.STOPPED,
                allowed_from=[State.DISABLED],
                reason="enabled",
                fields={
                    "state_dir": str(state_dir),
                    "overlay_path": str(overlay),
                    "image": image,
                    "last_error": None,
                },
                **_actor_kw(actor),
            )
        self._wake(actor, row)

    def _request_pull(self, container_id: int, uri: str, actor: Actor) -> None:
        try:
            self.pulls.request(container_id, uri, actor.uid, waiter=True)
        except image_pull.PullError as exc:  # the pull account or its settings are unusable
            raise Conflict(f"cannot pull {uri}: {exc.message}") from None
        except image_cache.UnsafeImageDir as exc:
            raise Conflict(f"cannot pull {uri}: {exc}") from None

    def _pull_then_wake(
        self, actor: Actor, row: dict[str, Any], container_id: int, uri: str
    ) -> None:
        try:
            self._request_pull(container_id, uri, actor)
        except Conflict:
            start_image.give_up_pull(
                self.ledger, container_id, f"cannot pull {uri}", _actor_kw(actor)
            )
            raise
        self._after_pull(actor, row, container_id, uri)

    def _after_pull(self, actor: Actor, row: dict[str, Any], container_id: int, uri: str) -> None:
        """A short wait for the pull: a small image answers as before (started, or the pull's
        reason as the error); a longer pull answers "pulling" and the container goes on alone."""
        outcome = self.pulls.wait(container_id, self.config.pulls.enable_wait_s)
        if outcome is None or outcome.cancelled:
            return
        if not carry_on(self, container_id, outcome, queue=False, **_actor_kw(actor)):
            return
        if outcome.image is None:
            raise BadRequest(f"cannot pull {uri}: {outcome.error}")
        if self.ledger.db.table("containers").get(container_id)["desired"] != "running":
            return  # stopped while it pulled
        self._wake(actor, row)

    def disable(self, actor: Actor, project: str, wait_s: float = 120.0) -> ContainerView:
        """Stop, then delete the overlay (the workspace stays). A failed delete rolls back."""
        row, role = self._stop(actor, project, Action.DISABLE, "stopped by user", force=True)
        with self.ledger.read() as db:
            row = _fresh_project(db, row)
            container = _container_of(db, row["id"])
            runtime_user = runtime_identity(db, self.config, row)
        if container is None or container["state"] == State.DISABLED:
            raise Conflict(f"the container of {project} is not enabled")
        container = self.wait_for(container["id"], lambda row: row["state"] not in ACTIVE, wait_s)
        if container is None:
            raise Conflict(
                f"the container of {project} did not stop within {wait_s:.0f}s; try again"
            )
        try:
            if container["runtime_user"] == runtime_user:
                _delete_overlay(container)
                self.snapshots.remove_all(container)
            elif container["state_dir"]:
                # The former run-as user's folder: rxd no longer acts as them; out of reach instead.
                quarantine(self.config.containers.state_root, Path(container["state_dir"]).name)
        except OSError as exc:
            with self.ledger.transaction() as db:
                db.table("containers").update(
                    container["id"], {"last_error": f"disable failed: {exc}"}
                )
            raise Conflict(
                f"cannot delete the overlay, the container stays enabled: {exc}"
            ) from None
        with self.ledger.transaction() as db:
            change_state(
                db,
                container["id"],
                State.DISABLED,
                # A pull under way goes on; its outcome finds the container disabled and is dropped.
                allowed_from=[State.STOPPED, State.ERROR, State.PULLING],
                reason="disabled",
                fields={"desired": "disabled", "job_id": None, "node": None, "instance": None},
                **_actor_kw(actor),
            )
        return self._view(row, role)

    def quota_request(
        self,
        project: dict[str, Any],
        runtime_user: str,
        default_partition: str | None = None,
    ) -> quotas.Request:
        """What the container counts against its quotas (`default_partition`: Slurm's, asked before
        a write transaction so that it does not wait on Slurm)."""
        eff = effective(Settings.from_row(project), self.config.defaults)
        if default_partition is None:
            default_partition = self.default_partition()
        return quotas.Request(
            partition=eff.partition or default_partition,
            project=project["name"],
            linux_user=runtime_user,
            gpus=eff.gpus,
            cpus=eff.cpus or 1,
            mem_mb=eff.mem_mb,
        )

    def queued(
        self, db: LedgerDatabase, default_partition: str
    ) -> list[tuple[dict[str, Any], quotas.Request]]:
        """Containers waiting for quota (no job yet), first come first, with what they ask."""
        rows = db.table("containers").rows_where(
            "state = ? AND job_id IS NULL AND queued_at IS NOT NULL",
            [State.WAITING.value],
            order_by="queued_at, id",
        )
        return [
            (
                row,
                self.quota_request(
                    db.table("projects").get(row["project_id"]),
                    row["runtime_user"],
                    default_partition,
                ),
            )
            for row in rows
        ]

    def admission(
        self,
        db: LedgerDatabase,
        container_id: int,
        request: quotas.Request,
        default_partition: str,
    ) -> str | None:
        """Why a container that wakes must wait (None: it may start now). Besides the quotas, the
        queue: a newcomer does not take what an earlier waiting container is waiting for."""
        held: dict[int, list[str]] = {}
        for row, ahead in self.queued(db, default_partition):
            if row["id"] != container_id and quotas.hold_back(db, held, ahead) is None:
                # It fits and the reconciler starts it next: keep its room.
                quotas.hold_all(db, held, ahead)
        return quotas.hold_back(db, held, request)

    def _check_startable(
        self, actor: Actor, project: str, row: dict[str, Any], container: dict[str, Any]
    ) -> None:
        """Build the holder job before a lease is taken: one that cannot be built never holds
        one."""
        if container["state"] != State.STOPPED or container["state_dir"] is None:
            return  # wake() refuses the other resting states with its own words
        try:
            self.holder_job(container, row, Settings.from_row(row))
        except ValueError as exc:
            # STOPPED -> ERROR, holding nothing: retry after the settings are fixed.
            self._fail_start(
                container["id"], [State.STOPPED], f"cannot build the job: {exc}", **_actor_kw(actor)
            )
            raise BadRequest(f"the container of {project} cannot start: {exc}") from None

    def wake(self, actor: Actor, project: str, check: Action = Action.START) -> ContainerView:
        """Make sure a job holds the container: submit one if it rests and fits its quotas.

        One that does not fit waits (policy "queue": the reconciler starts it when leases free
        up) or is refused (policy "reject"), with the bottleneck in words.
        """
        row, role = self._authorize(actor, project, check)
        self._wake(actor, row)
        return self._view(row, role)

    def _wake(self, actor: Actor, authorized: dict[str, Any]) -> None:
        with self.ledger.read() as db:
            row = _fresh_project(db, authorized)
            project = row["name"]
            runtime_user = require_runtime_identity(db, self.config, row)
            container = _container_of(db, row["id"])
        if container is None or container["state"] == State.DISABLED:
            raise Conflict(
                f"the container of {project} is not enabled; an owner runs `rxctl enable`"
            )
        if container["runtime_user"] != runtime_user:
            container = self._rehome(actor, container, runtime_user)
        if container["state"] == State.STOPPED and container["state_dir"]:
            # The project's image as it is now: a new one is pulled first (the overlay stays).
            container, uri = start_image.follow(
                self.ledger, self.config, row, container, _actor_kw(actor)
            )
            if uri is not None:
                self._pull_then_wake(actor, row, container["id"], uri)
                return
        if container["state"] not in ACTIVE:
            self._check_startable(actor, project, row, container)
        # Asked of Slurm before the write transaction, which must not wait on Slurm.
        default_partition = self.default_partition()
        request = self.quota_request(row, container["runtime_user"], default_partition)
        outcome: Started | Queued | None = None
        with self.ledger.transaction() as db:
            row = _fresh_project(db, row)
            container = _container_of(db, row["id"])
            if container is None:
                raise Conflict(f"the container of {project} is not enabled")
            db.table("containers").update(container["id"], {"desired": "running"})
            # Racing wakes: the first moves STOPPED -> STARTING, the others find it ACTIVE.
            # A container still pulling its image is queued for a job by the pull's end.
            already = container["state"] in ACTIVE or container["state"] == State.PULLING
            if container["state"] == State.ERROR:
                raise Conflict(
                    f"the container of {project} is in error ({container['last_error']}); "
                    "an owner runs `rxctl retry`"
                )
            if container["state"] == State.DISABLED:
                raise Conflict(f"the container of {project} is not enabled")
            if not already:
                outcome = self.start_or_queue(
                    db,
                    container,
                    request,
                    who=_actor_kw(actor),
                    default_partition=default_partition,
                    reject=self.config.quotas.policy == "reject",
                )
        if isinstance(outcome, Started):
            self.submit(
                container["id"], Settings.from_row(row), actor=actor.name, origin=actor.origin
            )
        else:
            self.poke()

    def start_or_queue(
        self,
        db: LedgerDatabase,
        container: dict[str, Any],
        request: quotas.Request,
        *,
        who: dict[str, Any],
        default_partition: str = "",
        held: dict[int, list[str]] | None = None,
        reject: bool = False,
    ) -> Started | Queued:
        """The one place a container takes a lease and goes to STARTING, or is queued for one.

        Inside the caller's transaction, with ``container`` as read in it (STOPPED, or WAITING
        in the quota queue). Whether it fits: the quotas and the queue ahead (``admission``),
        or, for the reconciler serving the queue in order, what ``held`` already keeps. The
        caller submits the job of a Started container once the transaction has committed.
        """
        container_id = container["id"]
        source = State(container["state"])
        if held is None:
            why = self.admission(db, container_id, request, default_partition)
        else:
            why = quotas.hold_back(db, held, request)
        if why:
            if reject:
                raise Conflict(f"over quota: {why}", code="quota")
            if source == State.WAITING:
                # WAITING (queued) -> WAITING: still no room; the bottleneck may have moved.
                if why != container["reason"]:
                    db.table("containers").update(container_id, {"reason": why})
                    ring_after_commit(db, container_id)
            else:
                # STOPPED -> WAITING (queued): no job until a lease frees up.
                change_state(
                    db,
                    container_id,
                    State.WAITING,
                    allowed_from=[State.STOPPED],
                    reason=why,
                    fields={**_NO_JOB, "queued_at": to_timestamp(self.clock())},
                    **who,
                )
            return Queued(container_id, why)
        # STOPPED / WAITING (queued) -> STARTING: the lease and the state in one transaction.
        quotas.acquire(db, container_id, request)
        change_state(
            db,
            container_id,
            State.STARTING,
            allowed_from=[source],
            reason="submitting",
            fields={**_NO_JOB, "queued_at": None},
            **who,
        )
        return Started(container_id)

    def _rehome(self, actor: Actor, container: dict[str, Any], runtime_user: str) -> dict[str, Any]:
        """The project runs as someone else now: a fresh state folder and overlay for them; the
        former identity's go to quarantine (its overlay holds what ran as that person)."""
        container = self.ledger.db.table("containers").get(container["id"])
        if container["runtime_user"] == runtime_user:
            return dict(container)  # a racing start did it a moment ago
        if container["state"] in ACTIVE:
            raise Conflict(
                f"the container still runs as {container['runtime_user']}; it starts as "
                f"{runtime_user} once it has stopped"
            )
        owner = RunAs.for_user(runtime_user)
        state_dir, overlay = self._prepare_storage(container["name"], owner, None)
        with self.ledger.transaction() as db:
            current = db.table("containers").get(container["id"])
            if current["generation"] != container["generation"]:
                raise Conflict("the container changed meanwhile; try again")
            db.table("containers").update(
                container["id"],
                {
                    "runtime_user": owner.user,
                    "runtime_uid": owner.uid,
                    "state_dir": str(state_dir),
                    "overlay_path": str(overlay),
                },
            )
            # The former identity's snapshots went to quarantine with its folder.
            forget_snapshots(db, container["id"], self.clock())
            record_actor_event(
                db,
                actor,
                "container.run-as-changed",
                "container",
                container["name"],
                {"from": container["runtime_user"], "to": owner.user},
            )
            return dict(db.table("containers").get(container["id"]))

    def holder_job(
        self, container: dict[str, Any], project: dict[str, Any], settings: Settings
    ) -> HolderJob:
        """The holder job of a container; ValueError (TemplateError, RunAsError) if it cannot be."""
        config = self.config
        eff = effective(settings, config.defaults)
        state_dir = Path(container["state_dir"])
        runas = RunAs.for_user(container["runtime_user"])
        with self.ledger.read() as db:
            volume_binds = project_binds(db, project)
        script = self.runtime.holder_script(
            HolderRequest(
                instance=container["name"],
                image=container["image"],
                overlay=container["overlay_path"],
                workspace=project["workspace"],
                state_dir=state_dir,
                user=runas,
                binds=(*config.containers.fixed_mounts, *volume_binds),
                gpus=eff.gpus,
                gpu_driver=eff.gpu_driver,
                grace_s=config.containers.stop_grace_s,
                # Service projects all run as one account, so whatever the deployment chose, each
                # gets a home and a /tmp of its own.
                own_home_and_tmp=project["run_as"] == "service",
                # Variables only: the script is a file Slurm keeps; secrets reach exec steps.
                env=tuple(sorted(project_variables(self.ledger.db, project).items())),
                service=tuple(service_words(eff.service)),
                port=eff.port,
                output_cap=config.containers.output_cap_mb << 20,
                restarts=service_restarts(eff.restart) if eff.service else 0,
            )
        )
        spec = JobSpec(
            name=container["name"],
            comment=job_comment(config, container["id"]),
            partition=eff.partition or None,
            cpus=eff.cpus or 1,
            mem_mb=eff.mem_mb or None,
            gres=_gres(eff),
            time_limit_min=eff.time_limit_min or None,
            account=eff.account or None,
            qos=eff.qos or None,
            constraint=eff.constraint or None,
            reservation=eff.reservation or None,
            workdir=str(state_dir),
            output=str(state_dir / "job-%j.out"),
            singleton=True,
            # rxd decides what follows a failed job; a requeued holder could race a living one.
            requeue=False,
        )
        snapshot = {
            **settings.to_dict(),
            "effective": eff.to_dict(),
            "gres": _gres(eff),
            # The file it runs: a refreshed tag changes it with no setting changing.
            "image_file": container["image"],
        }
        return HolderJob(script, spec, runas, snapshot)

    def _fail_start(
        self, container_id: int, allowed_from: list[State], error: str, **who: Any
    ) -> None:
        """-> ERROR with the reason; an ERROR container rests, so its lease (if any) goes with it.

        A container no longer in `allowed_from` was moved meanwhile (stopped: its lease went then).
        """
        try:
            with self.ledger.transaction() as db:
                change_state(
                    db,
                    container_id,
                    State.ERROR,
                    allowed_from=allowed_from,
                    reason="cannot start",
                    fields={"last_error": error},
                    **who,
                )
        except InvalidTransition:
            pass

    def submit(
        self, container_id: int, settings: Settings, *, actor: str, origin: str
    ) -> int | None:
        """Submit the holder job for a container in STARTING with no job; record it.

        It holds a lease by now: whatever goes wrong ends in STOPPED or ERROR, which free it.
        """
        c = self.ledger.db.table("containers").get(container_id)
        project_row = self.ledger.db.table("projects").get(c["project_id"])
        c = start_image.for_submit(self.ledger, self.config, project_row, dict(c))
        try:
            job = self.holder_job(c, project_row, settings)
        except ValueError as exc:
            # STARTING -> ERROR: e.g. a value saved before it was validated as it is now.
            self._fail_start(
                container_id,
                [State.STARTING],
                f"cannot build the job: {exc}",
                actor=actor,
                origin=origin,
            )
            raise BadRequest(
                f"the container of {project_row['name']} cannot start: {exc}"
            ) from None
        snapshot = job.snapshot
        try:
            job_id = self.scheduler.submit(job.script, job.spec, job.runas)
        except SlurmError as exc:
            unavailable = isinstance(exc, SlurmUnavailable)
            with self.ledger.transaction() as db:
                change_state(
                    db,
                    container_id,
                    State.STOPPED if unavailable else State.ERROR,
                    allowed_from=[State.STARTING],
                    reason="Slurm did not answer"
                    if unavailable
                    else f"Slurm refused the job: {exc.one_line}",
                    fields={
                        "last_error": None if unavailable else exc.one_line,
                        "settings": to_json(snapshot),
                    },
                    actor=actor,
                    origin=origin,
                )
            if unavailable:
                raise Unavailable(f"Slurm did not answer ({exc}); nothing was started") from None
            if isinstance(exc, SlurmRejected):
                raise Conflict(f"Slurm refused the job: {exc.one_line}") from None
            raise
        except Exception as exc:
            # STARTING -> ERROR: an unforeseen failure must not keep the lease; logged in full.
            log.exception("submit failed", extra={"container": c["name"]})
            self._fail_start(
                container_id, [State.STARTING], f"submit failed: {exc}", actor=actor, origin=origin
            )
            raise
        failpoints.hit("after-submit")
        now = to_timestamp(self.clock())
        with self.ledger.transaction() as db:
            current = db.table("containers").get(container_id)
            fresh = current["state"] == State.STARTING and current["job_id"] is None
            # The reconciler may have seen this very job in the queue first and adopted it.
            adopted = current["job_id"] == job_id
            if fresh or adopted:
                db.table("containers").update(
                    container_id, {"job_id": job_id, "settings": to_json(snapshot)}
                )
                if fresh:
                    db.table("containers").update(container_id, {"updated_at": now})
                db.table("jobs").insert(
                    {
                        "job_id": job_id,
                        "container_id": container_id,
                        "state": "PENDING",
                        "submitted_at": now,
                    },
                    replace=True,
                )
            else:
                # Stopped meanwhile: this job is not wanted.
                log.info(
                    "cancelling unwanted job", extra={"job_id": job_id, "container": c["name"]}
                )
        if not (fresh or adopted):
            self.scheduler.cancel(job_id)
            return None
        log.info("submitted", extra={"job_id": job_id, "container": c["name"]})
        self.poke()
        self.clean_job_logs(container_id)
        return job_id

    def stop(
        self, actor: Actor, project: str, check: Action = Action.STOP, force: bool = False
    ) -> ContainerView:
        """Stop the container; the overlay is kept. Without ``force``, refused while sessions or
        detached commands are open in it: they would end with it."""
        return self._view(*self._stop(actor, project, check, "stopped by user", force))

    def admin_stop(self, actor: Actor, project: str) -> dict[str, Any]:
        """An admin stops a misbehaving container, whatever their role in its project (and
        whatever runs in it)."""
        self._stop(actor, project, None, f"stopped by admin {actor.name}", force=True)
        return self.admin_view(project)

    def _stop(
        self, actor: Actor, project: str, check: Action | None, reason: str, force: bool
    ) -> tuple[dict[str, Any], Role | None]:
        with self.ledger.transaction() as db:
            row, role = _project_for(db, actor, project, check)
            container = _container_of(db, row["id"])
            if container is None or container["state"] == State.DISABLED:
                raise Conflict(f"the container of {project} is not enabled")
            if not force and container["state"] in ACTIVE:
                work = self.open_work(db, container["id"])
                if work:
                    raise Conflict(
                        f"{project} has {work.describe()}; stop it with --force "
                        "(force: true) to end them"
                    )
            job_id = request_stop(db, container, reason, **_actor_kw(actor))
        if job_id is not None:
            self.cancel_job(job_id)
        return row, role

    def cancel_job(self, job_id: int) -> None:
        """SIGTERM to the holder (its trap stops the instance), KillWait later SIGKILL: Slurm's
        own."""
        try:
            self.scheduler.cancel(job_id)
        except SlurmUnavailable:
            # The reconciler cancels again while the container is STOPPING.
            log.warning("cancel not answered; will retry", extra={"job_id": job_id})
        self.poke()

    def retry(self, actor: Actor, project: str) -> ContainerView:
        with self.ledger.transaction() as db:
            row, role = authorize(db, actor, project, Action.RETRY)
            container = _container_of(db, row["id"])
            if container is None or container["state"] != State.ERROR:
                state = container["state"] if container else "disabled"
                raise Conflict(f"retry is for a container in error; {project}'s is {state}")
            if container["state_dir"] is None or image_cache.is_reference(container["image"] or ""):
                # Enable itself (or its pull) failed: go back to disabled and enable again.
                change_state(
                    db,
                    container["id"],
                    State.DISABLED,
                    allowed_from=[State.ERROR],
                    reason="retry",
                    **_actor_kw(actor),
                )
                again = True
            else:
                change_state(
                    db,
                    container["id"],
                    State.STOPPED,
                    allowed_from=[State.ERROR],
                    reason="retry",
                    fields={"last_error": None},
                    **_actor_kw(actor),
                )
                again = False
        if again:
            self._enable(actor, row)
        else:
            self._wake(actor, row)
        return self._view(row, role)

    def snapshot(self, actor: Actor, project: str) -> dict[str, Any]:
        """A read-only snapshot of the overlay for batch steps: now if the container sleeps,
        else when it next does (containers/snapshot_policy.py). For those who start and stop it."""
        row, _ = self._authorize(actor, project, Action.STOP)
        return request_snapshot(self.snapshots, actor, row)

    def batch_plan(self, actor: Actor, project: str) -> BatchPlan:
        """What a member's batch step runs (containers/batch_plan.py); authorized once, for
        `run`, in the same ledger read."""
        with self.ledger.read() as db:
            row, _ = authorize(db, actor, project, Action.RUN)
            return batch_plan(db, self.config, row)

    def authorize_exec(self, actor: Actor, project: str) -> Access:
        """The one authorization of an exec request, carried through its wake and wait."""
        row, role = self._authorize(actor, project, Action.EXEC)
        return Access(actor, row, role)

    def view_of(self, access: Access) -> ContainerView:
        return self._view(access.project, access.role)

    def wake_for(self, access: Access) -> None:
        """Wake the container of an authorized request (see `wake`)."""
        self._wake(access.actor, access.project)

    def exec_target(self, actor: Actor, project: str) -> ExecTarget | None:
        """The running container of a project the actor may exec in; None when it is not running."""
        return self.target_of(self.authorize_exec(actor, project))

    def target_of(self, access: Access) -> ExecTarget | None:
        """Where an authorized exec goes; None while the container is not running."""
        with self.ledger.read() as db:
            row = _fresh_project(db, access.project)
            project = row["name"]
            runtime_user = require_runtime_identity(db, self.config, row)
            container = _container_of(db, row["id"])
            if container is None or container["state"] != State.RUNNING:
                return None
            variables, has_secrets = container_variables(db, secret_store(self.config), row)
        if not container["instance"]:
            return None
        if container["runtime_user"] != runtime_user:
            # Stopping already (the identity changed); never exec as the one who left.
            raise Conflict(
                f"the container of {project} still runs as {container['runtime_user']}, not "
                f"{runtime_user}; start it again once it has stopped"
            )
        return ExecTarget(
            container_id=container["id"],
            job_id=container["job_id"],
            node=container["node"],
            instance=container["instance"],
            state_dir=container["state_dir"],
            runas=RunAs.for_user(container["runtime_user"]),
            variables=variables,
            has_secrets=has_secrets,
            service_port=int(from_json(container["settings"]).get("effective", {}).get("port", 0)),
        )

    def touch_activity(self, container_id: int) -> None:
        """Record exec/shell activity: the idle timer counts from the last one."""
        with self.ledger.transaction() as db:
            db.table("containers").update(
                container_id, {"last_activity_at": to_timestamp(self.clock())}
            )

    def admin_containers(
        self, project: str | None = None, with_usage: bool = False
    ) -> list[dict[str, Any]]:
        """Every starting, running, stopping and waiting container, with what it holds or asks;
        ``with_usage``: a running one's job's usage now too (the cached `status` usage)."""
        where = "c.state IN (?, ?, ?, ?)"
        args: list[Any] = [s.value for s in ACTIVE]
        if project is not None:
            where, args = "p.name = ?", [project]
        query = (
            "SELECT p.name, c.runtime_user, c.state, c.reason, c.job_id, c.node, c.updated_at, "
            "c.started_at, c.queued_at, l.partition, l.gpus, l.cpus, l.mem_mb, c.project_id "
            "FROM containers c JOIN projects p ON p.id = c.project_id "
            "LEFT JOIN leases l ON l.container_id = c.id WHERE " + where + " ORDER BY p.name"
        )
        with self.ledger.read() as db:
            rows = db.execute(query, args).fetchall()
            projects = {r[13]: db.table("projects").get(r[13]) for r in rows}
        now = self.clock()
        result = []
        for (
            name,
            user,
            state,
            reason,
            job_id,
            node,
            updated,
            started,
            queued,
            partition,
            gpus,
            cpus,
            mem,
            project_id,
        ) in rows:
            eff = effective(Settings.from_row(projects[project_id]), self.config.defaults)
            since = started or queued or updated
            result.append(
                {
                    "project": name,
                    "linux_user": user,
                    "state": state,
                    "reason": reason,
                    "partition": partition or eff.partition or None,
                    "gpus": gpus if gpus is not None else eff.gpus,
                    "cpus": cpus if cpus is not None else eff.cpus,
                    "mem_mb": mem if mem is not None else eff.mem_mb,
                    "lease": partition is not None,
                    "job_id": job_id,
                    "node": node,
                    "age_s": int((now - from_timestamp(since)).total_seconds()) if since else None,
                }
            )
        if with_usage:
            self._add_usage(result)
        return result

    def _add_usage(self, rows: list[dict[str, Any]]) -> None:
        """A running container's ``usage`` as `status` shows it (None for the others). Samples
        not cached are taken a few at a time: each sstat waits at most its own short deadline."""
        running = [r for r in rows if r["state"] == State.RUNNING and r["job_id"]]
        for row in rows:
            row["usage"] = None
        if not running:
            return
        if not self.slurm_reachable:
            for row in running:
                row["usage"] = {"unavailable": "Slurm did not answer rxd's last look"}
            return
        with ThreadPoolExecutor(max_workers=USAGE_SAMPLERS) as pool:
            for row, usage in zip(
                running, pool.map(lambda r: self.usage.of(r["job_id"]), running), strict=True
            ):
                row["usage"] = usage

    def admin_view(self, project: str) -> dict[str, Any]:
        found = self.admin_containers(project)
        return found[0] if found else {"project": project, "state": State.DISABLED.value}

    def quota_views(self) -> list[dict[str, Any]]:
        """Every quota with what its leases use now (an admin's view)."""
        with self.ledger.read() as db:
            rows = db.table("quotas").rows_where(order_by="partition, scope, subject")
            return [quotas.quota_view(db, row) for row in rows]

    def set_quota(self, actor: Actor, values: dict[str, Any]) -> dict[str, Any]:
        """An admin sets a quota (values checked by quotas.parse_quota): recorded and audited
        in one transaction, mirrored to Slurm's QOS where asked, and the queue looked at."""
        with self.ledger.transaction() as db:
            quota = quotas.set_quota(db, values, actor.name)
            record_actor_event(db, actor, "quota.set", "quota", str(quota["id"]), values)
            view = quotas.quota_view(db, quota)
        mirrored = self.mirror_quotas()
        self.poke()  # a raised quota may let waiting containers start
        return {**view, "mirrored": mirrored}

    def remove_quota(self, actor: Actor, quota_id: int) -> dict[str, Any]:
        """An admin removes a quota; as set_quota."""
        with self.ledger.transaction() as db:
            removed = quotas.remove_quota(db, quota_id)
            record_actor_event(db, actor, "quota.removed", "quota", str(quota_id), removed)
        mirrored = self.mirror_quotas()
        self.poke()
        return {"removed": removed, "mirrored": mirrored}
