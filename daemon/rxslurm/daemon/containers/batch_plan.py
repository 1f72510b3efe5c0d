"""The batch plan: what a member's own batch step needs to run in the project's environment.

A batch step (the SPANK plugin's `--rx-project`, `rxctl run`) runs as the member, in the member's
own job, never as the runtime user and never in the container's instance: it starts its own
`apptainer exec` of the project's image with the newest overlay snapshot mounted read-only, the
workspace at /workspace and the holder's binds. rxd answers the plan; the step does the rest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from rxslurm.daemon.config import Config
from rxslurm.daemon.containers.snapshots import SnapshotRef, newest_snapshot
from rxslurm.daemon.errors import Conflict
from rxslurm.daemon.images import cache as image_cache
from rxslurm.daemon.ledger.store import LedgerDatabase
from rxslurm.daemon.projects.environment import project_variables
from rxslurm.daemon.projects.service import require_runtime_identity
from rxslurm.daemon.projects.volumes import project_binds
from rxslurm.daemon.settings import Settings, effective

WORKSPACE_TARGET = "/workspace"
# The project's gpu_driver setting ("amd" there) in the words of Apptainer's flags (--nv, --rocm).
GPU_DRIVERS = {"nvidia": "nvidia", "amd": "rocm"}


@dataclass(frozen=True)
class BatchPlan:
    project: str
    image: str  # the SIF the container uses, or what its next start uses (absolute)
    snapshot: SnapshotRef | None  # None: batch steps get the bare image
    workspace: str
    workspace_target: str
    binds: tuple[str, ...]  # "src[:dest[:ro|rw]]", as the holder gets them
    gpu_driver: str  # "nvidia", "rocm" or ""
    apptainer: str  # [apptainer] binary, or "" for the one on the node's PATH
    # The project's variables (rxctl env), never its secrets: a batch step runs as the member, in
    # the member's job, outside rxd's exec (docs/security.md#secrets).
    env: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["binds"] = list(self.binds)
        data["snapshot"] = self.snapshot.to_dict() if self.snapshot else None
        return data


def plan_image(config: Config, project: dict[str, Any], container: dict[str, Any] | None) -> str:
    """The image file batch steps run: the container's (what its holder runs, and its next start
    runs) once it is enabled; before, the project's image setting if it is a file. A 409 when
    there is none, or a reference not pulled yet."""
    name = project["name"]
    if (
        container is not None
        and container["image"]
        and not image_cache.is_reference(container["image"])
    ):
        return str(container["image"])
    image = effective(Settings.from_row(project), config.defaults).image
    if not image:
        raise Conflict(
            f"project {name} has no image; an owner sets one with `rxctl project set {name} "
            "--image`",
            code="no_image",
        )
    if image_cache.is_reference(image):
        try:
            cached = image_cache.cached_image(config.containers.image_dir, image)
        except (ValueError, image_cache.UnsafeImageDir) as exc:
            raise Conflict(f"cannot use the image of project {name}: {exc}") from None
        if cached is None:
            raise Conflict(
                f"the image of project {name} ({image}) is not pulled yet; an owner runs "
                f"`rxctl enable --project {name}`",
                code="no_image",
            )
        return str(cached)
    return image


def batch_plan(db: LedgerDatabase, config: Config, project: dict[str, Any]) -> BatchPlan:
    """The plan for an authorized project, read in one ledger read (`db`)."""
    # Steps read the snapshot and workspace that belong to the runtime identity: none, no plan.
    require_runtime_identity(db, config, project)
    rows = list(db.table("containers").rows_where("project_id = ?", [project["id"]]))
    container = rows[0] if rows else None
    # The driver even when the container itself asks for no GPU: a step's GPUs are its own job's,
    # and the step binds the driver only when its job was granted some.
    driver = Settings.from_row(project).gpu_driver or config.defaults.gpu_driver
    return BatchPlan(
        project=project["name"],
        image=plan_image(config, project, container),
        snapshot=newest_snapshot(db, container) if container else None,
        workspace=project["workspace"],
        workspace_target=WORKSPACE_TARGET,
        binds=(*config.containers.fixed_mounts, *project_binds(db, project)),
        gpu_driver=GPU_DRIVERS.get(driver, ""),
        apptainer=config.apptainer.binary,
        env=project_variables(db, project),
    )
