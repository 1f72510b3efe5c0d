"""Starting a container over, its owners only, audited.

`rxctl reset`: the container starts over with a new, empty overlay; the old one stays in its
folder as ``overlay.img.before-reset-<UTC time>`` until garbage collection removes it
(containers/gc.py). `rxctl start --fresh`: the container's instance state (Apptainer's records,
the home in its folder) goes and it starts again on the same overlay and workspace. An awake
container is stopped first (as `rxctl disable` stops it); one in error may be reset too.

The new overlay is made as the runtime user under a temporary name, then swapped in under the
overlay's locks (runtime/overlay_reset.py): a job or an instance that holds the overlay makes the
reset fail with nothing changed, and a start asked meanwhile waits for the lock. The old overlay's
snapshots go too, or batch steps would get the software the reset removed.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rxslurm.daemon.errors import Conflict, Unavailable
from rxslurm.daemon.identity.actors import Actor, record_actor_event
from rxslurm.daemon.projects.roles import Action
from rxslurm.daemon.projects.service import authorize, runtime_identity
from rxslurm.daemon.runtime.apptainer import ApptainerError
from rxslurm.daemon.runtime.fresh_state import FreshError, StateBusy, clear_instance_state
from rxslurm.daemon.runtime.overlay_reset import OverlayBusy, ResetError, backup_name, swap
from rxslurm.protocol.states import ACTIVE, State
from rxslurm.slurm.runas import RunAs, RunAsError, run

# How long a reset or a fresh start waits for an awake container to stop, as a disable does.
STOP_WAIT_S = 120.0

if TYPE_CHECKING:
    from rxslurm.daemon.containers.service import ContainerService
    from rxslurm.daemon.containers.views import ContainerView


def _asleep(
    service: ContainerService, actor: Actor, project: str, doing: str, wait_s: float
) -> tuple[dict[str, Any], str]:
    """The owner's container, stopped first when awake (as `rxctl disable` does), and its
    runtime user; Conflict when it is not enabled or does not stop within ``wait_s``."""
    with service.ledger.read() as db:
        row, _ = authorize(db, actor, project, Action.DISABLE)
        rows = list(db.table("containers").rows_where("project_id = ?", [row["id"]]))
    container = rows[0] if rows else None
    if container is None or container["state"] == State.DISABLED or not container["state_dir"]:
        raise Conflict(f"the container of {project} is not enabled")
    if container["state"] in ACTIVE:
        service.stop(actor, project, Action.DISABLE, force=True)
        stopped = service.wait_for(container["id"], lambda r: r["state"] not in ACTIVE, wait_s)
        if stopped is None:
            raise Conflict(f"the container of {project} did not stop within {wait_s:.0f}s")
        container = stopped
    if container["state"] not in (State.STOPPED, State.ERROR):
        raise Conflict(f"the container of {project} is {container['state']}; try again later")
    with service.ledger.read() as db:
        runtime_user = runtime_identity(db, service.config, row)
    if runtime_user is None or container["runtime_user"] != runtime_user:
        raise Conflict(
            f"the container of {project} belongs to a former runtime identity; start it once "
            f"before {doing}"
        )
    return container, runtime_user


def _folder_user(service: ContainerService, project: str, runtime_user: str) -> RunAs | None:
    """Who works in the container's folder, as for its snapshots (tests: this process)."""
    try:
        return service.snapshots.runas(runtime_user)
    except RunAsError as exc:
        raise Conflict(f"cannot act as the runtime user of {project}: {exc}") from None


def reset_overlay(
    service: ContainerService, actor: Actor, project: str, wait_s: float = STOP_WAIT_S
) -> dict[str, Any]:
    container, runtime_user = _asleep(service, actor, project, "a reset", wait_s)
    state_dir = container["state_dir"]
    who = _folder_user(service, project, runtime_user)
    try:
        owner = RunAs.for_user(runtime_user)
    except RunAsError as exc:
        raise Conflict(f"cannot reset {project}: {exc}") from None
    new = f".new-overlay-{secrets.token_hex(8)}.img"
    backup = backup_name(service.clock().timestamp())
    try:
        service.runtime.create_overlay(
            Path(state_dir) / new, service.config.containers.overlay_size_mb, owner
        )
        with service.snapshots.exclusive(container["id"]):
            old_bytes = swap(state_dir, new, backup, who)
    except OverlayBusy:
        _remove_as(who, Path(state_dir) / new)
        raise Conflict(
            f"a job or an instance still holds the overlay of {project}; nothing was changed"
        ) from None
    except (ResetError, ApptainerError, OSError) as exc:
        _remove_as(who, Path(state_dir) / new)
        raise Unavailable(f"cannot reset {project}: {exc}; nothing was changed") from None
    service.snapshots.remove_all(container)
    with service.ledger.transaction() as db:
        detail = {"backup": backup, "backup_bytes": old_bytes}
        record_actor_event(db, actor, "container.reset", "project", project, detail)
    return {"project": project, "backup": f"{state_dir}/{backup}", "backup_bytes": old_bytes}


def fresh_start(
    service: ContainerService, actor: Actor, project: str, wait_s: float = STOP_WAIT_S
) -> ContainerView:
    """Clear the container's instance state (stopping it first), then wake it
    (``rxctl start --fresh``)."""
    container, runtime_user = _asleep(service, actor, project, "a fresh start", wait_s)
    who = _folder_user(service, project, runtime_user)
    try:
        with service.snapshots.exclusive(container["id"]):
            removed = clear_instance_state(container["state_dir"], who)
    except StateBusy:
        raise Conflict(
            f"a job still holds the container of {project}; nothing was changed"
        ) from None
    except FreshError as exc:
        raise Unavailable(f"cannot start {project} fresh: {exc}") from None
    with service.ledger.transaction() as db:
        detail = {"removed": removed}
        record_actor_event(db, actor, "container.fresh", "project", project, detail)
    return service.wake(actor, project)


def _remove_as(who: RunAs | None, path: Path) -> None:
    """The temporary overlay of a reset that failed, removed as its owner; a failure leaves it
    for garbage collection's next look (its name is rx-slurm's)."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        run(["rm", "-f", "--", str(path)], as_user=who, timeout=60)
