"""Projects, members and roles: every change checks the actor's role and commits with its event."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rxslurm.daemon.config import Config
from rxslurm.daemon.errors import BadRequest, Conflict, Forbidden, NotFound
from rxslurm.daemon.identity.actors import Actor, record_actor_event
from rxslurm.daemon.identity.bindings import (
    binding_of_platform_user,
    check_platform_user_id,
    ensure_platform_user,
    unbound_refusal,
)
from rxslurm.daemon.identity.linux_accounts import linux_account_by_name
from rxslurm.daemon.identity.run_as_guard import RunAsProject, release_run_as
from rxslurm.daemon.ledger.records import from_json
from rxslurm.daemon.ledger.store import Ledger, LedgerDatabase
from rxslurm.daemon.ledger.timestamps import to_timestamp, utcnow
from rxslurm.daemon.projects.labels import labels_of
from rxslurm.daemon.projects.names import check_project_name
from rxslurm.daemon.projects.roles import ALLOWED, Action, Role, may, parse_role
from rxslurm.daemon.projects.snapshot_access import kept_rows
from rxslurm.daemon.settings import (
    Settings,
    apply_changes,
    check_static,
    differs_from_snapshot,
    effective,
)


def require_bound(actor: Actor, config: Config) -> str:
    if actor.platform_user is None:
        raise unbound_refusal(actor, config.identity.min_uid)
    return actor.platform_user


def _project_row(db: LedgerDatabase, name: str) -> dict[str, Any] | None:
    rows = list(db.table("projects").rows_where("name = ?", [name]))
    return rows[0] if rows else None


def role_in(db: LedgerDatabase, project_id: int, platform_user: str | None) -> Role | None:
    if platform_user is None:
        return None
    rows = list(
        db.table("members").rows_where(
            "project_id = ? AND platform_user_id = ?", [project_id, platform_user]
        )
    )
    return Role(rows[0]["role"]) if rows else None


def authorize(
    db: LedgerDatabase, actor: Actor, name: str, action: Action
) -> tuple[dict[str, Any], Role | None]:
    """The project row and the actor's role, or an error: 404 for those who may not see it."""
    check_project_name(name)
    row = _project_row(db, name)
    role = role_in(db, row["id"], actor.platform_user) if row else None
    if row is None or (role is None and not (actor.admin and action is Action.VIEW)):
        raise NotFound(f"no project named {name!r} (or you are not a member)")
    if action is Action.VIEW and actor.admin:
        return row, role
    if not may(role, action):
        needed = " or ".join(r.value for r in Role if r in ALLOWED[action])
        have = role.value if role else "not a member"
        raise Forbidden(f"{action.value} in project {name} needs role {needed}; you are {have}")
    return row, role


def _event(
    db: LedgerDatabase,
    actor: Actor,
    action: str,
    project: str,
    detail: dict[str, Any] | None = None,
) -> None:
    record_actor_event(db, actor, action, "project", project, detail)


def create_project(
    ledger: Ledger,
    config: Config,
    actor: Actor,
    *,
    name: Any,
    settings: Any = None,
    validate: Callable[[Settings], None] | None = None,
) -> dict[str, Any]:
    owner = require_bound(actor, config)
    name = check_project_name(name)
    new = apply_changes(Settings(), settings or {})
    check_static(new)
    if validate:
        validate(effective(new, config.defaults))
    run_as = "service" if config.runtime.service_account else "bound"
    now = to_timestamp(utcnow())
    with ledger.transaction() as db:
        if _project_row(db, name):
            raise Conflict(f"a project named {name!r} already exists")
        inserted = db.table("projects").insert(
            {
                "name": name,
                "created_at": now,
                "created_by": owner,
                **new.to_dict(),
                "run_as": run_as,
                "run_as_user": owner if run_as == "bound" else None,
                "workspace": str(config.workspaces.root / name),
                "settings_changed_at": now,
            }
        )
        project_id = inserted.last_pk
        db.table("members").insert(
            {
                "project_id": project_id,
                "platform_user_id": owner,
                "role": Role.OWNER.value,
                "added_at": now,
                "added_by": owner,
            }
        )
        _event(db, actor, "project.created", name, {"settings": new.to_dict(), "run_as": run_as})
    return project_view(ledger, config, actor, name)


