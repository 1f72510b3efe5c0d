"""A project's environment variables (in the ledger) and secrets (in the secret store): who may
set and see them, their audit events (names only, never values), and the variables a command in
the container gets (docs/exec.md#environment-and-secrets).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from rxslurm.daemon.config import Config
from rxslurm.daemon.errors import ApiError, BadRequest, NotFound
from rxslurm.daemon.identity.actors import Actor, record_actor_event
from rxslurm.daemon.ledger.store import Ledger, LedgerDatabase
from rxslurm.daemon.ledger.timestamps import to_timestamp, utcnow
from rxslurm.daemon.projects.roles import Action
from rxslurm.daemon.projects.secret_store import (
    Secret,
    SecretStore,
    SecretStoreError,
    folder_for,
)
from rxslurm.daemon.projects.service import authorize
from rxslurm.protocol import env_vars

log = logging.getLogger("rxslurm.projects")


def secret_store(config: Config) -> SecretStore:
    return SecretStore(folder_for(config.daemon.ledger))


def _bad(exc: env_vars.BadVariable) -> BadRequest:
    return BadRequest(str(exc))


def _store_failed(exc: SecretStoreError) -> ApiError:
    # The message names a file and a problem, never a value.
    log.error("secret store unusable", extra={"error": str(exc)})
    return ApiError(f"rxd cannot use its secret store: {exc}", status=500)


def _env_rows(db: LedgerDatabase, project_id: int) -> list[dict[str, Any]]:
    return list(db.table("project_env").rows_where("project_id = ?", [project_id], order_by="name"))


def list_env(ledger: Ledger, actor: Actor, project: str) -> dict[str, Any]:
    with ledger.read() as db:
        row, _ = authorize(db, actor, project, Action.VIEW)
        rows = _env_rows(db, row["id"])
    variables = [{k: r[k] for k in ("name", "value", "set_by", "set_at")} for r in rows]
    return {"project": row["name"], "variables": variables}


def set_env(ledger: Ledger, actor: Actor, project: str, variables: Any) -> dict[str, Any]:
    try:
        checked = env_vars.check_variables(variables)
    except env_vars.BadVariable as exc:
        raise _bad(exc) from None
    if not checked:
        raise BadRequest("name at least one variable to set")
    now = to_timestamp(utcnow())
    with ledger.transaction() as db:
        row, _ = authorize(db, actor, project, Action.EDIT_ENV)
        after = {r["name"]: r["value"] for r in _env_rows(db, row["id"])} | checked
        try:
            env_vars.check_total(after, f"variables of project {row['name']}")
        except env_vars.BadVariable as exc:
            raise _bad(exc) from None
        db.table("project_env").upsert_all(
            [
                {
                    "project_id": row["id"],
                    "name": k,
                    "value": v,
                    "set_by": actor.name,
                    "set_at": now,
                }
                for k, v in checked.items()
            ],
            pk=("project_id", "name"),
        )
        record_actor_event(
            db, actor, "project.env-set", "project", row["name"], {"names": sorted(checked)}
        )
    return list_env(ledger, actor, project)


def unset_env(ledger: Ledger, actor: Actor, project: str, names: Any) -> dict[str, Any]:
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise BadRequest("names must be a non-empty list of variable names")
    with ledger.transaction() as db:
        row, _ = authorize(db, actor, project, Action.EDIT_ENV)
        known = {r["name"] for r in _env_rows(db, row["id"])}
        missing = sorted(set(names) - known)
        if missing:
            raise NotFound(f"project {row['name']} has no variable {missing[0]!r}")
        for name in set(names):
            db.execute(
                "DELETE FROM project_env WHERE project_id = ? AND name = ?", [row["id"], name]
            )
        record_actor_event(
            db, actor, "project.env-unset", "project", row["name"], {"names": sorted(set(names))}
        )
    return list_env(ledger, actor, project)


def list_secrets(ledger: Ledger, config: Config, actor: Actor, project: str) -> dict[str, Any]:
    with ledger.read() as db:
        row, _ = authorize(db, actor, project, Action.VIEW)
    try:
        stored = secret_store(config).read(row["id"], row["created_at"])
    except SecretStoreError as exc:
        raise _store_failed(exc) from None
    return {"project": row["name"], "secrets": [stored[n].listing() for n in sorted(stored)]}


def set_secret(
    ledger: Ledger, config: Config, actor: Actor, project: str, name: Any, value: Any
) -> dict[str, Any]:
    try:
        name = env_vars.check_name(name, "secret")
        value = env_vars.check_value(name, value, "secret")
    except env_vars.BadVariable as exc:
        raise _bad(exc) from None
    # The file is written inside the ledger transaction that audits it, after the authorization:
    # a refusal writes nothing, and a failed write records no event. (Only a commit failing after
    # the write would leave a stored secret without its event.)
    with ledger.transaction() as db:
        row, _ = authorize(db, actor, project, Action.EDIT_ENV)
        store = secret_store(config)
        try:
            current = store.read(row["id"], row["created_at"])
            after = {n: s.value for n, s in current.items()} | {name: value}
            env_vars.check_total(after, f"secrets of project {row['name']}")
            secret = Secret(name, value, actor.name, to_timestamp(utcnow()))
            store.update(row["id"], row["created_at"], {name: secret})
        except env_vars.BadVariable as exc:
            raise _bad(exc) from None
        except SecretStoreError as exc:
            raise _store_failed(exc) from None
        record_actor_event(db, actor, "project.secret-set", "project", row["name"], {"name": name})
    return {"project": row["name"], "secret": secret.listing()}


def remove_secret(
    ledger: Ledger, config: Config, actor: Actor, project: str, name: str
) -> dict[str, Any]:
    with ledger.transaction() as db:
        row, _ = authorize(db, actor, project, Action.EDIT_ENV)
        store = secret_store(config)
        try:
            if name not in store.read(row["id"], row["created_at"]):
                raise NotFound(f"project {row['name']} has no secret {name!r}")
            store.update(row["id"], row["created_at"], {name: None})
        except SecretStoreError as exc:
            raise _store_failed(exc) from None
        record_actor_event(
            db, actor, "project.secret-removed", "project", row["name"], {"name": name}
        )
    return list_secrets(ledger, config, actor, project)


def forget_secrets(config: Config, project_id: int, created_at: str) -> str | None:
    """After a project's deletion: its secrets file removed; a warning if that failed."""
    try:
        secret_store(config).forget(project_id, created_at)
    except (SecretStoreError, OSError) as exc:
        log.error("cannot remove a deleted project's secrets", extra={"error": str(exc)})
        return f"secrets not removed: {exc}"
    return None


def container_variables(
    db: LedgerDatabase, store: SecretStore, project: Mapping[str, Any]
) -> tuple[dict[str, str], bool]:
    """What every command in the project's container gets: its variables, then its secrets (a
    secret wins over a variable of the same name), and whether there are secrets among them.
    For an authorized caller only."""
    variables = project_variables(db, project)
    try:
        stored = store.read(project["id"], project["created_at"])
    except SecretStoreError as exc:
        raise _store_failed(exc) from None
    for name, secret in stored.items():
        variables[name] = secret.value
    return variables, bool(stored)


def project_variables(db: LedgerDatabase, project: Mapping[str, Any]) -> dict[str, str]:
    """The project's variables without its secrets (the holder's script, batch plans)."""
    return {r["name"]: r["value"] for r in _env_rows(db, project["id"])}


def with_exec_variables(
    variables: Mapping[str, str], per_exec: Mapping[str, str]
) -> dict[str, str]:
    """One exec's `-e KEY=VALUE` over the project's: the caller's own choice wins."""
    return {**variables, **per_exec}
