"""Partition quotas and the leases that count against them.

A container holds a lease for what it asked for while it starts or runs; an image build (its own
Slurm job) holds one in ``build_leases`` while it is queued or builds, and a one-shot command
(`rxctl run-once`) one in ``one_shot_leases`` while it is queued or runs, counted the same way.
Taking a lease checks every quota that applies (the deployment's, its project's, its Linux user's,
on its partition) inside the caller's BEGIN IMMEDIATE transaction: concurrent wakes are serialised
there, so the sum of leases never exceeds a quota. Leases go when the container rests (stopped,
error, disabled), or when the build ends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from rxslurm.daemon.errors import BadRequest, NotFound
from rxslurm.daemon.ledger.store import LedgerDatabase, LedgerError
from rxslurm.daemon.ledger.timestamps import to_timestamp, utcnow
from rxslurm.daemon.projects.names import check_project_name
from rxslurm.daemon.text_checks import check_text

SCOPES = ("deployment", "project", "user")
# A Linux user name as passwd holds it: no separator of its own (:), no path, no space; bounded.
# (Names from a directory service, "alice@example.org", are names too.)
LINUX_USER = re.compile(r"[^\s:/]{1,64}")
# Resource column, lease column, how people read it.
RESOURCES = (
    ("max_gpus", "gpus", "GPUs"),
    ("max_cpus", "cpus", "CPUs"),
    ("max_mem_mb", "mem_mb", "MB of memory"),
)


@dataclass(frozen=True)
class Request:
    """What a container asks for on a partition, and whom it counts against."""

    partition: str
    project: str
    linux_user: str
    gpus: int
    cpus: int
    mem_mb: int


def _applicable(db: LedgerDatabase, req: Request) -> list[dict[str, Any]]:
    """The quotas on the request's partition for the deployment, its project and its user."""
    return list(
        db.table("quotas").rows_where(
            "partition = ? AND (scope = 'deployment' OR (scope = 'project' AND subject = ?) "
            "OR (scope = 'user' AND subject = ?))",
            [req.partition, req.project, req.linux_user],
            order_by="id",
        )
    )


def _holders(
    db: LedgerDatabase, quota: dict[str, Any], exclude: int | None
) -> list[dict[str, Any]]:
    where, args = "partition = ?", [quota["partition"]]
    if quota["scope"] == "project":
        where, args = where + " AND project = ?", [*args, quota["subject"]]
    elif quota["scope"] == "user":
        where, args = where + " AND linux_user = ?", [*args, quota["subject"]]
    builds = list(db.table("build_leases").rows_where(where, args, order_by="acquired_at"))
    builds += list(db.table("one_shot_leases").rows_where(where, args, order_by="acquired_at"))
    if exclude is not None:
        where, args = where + " AND container_id != ?", [*args, exclude]
    return list(db.table("leases").rows_where(where, args, order_by="acquired_at")) + builds


def _scope_words(quota: dict[str, Any]) -> str:
    if quota["scope"] == "deployment":
        return "deployment quota"
    return f"{quota['scope']} {quota['subject']}'s quota"


def blocking(
    db: LedgerDatabase, req: Request, exclude: int | None = None, asker: str = "this container"
) -> tuple[dict[str, Any], str] | None:
    """The first quota `req` does not fit, with why in words (`asker` is what asks: "this
    container", "this build"); None when it fits them all."""
    for quota in _applicable(db, req):
        holders = _holders(db, quota, exclude)
        if quota["max_containers"] and len(holders) + 1 > quota["max_containers"]:
            names = ", ".join(h["project"] for h in holders)
            return quota, (
                f"partition {req.partition}: {_scope_words(quota)} {quota['max_containers']} "
                f"running containers, {len(holders)} in use by {names}"
            )
        for limit_col, lease_col, words in RESOURCES:
            limit = quota[limit_col]
            asked = getattr(req, lease_col)
            if not limit or not asked:
                continue
            used = sum(h[lease_col] for h in holders)
            if used + asked <= limit:
                continue
            by_project: dict[str, int] = {}
            for h in holders:
                by_project[h["project"]] = by_project.get(h["project"], 0) + h[lease_col]
            who = ", ".join(f"{p} ({n})" for p, n in by_project.items() if n) or "nobody"
            return quota, (
                f"partition {req.partition}: {_scope_words(quota)} {limit} {words}, "
                f"{used} in use by {who}; {asker} needs {asked}"
            )
    return None


def bottleneck(
    db: LedgerDatabase, req: Request, exclude: int | None = None, asker: str = "this container"
) -> str | None:
    """Why `req` does not fit, in words; None when it fits every quota that applies."""
    found = blocking(db, req, exclude, asker)
    return found[1] if found else None


def hold_back(db: LedgerDatabase, held: dict[int, list[str]], req: Request) -> str | None:
    """First come, first served: why `req` waits, given the requests queued before it.

    `held` maps quota ids to the projects queued for them so far (the caller keeps it while
    walking the queue in order; this adds `req` when it must wait). A request waits behind an
    earlier one on any quota they share, and when it does not fit itself; else None: it may go.
    """
    shared = [q for q in _applicable(db, req) if q["id"] in held]
    if shared:
        first = shared[0]
        why = (
            f"partition {req.partition}: queued behind {', '.join(held[first['id']])} "
            f"for the {_scope_words(first)}"
        )
        for quota in shared:
            held[quota["id"]].append(req.project)
        return why
    found = blocking(db, req)
    if found is None:
        return None
    held.setdefault(found[0]["id"], []).append(req.project)
    return found[1]


