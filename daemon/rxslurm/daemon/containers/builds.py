"""Image drafts and builds for the API and the reconciler: ``BuildService``.

A build is a Slurm job submitted as the project's runtime identity through the ``Scheduler`` port,
its script from the ``ContainerRuntime`` (build.sh), its folder made by root in the root-owned
state root and handed to that identity, like a container's. It holds a lease against the partition
quotas while it is queued or builds (a build that does not fit is refused with the bottleneck).
The reconciler's pass (``reconcile``) moves builds through their states (images/builds.py) from
what Slurm says; a build that cannot be followed this pass is logged and left for the next, never
stopping the pass. Every change is audited with the build's project as target.

It lives beside the container service because it uses the quotas and the scheduler as the
container service does (images and quotas are siblings that do not import each other).
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlite_utils.db import NotFoundError

from rxslurm.daemon.config import Config
from rxslurm.daemon.containers.job_follow import Follower, Seen, follow_records
from rxslurm.daemon.containers.service import ContainerService, _prepare_state_dir
from rxslurm.daemon.errors import BadRequest, Conflict, NotFound, Unavailable
from rxslurm.daemon.identity.actors import Actor, record_actor_event
from rxslurm.daemon.images import drafts
from rxslurm.daemon.images.build_result import read_result
from rxslurm.daemon.images.builds import (
    ACTIVE_BUILDS,
    BUILD_JOB_PREFIX,
    IMAGE_FILE,
    RENAMABLE,
    Build,
    BuildState,
    build_comment,
    build_dir_name,
    build_job_name,
    find_build,
)
from rxslurm.daemon.images.definition import base_of, header_value
from rxslurm.daemon.images.gates import require_builds_enabled, require_dev_mode
from rxslurm.daemon.ledger.audit import record_event
from rxslurm.daemon.ledger.store import LedgerDatabase, LedgerError
from rxslurm.daemon.ledger.timestamps import to_timestamp
from rxslurm.daemon.ports import BuildRequest, Scheduler
from rxslurm.daemon.projects.roles import Action
from rxslurm.daemon.projects.service import authorize, require_runtime_identity
from rxslurm.daemon.quarantine import quarantine
from rxslurm.daemon.quotas import leases as quotas
from rxslurm.daemon.runtime.build_files import RemoveError, empty_build_folder
from rxslurm.daemon.runtime.job_output import MAX_BYTES, JobOutput, OutputError, read_output
from rxslurm.daemon.settings import Settings
from rxslurm.slurm.adapter import JobSpec
from rxslurm.slurm.errors import SlurmError, SlurmUnavailable
from rxslurm.slurm.jobs import JobInfo, Listing
from rxslurm.slurm.runas import RunAs, RunAsError

log = logging.getLogger("rxslurm.builds")

# Cancelled builds whose job Slurm still lists are cancelled again for this long.
RECANCEL_S = 3600
_PARTITION = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_CPUS = 1024
MAX_MEM_MB = 16 * 1024 * 1024
MAX_TIME_MIN = 7 * 24 * 60


class BuildService:
    def __init__(self, containers: ContainerService) -> None:
        self.containers = containers
        self.ledger = containers.ledger
        # As root would do it on a cluster; the unit tests, run as nobody, replace both.
        self.read_output: Callable[..., JobOutput] = read_output
        self.make_build_dir: Callable[[str, RunAs], object] = lambda name, owner: (
            _prepare_state_dir(self.config, name, owner, None)
        )
        # What Slurm says of the partition and its nodes (api/context.py gives its cache), so a
        # build no node could run is refused before anything is recorded.
        self.validate_resources: Callable[[Settings], None] = lambda settings: None

    # The config and the ports, as the container service holds them (tests swap them there).
    @property
    def config(self) -> Config:
        return self.containers.config

    @property
    def scheduler(self) -> Scheduler:
        return self.containers.scheduler

    def _now(self) -> str:
        return to_timestamp(self.containers.clock())

    # -- drafts ----------------------------------------------------------------------------

    def list_drafts(self, actor: Actor, project: str) -> dict[str, Any]:
        with self.ledger.read() as db:
            row, _ = authorize(db, actor, project, Action.VIEW)
            return {"project": project, "drafts": drafts.list_drafts(db, row["id"])}

    def show_draft(self, actor: Actor, project: str, name: str) -> dict[str, Any]:
        with self.ledger.read() as db:
            row, _ = authorize(db, actor, project, Action.VIEW)
            draft = drafts.draft_row(db, row["id"], name)
        return self._draft_view(project, draft)

    def _draft_view(self, project: str, draft: dict[str, Any]) -> dict[str, Any]:
        checked = drafts.check(draft["kind"], draft["text"])
        return {
            "project": project,
            **drafts.view(draft),
            "check": checked.to_dict(),
            "definition": checked.definition,
        }

    def _max_draft_bytes(self) -> int:
        return self.config.builds.max_draft_kb * 1024

    def create_draft(self, actor: Actor, project: str, body: dict[str, Any]) -> dict[str, Any]:
        require_builds_enabled(self.config)
        values = drafts.parse_body(body, self._max_draft_bytes(), partial=False)
        with self.ledger.transaction() as db:
            row, _ = authorize(db, actor, project, Action.BUILD)
            draft = drafts.create(db, row, actor, body.get("name"), values)
        return self._draft_view(project, draft)

    def edit_draft(
        self, actor: Actor, project: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        require_builds_enabled(self.config)
        values = drafts.parse_body(body, self._max_draft_bytes(), partial=True)
        with self.ledger.transaction() as db:
            row, _ = authorize(db, actor, project, Action.BUILD)
            draft = drafts.edit(db, row, actor, name, values)
        return self._draft_view(project, draft)

    def delete_draft(self, actor: Actor, project: str, name: str) -> dict[str, Any]:
        with self.ledger.transaction() as db:
            row, _ = authorize(db, actor, project, Action.BUILD)
            drafts.delete(db, row, actor, name)
        return {"project": project, "deleted": name}

    def check_text(self, actor: Actor, project: str, body: dict[str, Any]) -> dict[str, Any]:
        """Validate a draft's text without storing it (`rxctl image draft validate --file`)."""
        values = drafts.parse_body(
            {"kind": body.get("kind"), "text": body.get("text")},
            self._max_draft_bytes(),
            partial=False,
        )
        with self.ledger.read() as db:
            authorize(db, actor, project, Action.VIEW)
        checked = drafts.check(values["kind"], values["text"])
        return {"project": project, "check": checked.to_dict(), "definition": checked.definition}

    # -- builds ----------------------------------------------------------------------------

    def build(self, actor: Actor, project: str, body: dict[str, Any]) -> dict[str, Any]:
        """Submit a build of a draft: refused (nothing changes) unless builds are on, the
        project is in dev mode, the caller may build, the draft has no problems and the job
        fits the quotas."""
        config = self.config
        require_builds_enabled(config)
        draft_name = drafts.check_name("draft", body.get("draft"))
        image = drafts.check_name("image name", body.get("name") or draft_name)
        resources = self._resources(body)
        self.validate_resources(
            Settings(
                partition=resources["partition"],
                cpus=resources["cpus"],
                mem_mb=resources["mem_mb"],
            )
        )
        with self.ledger.read() as db:
            row, _ = authorize(db, actor, project, Action.BUILD)
            require_dev_mode(row)
            runtime_user = require_runtime_identity(db, config, row)
            draft = drafts.draft_row(db, row["id"], draft_name)
        checked = drafts.check(draft["kind"], draft["text"])
        if checked.definition is None:
            first = checked.problems[0]
            raise BadRequest(
                f"draft {draft_name} does not build: {first} "
                f"(all problems: rxctl image draft validate --project {project} {draft_name})"
            )
        if not row["workspace"]:
            raise Conflict(f"project {project} has no workspace to build from")
        try:
            owner = RunAs.for_user(runtime_user)
        except RunAsError as exc:
            raise Conflict(f"cannot build as {runtime_user}: {exc}") from None
        partition = resources["partition"]
        request = quotas.Request(
            partition=partition,
            project=project,
            linux_user=runtime_user,
            gpus=0,
            cpus=resources["cpus"],
            mem_mb=resources["mem_mb"],
        )
        now = self._now()
        context = str(Path(row["workspace"]) / draft["context"])
        with self.ledger.transaction() as db:
            row, _ = authorize(db, actor, project, Action.BUILD)
            require_dev_mode(row)
            why = quotas.bottleneck(db, request, asker="this build")
            if why is not None:
                raise Conflict(f"the build does not fit: {why}", code="quota")
            try:
                build_id = (
                    db.table("image_builds")
                    .insert(
                        {
                            "project_id": row["id"],
                            "name": image,
                            "draft": draft_name,
                            "definition": checked.definition,
                            "base": base_of(checked.definition),
                            "state": BuildState.QUEUED.value,
                            "runtime_user": runtime_user,
                            "runtime_uid": owner.uid,
                            "build_dir": "",
                            "context": context,
                            **resources,
                            "created_at": now,
                            "created_by": actor.name,
                            "updated_at": now,
                        }
                    )
                    .last_pk
                )
            except sqlite3.IntegrityError:
                # The one constraint a valid row can break: a live image of that name.
                raise Conflict(
                    f"project {project} already has an image named {image!r}; give --name "
                    "or delete the old one"
                ) from None
            if not isinstance(build_id, int):  # an INTEGER PRIMARY KEY always gets one
                raise LedgerError("the new build got no id")
            build_dir = str(self.config.containers.state_root / build_dir_name(project, build_id))
            db.table("image_builds").update(build_id, {"build_dir": build_dir})
            quotas.acquire_for_build(db, build_id, request)
            record_actor_event(
                db,
                actor,
                "image.build-submitted",
                "project",
                project,
                {
                    "build": build_id,
                    "image": image,
                    "draft": draft_name,
                    "runtime_user": runtime_user,
                    **resources,
                },
            )
        self._submit(build_id, project, owner, build_dir, context, checked.definition, draft)
        self.containers.poke()
        return self._view(project, self._build(build_id))

    def _resources(self, body: dict[str, Any]) -> dict[str, Any]:
        builds = self.config.builds
        partition = body.get("partition") or builds.partition or self.config.defaults.partition
        partition = partition or self.containers.default_partition()
        if not partition:
            raise BadRequest("no partition to build in: give --partition (or set [builds] one)")
        if not isinstance(partition, str) or not _PARTITION.fullmatch(partition):
            raise BadRequest("partition may hold only letters, digits, '.', '_' and '-'")
        values: dict[str, Any] = {"partition": partition}
        for key, default, most in (
            ("cpus", builds.cpus, MAX_CPUS),
            ("mem_mb", builds.mem_mb, MAX_MEM_MB),
            ("time_limit_min", builds.time_limit_min, MAX_TIME_MIN),
        ):
            value = body.get(key)
            if value is None:
                value = default
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
                raise BadRequest(f"{key} must be a whole number from 1 to {most}")
            values[key] = value
        return values

    def _submit(
        self,
        build_id: int,
        project: str,
        owner: RunAs,
        build_dir: str,
        context: str,
        definition: str,
        draft: dict[str, Any],
    ) -> None:
        """After the commit: the folder, the script, sbatch as the runtime user. A failure
        ends the build `failed` with the reason (its lease goes with it)."""
        try:
            self.make_build_dir(Path(build_dir).name, owner)
            plain = registry_of(definition) in self.config.pulls.plain_http
            script = self.containers.runtime.build_script(
                BuildRequest(build_dir, context, definition, draft["ignore"], plain_http=plain)
            )
            row = self._build(build_id)
            spec = JobSpec(
                name=build_job_name(project, build_id),
                comment=build_comment(self.config.slurm.tag, build_id),
                partition=row["partition"] or None,
                cpus=row["cpus"],
                mem_mb=row["mem_mb"],
                time_limit_min=row["time_limit_min"],
                workdir=build_dir,
                output=f"{build_dir}/job-%j.out",
                requeue=False,
            )
            job_id = self.scheduler.submit(script, spec, owner)
        except (SlurmError, OSError, ValueError, Conflict) as exc:
            message = exc.message if isinstance(exc, Conflict) else str(exc)
            self._end(build_id, BuildState.FAILED, f"the build job was not submitted: {message}")
            raise Unavailable(f"the build job was not submitted: {message}") from None
        with self.ledger.transaction() as db:
            db.table("image_builds").update(build_id, {"job_id": job_id, "updated_at": self._now()})

    def _build(self, build_id: int) -> dict[str, Any]:
        return dict(self.ledger.db.table("image_builds").get(build_id))

    def _view(self, project: str, row: dict[str, Any]) -> dict[str, Any]:
        return {
            "project": project,
            "id": row["id"],
            "name": row["name"],
            "draft": row["draft"],
            "state": row["state"],
            "reason": row["reason"],
            "job_id": row["job_id"],
            "node": row["node"],
            "base": row["base"],
            "size": row["size_bytes"],
            "sha256": row["sha256"],
            "image": row["image_path"],
            "built_by": row["created_by"],
            "runtime_user": row["runtime_user"],
            "partition": row["partition"],
            "cpus": row["cpus"],
            "mem_mb": row["mem_mb"],
            "time_limit_min": row["time_limit_min"],
            "created_at": row["created_at"],
            "started_at": row["started_at"],
            "ended_at": row["ended_at"],
        }

    def _find(self, db: LedgerDatabase, project_row: dict[str, Any], ref: str) -> Build:
        found = find_build(db, project_row["id"], ref)
        if found is None:
            raise NotFound(f"no image or build {ref!r} in project {project_row['name']}")
        return found

    def list_builds(self, actor: Actor, project: str) -> dict[str, Any]:
        with self.ledger.read() as db:
            row, _ = authorize(db, actor, project, Action.VIEW)
            rows = db.table("image_builds").rows_where("project_id = ?", [row["id"]], order_by="id")
            return {"project": project, "images": [self._view(project, dict(r)) for r in rows]}

    def status(self, actor: Actor, project: str, ref: str) -> dict[str, Any]:
        with self.ledger.read() as db:
            row, _ = authorize(db, actor, project, Action.VIEW)
            build = self._find(db, row, ref)
        return self._view(project, self._build(build.id))

    def logs(
        self, actor: Actor, project: str, ref: str, offset: int | None = None
    ) -> dict[str, Any]:
        """The build job's output, read as the runtime user (as `rxctl logs` reads a holder's)."""
        with self.ledger.read() as db:
            row, _ = authorize(db, actor, project, Action.LOGS)
            build = self._find(db, row, ref)
        base = {"project": project, "id": build.id, "state": build.state.value}
        if build.job_id is None:
            return {**base, "job_id": None, "text": "", "start": 0, "end": 0, "size": 0}
        try:
            piece = self.read_output(
                build.build_dir,
                build.job_id,
                RunAs.for_user(build.runtime_user),
                offset=offset,
                max_bytes=MAX_BYTES,
            )
        except RunAsError as exc:
            raise Conflict(f"cannot read the build's output: {exc}") from None
        except OutputError as exc:
            raise Unavailable(str(exc)) from None
        return {
            **base,
            "job_id": build.job_id,
            "text": piece.text,
            "start": piece.start,
            "end": piece.end,
            "size": piece.size,
            "missing": piece.missing,
        }

    def cancel(self, actor: Actor, project: str, ref: str) -> dict[str, Any]:
        with self.ledger.transaction() as db:
            row, _ = authorize(db, actor, project, Action.BUILD)
            build = self._find(db, row, ref)
            if build.state not in ACTIVE_BUILDS:
                raise Conflict(f"build {build.id} ({build.name}) is {build.state}, not running")
            self._end_in(db, build.id, BuildState.CANCELLED, f"cancelled by {actor.name}")
            record_actor_event(
                db, actor, "image.build-cancelled", "project", project, {"build": build.id}
            )
        if build.job_id is not None:
            self._cancel_job(build.job_id)
        return self._view(project, self._build(build.id))

    def _cancel_job(self, job_id: int) -> None:
        try:
            self.scheduler.cancel(job_id)
        except SlurmUnavailable:
            log.warning("build cancel not answered; the pass cancels again", extra={"job": job_id})

    def delete(self, actor: Actor, project: str, ref: str) -> dict[str, Any]:
        """The build's record and its files (removed as the runtime user)."""
        with self.ledger.read() as db:
            row, _ = authorize(db, actor, project, Action.BUILD)
            build = self._find(db, row, ref)
        if build.state in ACTIVE_BUILDS:
            raise Conflict(
                f"build {build.id} ({build.name}) is {build.state}; cancel it first: "
                f"rxctl image cancel --project {project} {build.id}"
            )
        if build.build_dir:
            self._remove_files(build)
        with self.ledger.transaction() as db:
            authorize(db, actor, project, Action.BUILD)
            try:
                db.table("image_builds").delete(build.id)
            except NotFoundError:
                raise NotFound(f"build {build.id} was deleted meanwhile") from None
            record_actor_event(
                db,
                actor,
                "image.build-deleted",
                "project",
                project,
                {"build": build.id, "image": build.name, "sha256": build.sha256},
            )
        return {"project": project, "deleted": build.id, "name": build.name}

    def remove_unused(self, build_id: int) -> None:
        """Garbage collection's removal of a succeeded build no project names (containers/gc.py,
        which audits it): its files as the runtime user, then its record. Conflict when it is
        named again meanwhile; Unavailable when its files cannot go (the record stays)."""
        with self.ledger.read() as db:
            rows = list(db.table("image_builds").rows_where("id = ?", [build_id]))
            if not rows:
                return
            build = Build.from_row(rows[0])
            named = db.execute(
                "SELECT 1 FROM projects WHERE image = ? UNION ALL "
                "SELECT 1 FROM containers WHERE image = ?",
                [build.image_path, build.image_path],
            ).fetchone()
        if build.state is not BuildState.SUCCEEDED or named is not None:
            raise Conflict(f"build {build.id} ({build.name}) is in use again; kept")
        if build.build_dir:
            self._remove_files(build)
        with self.ledger.transaction() as db:
            db.execute("DELETE FROM image_builds WHERE id = ?", [build.id])

    def _remove_files(self, build: Build) -> None:
        try:
            empty_build_folder(build.build_dir, RunAs.for_user(build.runtime_user))
        except (RunAsError, RemoveError) as exc:
            raise Unavailable(f"cannot remove the files of build {build.id}: {exc}") from None
        path = Path(build.build_dir)
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError:
            # Written to meanwhile, or not a folder any more: out of the way, kept for an admin.
            quarantine(self.config.containers.state_root, path.name)

    def rename(self, actor: Actor, project: str, ref: str, new: Any) -> dict[str, Any]:
        name = drafts.check_name("image name", new)
        with self.ledger.transaction() as db:
            row, _ = authorize(db, actor, project, Action.BUILD)
            build = self._find(db, row, ref)
            if build.state not in RENAMABLE:
                raise Conflict(
                    f"only a queued or succeeded image can be renamed; {build.name} is "
                    f"{build.state}"
                )
            try:
                db.table("image_builds").update(build.id, {"name": name, "updated_at": self._now()})
            except sqlite3.IntegrityError:
                taken = f"project {project} already has an image named {name!r}"
                raise Conflict(taken) from None
            record_actor_event(
                db,
                actor,
                "image.renamed",
                "project",
                project,
                {"build": build.id, "from": build.name, "to": name},
            )
        return self._view(project, self._build(build.id))

    # -- the reconciler's part -------------------------------------------------------------

    def reconcile(self) -> int:
        """Follow every queued or building build (and re-cancel cancelled ones still listed);
        one squeue for all. A build that fails to be followed is logged and left for the next
        pass. The number of changes."""
        db = self.ledger.db
        since = to_timestamp(self.containers.clock() - timedelta(seconds=RECANCEL_S))
        rows = [
            dict(r)
            for r in db.table("image_builds").rows_where(
                "state IN (?, ?) OR (state = ? AND job_id IS NOT NULL AND ended_at > ?)",
                [*(s.value for s in ACTIVE_BUILDS), BuildState.CANCELLED.value, since],
            )
        ]
        follower = Follower(
            self.scheduler, self.containers.clock, BuildState.QUEUED.value, self._is_ours
        )
        return follow_records(
            rows,
            self.scheduler,
            BUILD_JOB_PREFIX,
            follower,
            self._follow,
            "an image build",
            "build",
        )

    def _follow(self, row: dict[str, Any], follower: Follower, queue: Listing, blind: bool) -> int:
        build_id = row["id"]
        if row["state"] == BuildState.CANCELLED:
            if follower.still_active(row, queue):
                self._cancel_job(row["job_id"])
                return 1
            return 0
        look = follower.look(row, queue, blind)
        if look.seen is Seen.ADOPT and look.job is not None:
            with self.ledger.transaction() as db:
                db.table("image_builds").update(
                    build_id, {"job_id": look.job.job_id, "updated_at": self._now()}
                )
        elif look.seen is Seen.STARTED and look.job is not None:
            self._move(build_id, BuildState.QUEUED, BuildState.BUILDING, node=look.job.nodes)
        elif look.seen is Seen.NEVER_SUBMITTED:
            self._end(build_id, BuildState.FAILED, "the build job was never submitted")
        elif look.seen is Seen.GONE:
            self._end(build_id, BuildState.FAILED, "the build job left no record in Slurm")
        elif look.seen is Seen.ENDED and look.job is not None:
            return self._finished(row, look.job)
        else:
            return 0
        return 1

    def _is_ours(self, row: dict[str, Any], job: JobInfo) -> bool:
        """A job proves to be this build's by its comment and its user (any user can name a
        job anything)."""
        return job.comment == build_comment(self.config.slurm.tag, row["id"]) and (
            job.user == row["runtime_user"]
        )

    def _finished(self, row: dict[str, Any], job: JobInfo) -> int:
        build_id = row["id"]
        if job.base_state == "CANCELLED" or job.state == "CANCELLED":
            self._end(build_id, BuildState.CANCELLED, "the job was cancelled outside rx-slurm")
            return 1
        if job.state in ("TIMEOUT", "OUT_OF_MEMORY"):
            reason = (
                f"the build ran out of its time limit ({row['time_limit_min']} min; --time)"
                if job.state == "TIMEOUT"
                else f"the build ran out of memory ({row['mem_mb']} MB; --mem)"
            )
            self._end(build_id, BuildState.FAILED, reason)
            return 1
        try:
            piece = self.read_output(
                row["build_dir"], job.job_id, RunAs.for_user(row["runtime_user"]), None
            )
            output = piece.text
        except (RunAsError, OutputError) as exc:
            output = f"rx-build: failed: its output could not be read: {exc}"
        result = read_result(output, row["definition"])
        if result.succeeded and job.state == "COMPLETED":
            self._end(
                build_id,
                BuildState.SUCCEEDED,
                None,
                image_path=f"{row['build_dir']}/{IMAGE_FILE}",
                size_bytes=result.size,
                sha256=result.sha256,
            )
        else:
            reason = result.reason or f"the build job ended {job.state}"
            self._end(build_id, BuildState.FAILED, reason)
        return 1

    def _move(self, build_id: int, old: BuildState, new: BuildState, **values: Any) -> None:
        with self.ledger.transaction() as db:
            now = self._now()
            changed = db.execute(
                "UPDATE image_builds SET state = ?, started_at = ?, node = ?, updated_at = ? "
                "WHERE id = ? AND state = ?",
                [new.value, now, values.get("node") or None, now, build_id, old.value],
            ).rowcount
            if changed:
                project = self._project_of(db, build_id)
                record_event_for(
                    db, project, "image.build-started", build_id, {"node": values.get("node")}
                )

    def _end(self, build_id: int, state: BuildState, reason: str | None, **values: Any) -> None:
        with self.ledger.transaction() as db:
            if self._end_in(db, build_id, state, reason, **values):
                project = self._project_of(db, build_id)
                detail = {"state": state.value, "reason": reason, **values}
                record_event_for(db, project, f"image.build-{state.value}", build_id, detail)

    def _end_in(
        self,
        db: LedgerDatabase,
        build_id: int,
        state: BuildState,
        reason: str | None,
        **values: Any,
    ) -> bool:
        """-> an end state, only from queued or building; its lease goes with it."""
        now = self._now()
        fields = {"state": state.value, "reason": reason, "ended_at": now, "updated_at": now}
        sets = ", ".join(f"{k} = ?" for k in [*fields, *values])
        changed = db.execute(
            f"UPDATE image_builds SET {sets} WHERE id = ? AND state IN (?, ?)",  # noqa: S608
            [*fields.values(), *values.values(), build_id, *(s.value for s in ACTIVE_BUILDS)],
        ).rowcount
        quotas.release_for_build(db, build_id)
        return bool(changed)

    def _project_of(self, db: LedgerDatabase, build_id: int) -> str:
        found = db.execute(
            "SELECT p.name FROM image_builds b JOIN projects p ON p.id = b.project_id "
            "WHERE b.id = ?",
            [build_id],
        ).fetchone()
        return str(found[0]) if found else ""


def registry_of(definition: str) -> str:
    """The registry ("host:port") a docker:// base comes from; "" for Docker Hub or no registry.
    As Docker reads a reference: the first part is a registry if it has a '.' or ':'."""
    if header_value(definition, "Bootstrap").lower() != "docker":
        return ""
    first, sep, _ = header_value(definition, "From").partition("/")
    return first if sep and ("." in first or ":" in first or first == "localhost") else ""


def record_event_for(
    db: LedgerDatabase, project: str, action: str, build_id: int, detail: dict[str, Any]
) -> None:
    """An event of rxd's own (the reconciler's) about a build of ``project``."""
    record_event(
        db,
        actor="rxd",
        actor_uid=None,
        origin="reconciler",
        action=action,
        target_type="project",
        target_id=project,
        detail={"build": build_id, **detail},
    )