def list_projects(ledger: Ledger, actor: Actor) -> list[dict[str, Any]]:
    with ledger.read() as db:
        if actor.admin:
            rows = db.execute(
                "SELECT p.name, p.created_by, m.role FROM projects p LEFT JOIN members m "
                "ON m.project_id = p.id AND m.platform_user_id = ? ORDER BY p.name",
                [actor.platform_user],
            ).fetchall()
        else:
            rows = db.execute(
                "SELECT p.name, p.created_by, m.role FROM projects p JOIN members m "
                "ON m.project_id = p.id WHERE m.platform_user_id = ? ORDER BY p.name",
                [actor.platform_user],
            ).fetchall()
        states = {
            r[0]: r[1]
            for r in db.execute(
                "SELECT p.name, c.state FROM containers c JOIN projects p ON p.id = c.project_id"
            ).fetchall()
        }
    return [
        {"name": n, "created_by": by, "role": role, "state": states.get(n, "disabled")}
        for n, by, role in rows
    ]


def project_view(ledger: Ledger, config: Config, actor: Actor, name: str) -> dict[str, Any]:
    with ledger.read() as db:
        row, role = authorize(db, actor, name, Action.VIEW)
        members = db.execute(
            "SELECT m.platform_user_id, m.role, b.username FROM members m LEFT JOIN bindings b "
            "ON b.platform_user_id = m.platform_user_id WHERE m.project_id = ? "
            "ORDER BY CASE m.role WHEN 'owner' THEN 0 WHEN 'manager' THEN 1 "
            "WHEN 'editor' THEN 2 ELSE 3 END, m.platform_user_id",
            [row["id"]],
        ).fetchall()
        containers = list(db.table("containers").rows_where("project_id = ?", [row["id"]]))
        runtime_user = runtime_identity(db, config, row)
        snapshots = kept_rows(db, containers[0]) if containers else []
        project_labels = labels_of(db, row["id"])
    settings = Settings.from_row(row)
    container = containers[0] if containers else None
    return {
        "name": row["name"],
        "created_at": row["created_at"],
        "created_by": row["created_by"],
        "role": role.value if role else None,
        "settings": settings.to_dict(),
        "effective": effective(settings, config.defaults).to_dict(),
        "run_as": row["run_as"],
        "run_as_user": row["run_as_user"],
        "runtime_user": runtime_user,
        "dev_mode": bool(row["dev_mode"]),
        "labels": project_labels,
        "workspace": row["workspace"],
        "members": [{"user": u, "role": r, "linux_user": lu} for u, r, lu in members],
        "container": None
        if container is None
        else {"name": container["name"], "state": container["state"]},
        "settings_pending": settings_pending(row, container),
        # The overlay snapshot batch steps get; None: the bare image.
        "snapshot": None
        if not snapshots
        else {k: snapshots[0][k] for k in ("id", "path", "taken_at", "size_bytes")},
    }


def settings_pending(project: dict[str, Any], container: dict[str, Any] | None) -> bool:
    """Whether saved settings differ from what the running container was started with."""
    active = ("starting", "running", "waiting_for_resources")
    if container is None or container["state"] not in active:
        return False
    return differs_from_snapshot(Settings.from_row(project), from_json(container["settings"]))


def runtime_identity(db: LedgerDatabase, config: Config, project: dict[str, Any]) -> str | None:
    """The Linux user project work runs as, or None if that identity is not bound (yet)."""
    if project["run_as"] == "service":
        return config.runtime.service_account or None
    binding = (
        binding_of_platform_user(db, project["run_as_user"]) if project["run_as_user"] else None
    )
    return binding.username if binding else None


def no_run_as_message(name: str) -> str:
    return (
        f"project {name} has no run-as identity (the user it ran as is no longer an owner); "
        f"an owner chooses one with `rxctl project run-as --project {name} bound`"
    )


def require_runtime_identity(db: LedgerDatabase, config: Config, project: dict[str, Any]) -> str:
    """The Linux user project work runs as now, or a 409 saying what a current owner must do."""
    user = runtime_identity(db, config, project)
    if user is not None:
        return user
    name = project["name"]
    if project["run_as"] == "bound" and project["run_as_user"] is None:
        raise Conflict(no_run_as_message(name), code="no_run_as")
    raise Conflict(f"the identity project {name} runs as is not bound; bind it first")


# Called with the Slurm job of a container stopped by a membership change, after commit.
CancelJob = Callable[[int], None]


def _release(
    db: LedgerDatabase,
    actor: Actor,
    row: dict[str, Any],
    why: str,
    *,
    clear: bool,
    jobs: list[int],
) -> None:
    project = RunAsProject.from_row(row)
    job = release_run_as(
        db, project, why, clear=clear, actor=actor.name, actor_uid=actor.uid, origin=actor.origin
    )
    if job is not None:
        jobs.append(job)


