"""Ledger rows as small frozen records, and the one timestamp format the ledger uses.

Timestamps are stored as ISO-8601 UTC text with microseconds and a "Z", e.g.
"2024-05-01T12:34:56.123456Z": fixed width, so text order is time order and an index on it
serves range queries; readable in `sqlite3`; understood by SQLite's own date functions. Records
carry timezone-aware `datetime`s; a naive one is refused rather than guessed at.

JSON columns (`containers.settings`, `events.detail`) are dicts in the records and compact,
key-sorted JSON text in the rows.
"""

from __future__ import annotations

import functools
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

# The values the schema's CHECK constraints allow; strongest role first.
ROLES = ("owner", "manager", "editor", "viewer")
RUN_AS = ("bound", "service")


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_timestamp(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: the ledger stores UTC, give a timezone")
    return value.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def from_timestamp(text: str) -> datetime:
    return datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=UTC)


def to_json(value: Mapping[str, Any]) -> str:
    return json.dumps(dict(value), sort_keys=True, separators=(",", ":"))


def from_json(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {text[:80]!r}")
    return value


@functools.cache
def _conversions(cls: type) -> dict[str, str]:
    """Field name -> "timestamp" or "json", read from the record's type hints."""
    kinds = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = set(typing.get_args(hint)) if isinstance(hint, types.UnionType) else {hint}
        args.discard(type(None))
        if args == {datetime}:
            kinds[name] = "timestamp"
        elif len(args) == 1 and typing.get_origin(next(iter(args))) is dict:
            kinds[name] = "json"
    return kinds


class Record:
    """Base of the records: `from_row` and `to_row` convert timestamps and JSON by type hint."""

    table: ClassVar[str]

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        kinds = _conversions(cls)
        values = {}
        for f in fields(cls):  # type: ignore[arg-type]
            value = row[f.name]
            kind = kinds.get(f.name)
            if kind == "timestamp" and value is not None:
                value = from_timestamp(value)
            elif kind == "json":
                value = from_json(value)
            values[f.name] = value
        return cls(**values)

    def to_row(self) -> dict[str, Any]:
        kinds = _conversions(type(self))
        row = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            kind = kinds.get(f.name)
            if kind == "timestamp" and value is not None:
                value = to_timestamp(value)
            elif kind == "json":
                value = to_json(value)
            row[f.name] = value
        return row


@dataclass(frozen=True, kw_only=True)
class PlatformUser(Record):
    table: ClassVar[str] = "platform_users"
    id: str
    display_name: str = ""
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class Binding(Record):
    """The one Linux identity of a platform user (and the one platform user of a uid)."""

    table: ClassVar[str] = "bindings"
    platform_user_id: str
    uid: int
    username: str
    bound_at: datetime
    bound_by: str


@dataclass(frozen=True, kw_only=True)
class BindingCode(Record):
    table: ClassVar[str] = "binding_codes"
    code_hash: str
    platform_user_id: str
    created_at: datetime
    created_by: str
    expires_at: datetime
    used_at: datetime | None = None
    used_by_uid: int | None = None
    for_uid: int | None = None


@dataclass(frozen=True, kw_only=True)
class Project(Record):
    """A project's settings; 0 or "" means "the deployment's default"."""

    table: ClassVar[str] = "projects"
    id: int | None = None  # None: let SQLite choose on insert
    name: str
    created_at: datetime
    created_by: str
    image: str = ""
    cpus: int = 0
    mem_mb: int = 0
    gpus: int = 0
    gpu_type: str = ""
    gpu_driver: str = ""
    gpu_mem_gb: int = 0
    partition: str = ""
    time_limit_min: int = 0
    idle_timeout_min: int = 0
    run_as: str = "bound"
    workspace: str = ""
    settings_changed_at: datetime | None = None
    run_as_user: str | None = None


@dataclass(frozen=True, kw_only=True)
class Member(Record):
    table: ClassVar[str] = "members"
    project_id: int
    platform_user_id: str
    role: str
    added_at: datetime
    added_by: str


@dataclass(frozen=True, kw_only=True)
class Container(Record):
    """A project's container; `generation` grows on every state change (for conditional updates)."""

    table: ClassVar[str] = "containers"
    id: int | None = None
    project_id: int
    name: str
    state: str
    reason: str | None = None
    desired: str | None = None
    image: str | None = None
    overlay_path: str | None = None
    runtime_user: str | None = None
    runtime_uid: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    last_error: str | None = None
    last_activity_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    generation: int = 0
    job_id: int | None = None
    node: str | None = None
    instance: str | None = None
    started_at: datetime | None = None
    state_dir: str | None = None
    queued_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class Job(Record):
    table: ClassVar[str] = "jobs"
    job_id: int
    container_id: int
    state: str
    reason: str | None = None
    node: str | None = None
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    exit_code: str | None = None
    last_seen_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class Event(Record):
    table: ClassVar[str] = "events"
    id: int | None = None
    at: datetime
    actor: str  # a platform user id, or "rxd"
    actor_uid: int | None = None
    origin: str  # "socket", "tcp", "reconciler", "hook", "cli-admin", ...
    action: str
    target_type: str | None = None
    target_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
