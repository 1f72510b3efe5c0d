"""Binding platform users to Linux identities, with proof.

The proof of a Linux identity is the kernel's word (SO_PEERCRED) at the moment a one-time code is
redeemed; a request never names the uid it binds. Root, system accounts, nologin accounts and names
whose passwd round trip differs are never bound.
"""

from __future__ import annotations

import hashlib
import math
import pwd
import secrets
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from rxslurm.daemon.config import Config
from rxslurm.daemon.errors import ApiError, BadRequest, Conflict, Forbidden, NotFound
from rxslurm.daemon.identity.actors import Actor, record_actor_event
from rxslurm.daemon.identity.linux_accounts import NotBindable, linux_account, linux_account_by_name
from rxslurm.daemon.identity.run_as_guard import projects_run_as, release_run_as
from rxslurm.daemon.ledger.audit import record_event
from rxslurm.daemon.ledger.records import Binding
from rxslurm.daemon.ledger.store import Ledger, LedgerDatabase
from rxslurm.daemon.ledger.timestamps import from_timestamp, to_timestamp, utcnow
from rxslurm.daemon.text_checks import check_text

# No 0/O or 1/I/L: codes are read off one screen and typed on another.
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_GROUPS = 3
CODE_GROUP_LEN = 4
PLATFORM_USER_MAX = 128
DISPLAY_NAME_MAX = 256  # UTF-8 bytes
LINUX_USER_MAX = 64  # longer than any name useradd makes
CODE_MAX = 64  # a code is 14 characters; room for spaces people type
# Failed binds per uid: this many within the window, then refused unchecked (and not audited).
BIND_FAILURES_ALLOWED = 5
BIND_FAILURE_WINDOW_S = 600.0


class TooManyAttempts(ApiError):
    status = 429
    code = "too_many_attempts"


def check_platform_user_id(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest("platform_user must be a non-empty string")
    return check_text("platform_user", value, PLATFORM_USER_MAX)


def check_display_name(value: Any) -> str:
    return check_text("display_name", value, DISPLAY_NAME_MAX)


def check_linux_user(value: Any) -> str:
    """A Linux user name as a request gives it (whether it exists is asked of passwd later)."""
    if not isinstance(value, str) or not value:
        raise BadRequest("linux_user must be a Linux user name")
    return check_text("linux_user", value, LINUX_USER_MAX)


def unbound_refusal(actor: Actor, min_uid: int) -> Forbidden:
    """Why an actor with no platform identity is refused, with what (if anything) would help."""
    if actor.uid == 0:
        return Forbidden("root has no platform identity; run rxctl as your own user")
    if actor.uid is not None and actor.origin == "socket":
        try:
            linux_account(actor.uid, min_uid)
        except NotBindable as exc:
            # Binding cannot work for this account: say why instead of asking for a code.
            return NotBindable(f"{exc.message}, so it cannot use rx-slurm projects")
    return Forbidden(
        "you have no bound platform identity; run `rxctl bind CODE` first", code="not_bound"
    )


def new_code() -> str:
    raw = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_GROUPS * CODE_GROUP_LEN))
    return "-".join(raw[i : i + CODE_GROUP_LEN] for i in range(0, len(raw), CODE_GROUP_LEN))


def code_hash(code: str) -> str:
    normal = code.replace("-", "").replace(" ", "").upper()
    return hashlib.sha256(normal.encode()).hexdigest()


# -- ledger operations (each call is one transaction) ---------------------------------------


def ensure_platform_user(db: LedgerDatabase, user_id: str, display_name: str = "") -> bool:
    """Create the platform user if missing; True if it was created."""
    check_display_name(display_name)
    if db.table("platform_users").count_where("id = ?", [user_id]):
        return False
    db.table("platform_users").insert(
        {"id": user_id, "display_name": display_name, "created_at": to_timestamp(utcnow())}
    )
    return True