def _cancel_all(cancel: CancelJob | None, jobs: list[int]) -> None:
    if cancel is None:
        return  # the reconciler cancels a stopping container's job after its grace period
    for job in jobs:
        cancel(job)


def delete_project(ledger: Ledger, actor: Actor, name: str) -> str:
    """Delete the project's records; returns its workspace path (the caller retires folders)."""
    with ledger.transaction() as db:
        row, _ = authorize(db, actor, name, Action.DELETE_PROJECT)
        containers = list(db.table("containers").rows_where("project_id = ?", [row["id"]]))
        if containers and containers[0]["state"] != "disabled":
            raise Conflict(f"project {name} has an enabled container; disable it first")
        building = db.execute(
            "SELECT count(*) FROM image_builds WHERE project_id = ? AND state IN (?, ?)",
            [row["id"], "queued", "building"],
        ).fetchone()[0]
        if building:
            raise Conflict(
                f"project {name} has {building} image build(s) running; cancel them first "
                f"(rxctl image list --project {name})"
            )
        owned = [
            r[0] for r in db.execute("SELECT name FROM volumes WHERE project_id = ?", [row["id"]])
        ]
        if owned:
            raise Conflict(
                f"project {name} owns volume(s) {', '.join(owned)}; remove them first "
                f"(rxctl volume rm --project {name} NAME)"
            )
        db.execute("DELETE FROM volume_mounts WHERE project_id = ?", [row["id"]])
        once = db.execute(
            "SELECT count(*) FROM one_shot_jobs WHERE project_id = ? AND state IN (?, ?)",
            [row["id"], "queued", "running"],
        ).fetchone()[0]
        if once:
            raise Conflict(f"project {name} has {once} one-shot command(s) running; let them end")
        db.execute("DELETE FROM one_shot_jobs WHERE project_id = ?", [row["id"]])
        for c in containers:
            db.execute("DELETE FROM jobs WHERE container_id = ?", [c["id"]])
            db.execute("DELETE FROM exec_sessions WHERE container_id = ?", [c["id"]])
            db.table("containers").delete(c["id"])
        db.table("projects").delete(row["id"])
        _event(db, actor, "project.deleted", name)
    return str(row["workspace"])


def update_settings(
    ledger: Ledger,
    config: Config,
    actor: Actor,
    name: str,
    changes: Any,
    validate: Callable[[Settings], None] | None = None,
) -> dict[str, Any]:
    with ledger.read() as db:
        row, _ = authorize(db, actor, name, Action.EDIT_SETTINGS)
    new = apply_changes(Settings.from_row(row), changes)
    check_static(new)
    if validate:  # may ask Slurm: outside the write transaction
        validate(effective(new, config.defaults))
    with ledger.transaction() as db:
        row, _ = authorize(db, actor, name, Action.EDIT_SETTINGS)
        old = Settings.from_row(row)
        # Apply to what is stored now, so a concurrent edit of another field is kept.
        final = apply_changes(old, changes)
        db.table("projects").update(
            row["id"], {**final.to_dict(), "settings_changed_at": to_timestamp(utcnow())}
        )
        diff = {k: [getattr(old, k), v] for k, v in final.to_dict().items() if getattr(old, k) != v}
        _event(db, actor, "project.settings-changed", name, {"changes": diff})
    return project_view(ledger, config, actor, name)


def set_run_as(
    ledger: Ledger,
    config: Config,
    actor: Actor,
    name: str,
    mode: Any,
    cancel: CancelJob | None = None,
) -> dict[str, Any]:
    if mode not in ("bound", "service"):
        raise BadRequest('mode must be "bound" or "service"')
    jobs: list[int] = []
    with ledger.transaction() as db:
        row, _ = authorize(db, actor, name, Action.SET_RUN_AS)
        if mode == "service":
            if not config.runtime.service_account:
                raise Conflict(
                    "this deployment has no service account; projects run as a bound identity"
                )
            update = {"run_as": "service", "run_as_user": None}
        else:
            if not config.runtime.allow_run_as_bound:
                raise Forbidden("this deployment does not allow running as a bound identity")
            owner = require_bound(actor, config)
            if binding_of_platform_user(db, owner) is None:
                raise Forbidden(
                    "you have no bound Linux identity; run `rxctl bind CODE` first",
                    code="not_bound",
                )
            update = {"run_as": "bound", "run_as_user": owner}
        db.table("projects").update(row["id"], update)
        _event(db, actor, "project.run-as-changed", name, {"from": row["run_as"], **update})
        # A container still running as the former identity stops; it starts as the new one.
        now = runtime_identity(db, config, {**row, **update})
        if db.table("containers").count_where(
            "project_id = ? AND state != 'disabled' AND runtime_user IS NOT ?", [row["id"], now]
        ):
            _release(db, actor, row, "the run-as identity changed", clear=False, jobs=jobs)
    _cancel_all(cancel, jobs)
    return project_view(ledger, config, actor, name)


