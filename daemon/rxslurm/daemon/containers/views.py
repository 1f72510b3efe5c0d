"""What the container service answers: typed, frozen records, turned into JSON at the API."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# How a running container's reason starts once its service ended, or while it waits to be
# restarted (the reconciler says so): nothing listens then.
SERVICE_EXITED = "the service exited"
SERVICE_FAILED = "the service failed"


@dataclass(frozen=True)
class ContainerView:
    """A project's container as its members see it (`rxctl status`)."""

    project: str
    role: str | None
    state: str
    reason: str | None
    name: str
    image: str | None
    job_id: int | None
    node: str | None
    gpus: int
    gres: str | None
    uptime_s: int | None
    runtime_user: str | None
    workspace: str | None
    fixed_mounts: tuple[str, ...]
    last_error: str | None
    settings_pending: bool
    desired: str | None
    over_quota: bool
    partition: str | None
    # sbatch's --account, --qos, --constraint, --reservation of the job (None: not given).
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    reservation: str | None = None
    # The overlay snapshot batch steps get ({id, path, taken_at, age_s, size_bytes}; None: the
    # bare image), and a request waiting for the container to sleep ({requested_at, requested_by}).
    snapshot: dict[str, Any] | None = None
    snapshot_request: dict[str, Any] | None = None
    # The project's labels (keep=true, free-form key=value).
    labels: dict[str, str] = field(default_factory=dict)
    # Slurm did not answer the last pass: the state is as last seen.
    state_unknown: bool = False
    # The ledger's id, for the daemon's own use (waiting on it); not shown.
    container_id: int | None = None
    # What the awake container's job uses now (`rxctl status` only; containers/usage.py).
    usage: dict[str, Any] | None = None
    # Where the awake container's service listens, "node:port" (None: no service, or asleep),
    # and how many times its job started the service again (its restart policy).
    service: str | None = None
    service_restarts: int = 0
    # Open sessions and detached commands, time left until idle sleep and the job's time limit
    # (`rxctl status` of an awake container only; containers/countdowns.py).
    countdowns: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["fixed_mounts"] = list(self.fixed_mounts)
        del data["container_id"]
        if not self.state_unknown:
            del data["state_unknown"]
        if self.usage is None:
            del data["usage"]
        if self.countdowns is None:
            del data["countdowns"]
        return data


@dataclass(frozen=True)
class Started:
    """start_or_queue took a lease and moved the container to STARTING: submit its job."""

    container_id: int


@dataclass(frozen=True)
class Queued:
    """start_or_queue left the container waiting for a quota (no job); ``why`` in words."""

    container_id: int
    why: str