def hold_all(db: LedgerDatabase, held: dict[int, list[str]], req: Request) -> None:
    """A queued request that fits but has not started yet: later ones on its quotas wait."""
    for quota in _applicable(db, req):
        if req.project not in held.get(quota["id"], []):
            held.setdefault(quota["id"], []).append(req.project)


def _hold(db: LedgerDatabase, table: str, key: str, holder_id: int, req: Request) -> None:
    """One lease row: the same columns for a container, a build and a one-shot command, each in
    its own table keyed by its holder."""
    db.table(table).insert(
        {
            key: holder_id,
            "partition": req.partition,
            "project": req.project,
            "linux_user": req.linux_user,
            "gpus": req.gpus,
            "cpus": req.cpus,
            "mem_mb": req.mem_mb,
            "acquired_at": to_timestamp(utcnow()),
        },
        replace=True,
    )


def acquire(db: LedgerDatabase, container_id: int, req: Request) -> None:
    _hold(db, "leases", "container_id", container_id, req)


def release(db: LedgerDatabase, container_id: int) -> None:
    db.execute("DELETE FROM leases WHERE container_id = ?", [container_id])


def acquire_for_build(db: LedgerDatabase, build_id: int, req: Request) -> None:
    _hold(db, "build_leases", "build_id", build_id, req)


def release_for_build(db: LedgerDatabase, build_id: int) -> None:
    db.execute("DELETE FROM build_leases WHERE build_id = ?", [build_id])


def acquire_for_one_shot(db: LedgerDatabase, one_shot_id: int, req: Request) -> None:
    _hold(db, "one_shot_leases", "one_shot_id", one_shot_id, req)


def release_for_one_shot(db: LedgerDatabase, one_shot_id: int) -> None:
    db.execute("DELETE FROM one_shot_leases WHERE one_shot_id = ?", [one_shot_id])


# -- admin -------------------------------------------------------------------------------------


def parse_quota(body: dict[str, Any], partitions: set[str]) -> dict[str, Any]:
    partition = body.get("partition")
    if not isinstance(partition, str) or partition not in partitions:
        valid = ", ".join(sorted(partitions)) or "none"
        raise BadRequest(f"unknown partition {partition!r}; Slurm has: {valid}")
    scope = body.get("scope", "deployment")
    if scope not in SCOPES:
        raise BadRequest(f"scope must be one of {', '.join(SCOPES)}")
    subject = body.get("subject", "")
    if scope == "deployment":
        if subject:
            raise BadRequest("a deployment quota has no subject")
    else:
        subject = check_subject(scope, subject)
    values: dict[str, Any] = {"partition": partition, "scope": scope, "subject": subject}
    for key in ("max_gpus", "max_cpus", "max_mem_mb", "max_containers"):
        value = body.get(key, 0)
        if value is None:
            value = 0
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadRequest(f"{key} must be a whole number >= 0 (0: no limit)")
        values[key] = value
    mirror = body.get("mirror_qos", False)
    if not isinstance(mirror, bool):
        raise BadRequest("mirror_qos must be true or false")
    values["mirror_qos"] = int(mirror)
    if not any(values[k] for k in ("max_gpus", "max_cpus", "max_mem_mb", "max_containers")):
        raise BadRequest("a quota needs at least one limit (gpus, cpus, mem_mb or containers)")
    return values


def check_subject(scope: str, subject: Any) -> str:
    """A project's or a Linux user's name, matched in full: it is stored, shown to admins and,
    for a mirrored user quota, handed to sacctmgr."""
    needs = f"a {scope} quota needs the {scope}'s name as subject"
    if not isinstance(subject, str) or not subject:
        raise BadRequest(needs)
    try:
        check_text("subject", subject, 256)
        if scope == "project":
            check_project_name(subject)
        elif not LINUX_USER.fullmatch(subject):
            raise BadRequest("a Linux user name has 1-64 characters, no spaces, ':' or '/'")
    except BadRequest as exc:
        raise BadRequest(f"{needs}: {exc.message}") from None
    return subject


def set_quota(db: LedgerDatabase, values: dict[str, Any], actor: str) -> dict[str, Any]:
    existing = list(
        db.table("quotas").rows_where(
            "partition = ? AND scope = ? AND subject = ?",
            [values["partition"], values["scope"], values["subject"]],
        )
    )
    if existing:
        db.table("quotas").update(existing[0]["id"], values)
        return db.table("quotas").get(existing[0]["id"])
    new_id = (
        db.table("quotas")
        .insert({**values, "created_at": to_timestamp(utcnow()), "created_by": actor})
        .last_pk
    )
    if not isinstance(new_id, int):  # an INTEGER PRIMARY KEY always gets one
        raise LedgerError("the new quota got no id")
    return db.table("quotas").get(new_id)


def remove_quota(db: LedgerDatabase, quota_id: int) -> dict[str, Any]:
    rows = list(db.table("quotas").rows_where("id = ?", [quota_id]))
    if not rows:
        raise NotFound(f"no quota with id {quota_id}")
    db.table("quotas").delete(quota_id)
    return rows[0]


def quota_view(db: LedgerDatabase, quota: dict[str, Any]) -> dict[str, Any]:
    holders = _holders(db, quota, None)
    return {
        **quota,
        "mirror_qos": bool(quota["mirror_qos"]),
        "in_use": {
            "gpus": sum(h["gpus"] for h in holders),
            "cpus": sum(h["cpus"] for h in holders),
            "mem_mb": sum(h["mem_mb"] for h in holders),
            "containers": len(holders),
        },
        "holders": [h["project"] for h in holders],
    }
