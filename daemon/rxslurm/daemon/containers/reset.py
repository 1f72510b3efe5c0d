"""`rxctl reset`: a sleeping container starts over with a new, empty overlay; the old one stays in
its folder as ``overlay.img.before-reset-<UTC time>`` until garbage collection removes it
(containers/gc.py). Its owners only, audited.

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
from rxslurm.daemon.runtime.overlay_reset import OverlayBusy, ResetError, backup_name, swap
from rxslurm.protocol.states import State
from rxslurm.slurm.runas import RunAs, RunAsError, run

if TYPE_CHECKING:
    from rxslurm.daemon.containers.service import ContainerService


def reset_overlay(service: ContainerService, actor: Actor, project: str) -> dict[str, Any]:
    with service.ledger.read() as db:
        row, _ = authorize(db, actor, project, Action.DISABLE)
        runtime_user = runtime_identity(db, service.config, row)
        rows = list(db.table("containers").rows_where("project_id = ?", [row["id"]]))
    container = rows[0] if rows else None
    if container is None or container["state"] == State.DISABLED or not container["state_dir"]:
        raise Conflict(f"the container of {project} is not enabled")
    if container["state"] != State.STOPPED:
        raise Conflict(
            f"the container of {project} is {container['state']}; a reset needs it asleep: "
            f"rxctl stop --project {project}"
        )
    if runtime_user is None or container["runtime_user"] != runtime_user:
        raise Conflict(
            f"the container of {project} belongs to a former runtime identity; start it once "
            "before a reset"
        )
    state_dir = container["state_dir"]
    try:
        owner = RunAs.for_user(runtime_user)
        # Who works in the container's folder, as for its snapshots (tests: this process).
        who = service.snapshots.runas(runtime_user)
    except RunAsError as exc:
        raise Conflict(f"cannot reset {project}: {exc}") from None
    new = f".new-overlay-{secrets.token_hex(8)}.img"
    backup = backup_name(service.clock().timestamp())
    try:
        service.runtime.create_overlay(
            Path(state_dir) / new, service.config.containers.overlay_size_mb, owner
        )
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


def _remove_as(who: RunAs | None, path: Path) -> None:
    """The temporary overlay of a reset that failed, removed as its owner; a failure leaves it
    for garbage collection's next look (its name is rx-slurm's)."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        run(["rm", "-f", "--", str(path)], as_user=who, timeout=60)
