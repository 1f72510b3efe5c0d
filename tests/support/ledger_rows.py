"""Records of ledger tables that only tests write whole rows of (the product writes them
column by column); each mirrors its table, and tests/test_ledger.py round-trips every one."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from rxslurm.daemon.ledger.records import Record


@dataclass(frozen=True, kw_only=True)
class PlatformUser(Record):
    table: ClassVar[str] = "platform_users"
    id: str
    display_name: str = ""
    created_at: datetime


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