def _binding_where(db: LedgerDatabase, where: str, value: str | int) -> Binding | None:
    rows = list(db.table(Binding.table).rows_where(where, [value]))
    return Binding.from_row(rows[0]) if rows else None


def binding_of_uid(db: LedgerDatabase, uid: int) -> Binding | None:
    return _binding_where(db, "uid = ?", uid)


def binding_of_platform_user(db: LedgerDatabase, user_id: str) -> Binding | None:
    return _binding_where(db, "platform_user_id = ?", user_id)


def _insert_binding(
    db: LedgerDatabase, user_id: str, entry: pwd.struct_passwd, bound_by: str
) -> Binding:
    existing = binding_of_uid(db, entry.pw_uid)
    if existing and existing.platform_user_id != user_id:
        raise Conflict(f"Linux user {entry.pw_name} is already bound to another platform user")
    if existing:
        raise Conflict(f"Linux user {entry.pw_name} is already bound to {user_id}")
    other = binding_of_platform_user(db, user_id)
    if other:
        raise Conflict(
            f"platform user {user_id} is already bound to Linux user {other.username}; unbind first"
        )
    binding = Binding(
        platform_user_id=user_id,
        uid=entry.pw_uid,
        username=entry.pw_name,
        bound_at=utcnow(),
        bound_by=bound_by,
    )
    db.table(Binding.table).insert(binding.to_row())
    return binding


def issue_code(
    ledger: Ledger,
    config: Config,
    actor: Actor,
    *,
    platform_user: Any,
    display_name: str = "",
    linux_user: str | None = None,
    ttl_min: int | None = None,
) -> dict[str, Any]:
    user_id = check_platform_user_id(platform_user)
    check_display_name(display_name)
    ttl = config.identity.code_ttl_min if ttl_min is None else ttl_min
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= 24 * 60:
        raise BadRequest("ttl_min must be a whole number of minutes from 1 to 1440")
    if linux_user is not None:
        linux_account_by_name(check_linux_user(linux_user), config.identity.min_uid)
    code = new_code()
    now = utcnow()
    expires = now + timedelta(minutes=ttl)
    with ledger.transaction() as db:
        ensure_platform_user(db, user_id, display_name)
        db.table("binding_codes").insert(
            {
                "code_hash": code_hash(code),
                "platform_user_id": user_id,
                "created_at": to_timestamp(now),
                "created_by": actor.name,
                "expires_at": to_timestamp(expires),
                # A code meant for one Linux user can be redeemed by that user only.
                "for_uid": pwd.getpwnam(linux_user).pw_uid if linux_user else None,
            }
        )
        record_actor_event(
            db,
            actor,
            "identity.code-issued",
            "platform_user",
            user_id,
            {"linux_user": linux_user, "ttl_min": ttl},
        )
    return {
        "code": code,
        "platform_user": user_id,
        "linux_user": linux_user,
        "expires_at": to_timestamp(expires),
    }