def _member_target(db: LedgerDatabase, config: Config, user: Any) -> str:
    user_id = check_platform_user_id(user)
    if db.table("platform_users").count_where("id = ?", [user_id]):
        return user_id
    if config.identity.mode == "local":
        # Standalone: a member is a Linux user; they are bound on their first call.
        linux_account_by_name(user_id, config.identity.min_uid)
        ensure_platform_user(db, user_id)
        return user_id
    raise NotFound(f"no platform user {user_id!r}")


def _member(db: LedgerDatabase, actor: Actor, name: str, user: str) -> tuple[dict[str, Any], Role]:
    """The project, if the actor may manage its members, and the role `user` holds in it."""
    row, _ = authorize(db, actor, name, Action.MANAGE_MEMBERS)
    role = role_in(db, row["id"], user)
    if role is None:
        raise NotFound(f"{user} is not a member of {name}")
    return row, role


def _owner_count(db: LedgerDatabase, project_id: int) -> int:
    return db.table("members").count_where("project_id = ? AND role = 'owner'", [project_id])


def add_member(
    ledger: Ledger, config: Config, actor: Actor, name: str, user: Any, role: Any
) -> dict[str, Any]:
    new_role = _role(role)
    with ledger.transaction() as db:
        row, _ = authorize(db, actor, name, Action.MANAGE_MEMBERS)
        target = _member_target(db, config, user)
        if role_in(db, row["id"], target) is not None:
            raise Conflict(f"{target} is already a member of {name}; use set-role")
        db.table("members").insert(
            {
                "project_id": row["id"],
                "platform_user_id": target,
                "role": new_role.value,
                "added_at": to_timestamp(utcnow()),
                "added_by": actor.name,
            }
        )
        _event(db, actor, "project.member-added", name, {"user": target, "role": new_role.value})
    return project_view(ledger, config, actor, name)


def set_member_role(
    ledger: Ledger,
    config: Config,
    actor: Actor,
    name: str,
    user: str,
    role: Any,
    cancel: CancelJob | None = None,
) -> dict[str, Any]:
    new_role = _role(role)
    jobs: list[int] = []
    with ledger.transaction() as db:
        row, old = _member(db, actor, name, user)
        if old is Role.OWNER and new_role is not Role.OWNER and _owner_count(db, row["id"]) == 1:
            raise Conflict(f"{user} is the last owner of {name}; make someone else owner first")
        db.execute(
            "UPDATE members SET role = ? WHERE project_id = ? AND platform_user_id = ?",
            [new_role.value, row["id"], user],
        )
        _event(
            db,
            actor,
            "project.member-role-changed",
            name,
            {"user": user, "from": old.value, "to": new_role.value},
        )
        if new_role is not Role.OWNER and _runs_as(row, user):
            _release(db, actor, row, f"{user} is no longer an owner", clear=True, jobs=jobs)
    _cancel_all(cancel, jobs)
    return project_view(ledger, config, actor, name)


def remove_member(
    ledger: Ledger,
    config: Config,
    actor: Actor,
    name: str,
    user: str,
    cancel: CancelJob | None = None,
) -> dict[str, Any]:
    jobs: list[int] = []
    with ledger.transaction() as db:
        row, old = _member(db, actor, name, user)
        if old is Role.OWNER and _owner_count(db, row["id"]) == 1:
            raise Conflict(f"{user} is the last owner of {name}; a project needs an owner")
        db.execute(
            "DELETE FROM members WHERE project_id = ? AND platform_user_id = ?", [row["id"], user]
        )
        _event(db, actor, "project.member-removed", name, {"user": user, "role": old.value})
        if _runs_as(row, user):
            _release(db, actor, row, f"{user} is no longer a member", clear=True, jobs=jobs)
    _cancel_all(cancel, jobs)
    return project_view(ledger, config, actor, name)


def _runs_as(project: dict[str, Any], platform_user: str) -> bool:
    return bool(project["run_as"] == "bound" and project["run_as_user"] == platform_user)


def _role(value: Any) -> Role:
    if not isinstance(value, str):
        raise BadRequest("role must be a string")
    try:
        return parse_role(value)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
