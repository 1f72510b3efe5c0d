"""A project's batch plan: what a step of the member's own job needs to run in the project's
container environment, as rxd answers `GET /v1/projects/NAME/batch-plan`, and the one
`apptainer exec` argv made from it.

rxd decides what (the image, the newest read-only snapshot of the overlay, the workspace, the
binds, the GPU driver) after checking that the caller may run in the project; rxctl run (for the
SPANK plugin too) decides how, on the node, from this module. Standard library only: rxctl run
starts once per task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rxslurm.protocol import env_vars

WORKSPACE_TARGET = "/workspace"
# rxd spells the AMD driver as its settings do ("amd"), or as Apptainer's flag does ("rocm").
GPU_FLAGS = {"nvidia": "--nv", "rocm": "--rocm", "amd": "--rocm"}
# What Slurm sets in a job, or a step of one, that was granted GPUs: the GRES indexes.
GPU_GRANT_VARIABLES = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS")


class BadPlan(ValueError):
    """rxd's answer is not a batch plan; the message says which field, for people."""


@dataclass(frozen=True)
class Snapshot:
    path: str
    taken_at: str
    id: int | str


@dataclass(frozen=True)
class BatchPlan:
    project: str
    image: str
    snapshot: Snapshot | None
    workspace: str
    workspace_target: str
    binds: tuple[str, ...]
    gpu_driver: str
    apptainer: str
    # The project's variables; the step's environment gives them to the command.
    env: Mapping[str, str] = field(default_factory=dict)


def _text(data: Mapping[str, Any], key: str, *, path: bool = False, empty: bool = False) -> str:
    """A text field; a `path` is absolute and has none of the separators of Apptainer's
    --overlay and -B values (":" and ",")."""
    value = data.get(key)
    if not isinstance(value, str) or (not value and not empty) or "\x00" in value:
        raise BadPlan(f"the batch plan's {key!r} is not a {'path' if path else 'text'}")
    if path and value and (not value.startswith("/") or ":" in value or "," in value):
        raise BadPlan(f"the batch plan's {key!r} is not an absolute path without ':' or ','")
    return value


def parse(data: Any) -> BatchPlan:
    """The plan in rxd's answer, checked field by field (BadPlan otherwise)."""
    if not isinstance(data, dict):
        raise BadPlan("the batch plan is not a JSON object")
    raw_snapshot = data.get("snapshot")
    snapshot = None
    if raw_snapshot is not None:
        if not isinstance(raw_snapshot, dict):
            raise BadPlan("the batch plan's 'snapshot' is neither null nor an object")
        snapshot_id = raw_snapshot.get("id")
        if not isinstance(snapshot_id, int | str) or isinstance(snapshot_id, bool):
            raise BadPlan("the batch plan's snapshot 'id' is not a number or a text")
        snapshot = Snapshot(
            path=_text(raw_snapshot, "path", path=True),
            taken_at=_text(raw_snapshot, "taken_at", empty=True),
            id=snapshot_id,
        )
    binds = data.get("binds", [])
    if not isinstance(binds, list) or not all(
        isinstance(b, str) and b.startswith("/") and "\x00" not in b and "," not in b for b in binds
    ):
        raise BadPlan("the batch plan's 'binds' is not a list of /src[:/dest[:ro|rw]] without ','")
    driver = _text(data, "gpu_driver", empty=True)
    if driver and driver not in GPU_FLAGS:
        raise BadPlan(f"the batch plan's 'gpu_driver' is not one rx-slurm knows: {driver!r}")
    try:
        # An older rxd sends none.
        env = env_vars.check_variables(data.get("env", {}))
    except env_vars.BadVariable as exc:
        raise BadPlan(f"the batch plan's 'env': {exc}") from None
    return BatchPlan(
        project=_text(data, "project"),
        image=_text(data, "image", path=True),
        snapshot=snapshot,
        workspace=_text(data, "workspace", path=True),
        workspace_target=_text(data, "workspace_target", path=True),
        binds=tuple(binds),
        gpu_driver=driver,
        apptainer=_text(data, "apptainer", path=True, empty=True),
        env=env,
    )


def step_env(plan: BatchPlan, environ: Mapping[str, str]) -> dict[str, str]:
    """The step's environment: the caller's, with the project's variables for the container
    (APPTAINERENV_NAME, over any the caller set for those names)."""
    return {**environ, **env_vars.apptainer_env(plan.env)}


def granted_gpus(env: Mapping[str, str]) -> bool:
    """Whether Slurm granted this job or step GPUs (as its environment says; outside a job, no)."""
    return any(env.get(name, "").strip() for name in GPU_GRANT_VARIABLES)


def exec_argv(plan: BatchPlan, command: Sequence[str], *, gpus: bool) -> list[str]:
    """`apptainer exec` of `command` in the plan's environment, as the member themself (no
    --fakeroot): the snapshot read-only over the image, the workspace and the binds, the GPU
    driver when the job has GPUs. The working directory and the environment are the caller's
    (Apptainer keeps both by default). Every word of `command` is one item, never a shell line."""
    # rxd's program (an absolute path); when it names none, Apptainer on the caller's PATH.
    # --quiet: a job's output gets Apptainer's warnings and errors, not its INFO lines per task.
    argv = [plan.apptainer or "apptainer", "--quiet", "exec"]
    flag = GPU_FLAGS.get(plan.gpu_driver, "") if gpus else ""
    if flag:
        argv.append(flag)
    if plan.snapshot is not None:
        argv += ["--overlay", f"{plan.snapshot.path}:ro"]
    argv += ["-B", f"{plan.workspace}:{plan.workspace_target}"]
    for bind in plan.binds:
        argv += ["-B", bind]
    return [*argv, plan.image, *command]