class BindThrottle:
    """Failed binds per uid in a sliding window: past the allowance, a uid is refused unchecked.

    Guessing a code is hopeless (about 59 bits), but each failure also costs an audit row; this
    keeps both the guessing and the rows bounded. In memory: a restart forgives, which is fine.
    """

    def __init__(
        self,
        allowed: int = BIND_FAILURES_ALLOWED,
        window_s: float = BIND_FAILURE_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.allowed = allowed
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[int, list[float]] = {}

    def _recent(self, uid: int, now: float) -> list[float]:
        recent = [t for t in self._failures.get(uid, []) if now - t < self.window_s]
        if recent:
            self._failures[uid] = recent
        else:
            self._failures.pop(uid, None)
        return recent

    def wait_s(self, uid: int) -> float:
        """Seconds until `uid` may try again (0: now)."""
        now = self._clock()
        with self._lock:
            recent = self._recent(uid, now)
            if len(recent) < self.allowed:
                return 0.0
            return max(0.0, recent[-self.allowed] + self.window_s - now)

    def failed(self, uid: int) -> None:
        now = self._clock()
        with self._lock:
            # At most `allowed` timestamps per uid are kept: memory is bounded per uid.
            self._failures[uid] = [*self._recent(uid, now), now][-self.allowed :]


BIND_THROTTLE = BindThrottle()


def redeem_code(
    ledger: Ledger,
    config: Config,
    *,
    code: Any,
    uid: int,
    origin: str,
    now: datetime | None = None,
    throttle: BindThrottle = BIND_THROTTLE,
) -> dict[str, Any]:
    """Bind the platform user a code was issued for to the Linux uid the kernel reported."""
    if not isinstance(code, str) or not code.strip():
        raise BadRequest("code must be a non-empty string")
    check_text("code", code, CODE_MAX)
    entry = linux_account(uid, config.identity.min_uid)
    wait = throttle.wait_s(uid)
    if wait:
        raise TooManyAttempts(
            f"too many failed binds for {entry.pw_name}; try again in {math.ceil(wait)} s"
        )
    now = now or utcnow()
    try:
        with ledger.transaction() as db:
            rows = list(db.table("binding_codes").rows_where("code_hash = ?", [code_hash(code)]))
            if not rows:
                raise Forbidden("unknown binding code")
            row = rows[0]
            if row["used_at"]:
                raise Forbidden("binding code already used")
            if from_timestamp(row["expires_at"]) <= now:
                raise Forbidden("binding code expired; ask for a new one")
            if row["for_uid"] is not None and row["for_uid"] != uid:
                raise Forbidden(
                    f"this binding code was issued for another Linux user, not {entry.pw_name}"
                )
            binding = _insert_binding(db, row["platform_user_id"], entry, bound_by=entry.pw_name)
            db.table("binding_codes").update(
                row["code_hash"], {"used_at": to_timestamp(now), "used_by_uid": uid}
            )
            record_event(
                db,
                actor=row["platform_user_id"],
                actor_uid=uid,
                origin=origin,
                action="identity.bound",
                target_type="platform_user",
                target_id=row["platform_user_id"],
                detail={"uid": uid, "user": entry.pw_name, "by": "code"},
            )
    except ApiError as exc:
        throttle.failed(uid)
        _record_refusal(ledger, uid, entry.pw_name, origin, exc)
        raise
    return {"platform_user": binding.platform_user_id, "uid": uid, "user": entry.pw_name}


def _record_refusal(ledger: Ledger, uid: int, user: str, origin: str, exc: ApiError) -> None:
    """A refused bind changes no binding, but admins want to see the attempt.

    Only attempts within the throttle's allowance get here, so the rows per uid are bounded.
    """
    with ledger.transaction() as db:
        record_event(
            db,
            actor=user,
            actor_uid=uid,
            origin=origin,
            action="identity.bind-refused",
            target_type="linux_user",
            target_id=user,
            detail={"reason": exc.message},
        )


def admin_bind(
    ledger: Ledger, config: Config, actor: Actor, *, platform_user: Any, linux_user: Any
) -> dict[str, Any]:
    user_id = check_platform_user_id(platform_user)
    entry = linux_account_by_name(check_linux_user(linux_user), config.identity.min_uid)
    with ledger.transaction() as db:
        ensure_platform_user(db, user_id)
        binding = _insert_binding(db, user_id, entry, bound_by=actor.name)
        record_actor_event(
            db,
            actor,
            "identity.bound",
            "platform_user",
            user_id,
            {"uid": entry.pw_uid, "user": entry.pw_name, "by": "admin"},
        )
    return binding_view(binding)


def unbind(
    ledger: Ledger,
    actor: Actor,
    *,
    platform_user: str | None = None,
    uid: int | None = None,
    cancel: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Remove a binding. Projects that ran as it lose their run-as user and stop (`cancel`, if
    given, cancels their jobs after commit); "released" in the answer names them."""
    jobs: list[int] = []
    released: list[str] = []
    with ledger.transaction() as db:
        if platform_user is not None:
            binding = binding_of_platform_user(db, platform_user)
        else:
            binding = binding_of_uid(db, uid) if uid is not None else None
        if binding is None:
            raise NotFound("no such binding")
        db.table(Binding.table).delete(binding.platform_user_id)
        record_actor_event(
            db,
            actor,
            "identity.unbound",
            "platform_user",
            binding.platform_user_id,
            {"uid": binding.uid, "user": binding.username},
        )
        # The identity leaves with its person: no project goes on running as that Linux user,
        # nor as another account the platform user binds later.
        for project in projects_run_as(db, binding.platform_user_id):
            job = release_run_as(
                db,
                project,
                f"{binding.platform_user_id} was unbound",
                clear=True,
                actor=actor.name,
                actor_uid=actor.uid,
                origin=actor.origin,
            )
            released.append(project.name)
            jobs += [job] if job is not None else []
    if cancel is not None:
        for job in jobs:
            cancel(job)
    return {**binding_view(binding), "released": released}


def auto_bind_local(ledger: Ledger, config: Config, uid: int) -> str | None:
    """Standalone mode: a Linux user is their own platform user, bound on first use.

    Returns the platform user id, or None for accounts that are never bound (root, system).
    """
    try:
        entry = linux_account(uid, config.identity.min_uid)
    except NotBindable:
        return None
    binding = binding_of_uid(ledger.db, uid)
    if binding is not None:
        return binding.platform_user_id
    with ledger.transaction() as db:
        binding = binding_of_uid(db, uid)  # another request may have bound it meanwhile
        if binding is not None:
            return binding.platform_user_id
        ensure_platform_user(db, entry.pw_name)
        _insert_binding(db, entry.pw_name, entry, bound_by="rxd")
        record_event(
            db,
            actor="rxd",
            actor_uid=None,
            origin="socket",
            action="identity.bound",
            target_type="platform_user",
            target_id=entry.pw_name,
            detail={"uid": uid, "user": entry.pw_name, "by": "standalone"},
        )
    return entry.pw_name


def list_bindings(ledger: Ledger) -> list[dict[str, Any]]:
    rows = ledger.db.table(Binding.table).rows_where(order_by="platform_user_id")
    return [binding_view(Binding.from_row(row)) for row in rows]


def binding_view(binding: Binding) -> dict[str, Any]:
    """A binding as the API shows it."""
    return {
        "platform_user": binding.platform_user_id,
        "uid": binding.uid,
        "user": binding.username,
        "bound_at": to_timestamp(binding.bound_at),
        "bound_by": binding.bound_by,
    }


def actor_for_platform_user(ledger: Ledger, user: str) -> Actor:
    """Whom the research platform acts for when it names one of its users: that user, through
    their binding if they have one, never an admin."""
    user_id = check_platform_user_id(user)
    if not ledger.db.table("platform_users").count_where("id = ?", [user_id]):
        raise NotFound(f"no platform user {user_id!r}")
    binding = binding_of_platform_user(ledger.db, user_id)
    return Actor(
        platform_user=user_id,
        uid=binding.uid if binding else None,
        user=binding.username if binding else None,
        admin=False,
        origin="tcp",
    )


def create_platform_user(ledger: Ledger, actor: Actor, user_id: str, display: str) -> bool:
    """The platform user, created once (audited); False when it was there already."""
    with ledger.transaction() as db:
        created = ensure_platform_user(db, user_id, display)
        if created:
            record_event(
                db,
                actor=actor.name,
                actor_uid=None,
                origin="tcp",
                action="identity.platform-user-created",
                target_type="platform_user",
                target_id=user_id,
                detail={"display_name": display},
            )
    return created
