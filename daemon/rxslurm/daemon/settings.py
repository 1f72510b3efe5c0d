"""Project settings: parsing, validation against the deployment and Slurm, and defaults.

Which settings there are, of which type and how long, is the protocol's table
(rxslurm.protocol.settings), which rxctl reads too. A setting of 0 or "" means "the deployment's
default"; `effective()` fills those in.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Protocol

from rxslurm.daemon.errors import BadRequest
from rxslurm.daemon.text_checks import check_text, shorten
from rxslurm.protocol import settings as protocol_settings
from rxslurm.protocol.image_ref import BadReference, normalize_image
from rxslurm.protocol.settings import BY_NAME, NAMES, SETTINGS

GPU_DRIVERS = (*protocol_settings.GPU_DRIVERS, "")
IMAGE_SCHEMES = ("docker://", "oras://", "library://")
# Matched with fullmatch: `$` would let a trailing newline through.
_GPU_TYPE = re.compile(r"[A-Za-z0-9_.-]{0,32}")
_PARTITION = re.compile(r"[A-Za-z0-9_.-]{0,64}")
# Slurm's names of accounts, QOS and reservations; a constraint is such names (node features)
# joined by sbatch's operators: & | , and [] () for groups, *N for counts.
_SLURM_NAME = re.compile(r"[A-Za-z0-9_.-]{0,64}")
_CONSTRAINT = re.compile(r"[A-Za-z0-9_.:&|,*()\[\]-]{0,256}")
_NAME_RULE = "only letters, digits, '.', '_' and '-'"
MAX_STRING_BYTES = {s.name: s.max_bytes for s in SETTINGS if s.kind is str}
MAX_IMAGE_BYTES = MAX_STRING_BYTES["image"]
MAX_COUNT = 1_000_000
MAX_PORT = 65535
# Settings with no deployment default: one service for every project would make no sense.
PROJECT_ONLY = ("service", "port", "restart")
# A restart policy's most restarts, and what on-failure alone means.
MAX_RESTARTS = 100
DEFAULT_RESTARTS = 3
_RESTART = re.compile(r"(never|on-failure)(?::([0-9]{1,3}))?", re.ASCII)


def service_words(service: str) -> list[str]:
    """The service's command (a JSON list of words, "" for none) as a list; BadRequest if it is
    not one. A word holds no NUL (the holder reads them NUL-ended) and the first is not empty."""
    if not service:
        return []
    try:
        words = json.loads(service)
    except ValueError:
        words = None
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise BadRequest("service must be a JSON list of words (rxctl splits --service for you)")
    if not words or not words[0]:
        raise BadRequest("service must name a command")
    if any("\0" in w for w in words):
        raise BadRequest("service's words must not hold NUL")
    return words


def service_restarts(policy: str) -> int:
    """How many times the holder starts a failed service again under `policy` ("" or never: 0;
    on-failure: 3; on-failure:N: N); BadRequest if it is none of these."""
    if not policy:
        return 0
    found = _RESTART.fullmatch(policy)
    if found is None or (found.group(1) == "never" and found.group(2) is not None):
        raise BadRequest('restart must be "never", "on-failure" or "on-failure:N"')
    if found.group(1) == "never":
        return 0
    if found.group(2) is None:
        return DEFAULT_RESTARTS
    count = int(found.group(2))
    if not 1 <= count <= MAX_RESTARTS:
        raise BadRequest(f"restart on-failure:N takes N from 1 to {MAX_RESTARTS}")
    return count


@dataclass(frozen=True)
class Settings:
    """A project's settings, one field per entry of the protocol's table, in its order (a test
    checks). Columns of a ledger row that the table no longer names are ignored. The deployment's
    defaults (rxd.toml's [defaults]) are Settings too."""

    image: str = ""
    cpus: int = 0
    mem_mb: int = 0
    gpus: int = 0
    gpu_type: str = ""
    gpu_driver: str = ""
    partition: str = ""
    time_limit_min: int = 0
    account: str = ""
    qos: str = ""
    constraint: str = ""
    reservation: str = ""
    idle_timeout_min: int = 0
    service: str = ""
    port: int = 0
    restart: str = ""

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Settings:
        return cls(**{f.name: row[f.name] for f in fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def differs_from_snapshot(saved: Settings, snapshot: dict[str, Any]) -> bool:
    """Whether saved settings differ from those a job was started with (its snapshot). A setting
    a snapshot lacks was not there when the job started: it had the setting's default (0, "")."""
    return any(
        snapshot.get(name, type(value)()) != value for name, value in saved.to_dict().items()
    )


class PartitionLookup(Protocol):
    """What validation needs to know of Slurm: partitions with their largest node's resources."""

    def __call__(self) -> dict[str, Any]: ...


def apply_changes(current: Settings, changes: Any) -> Settings:
    """`current` with `changes` (a JSON object of setting name -> value) applied, type-checked."""
    if not isinstance(changes, dict):
        raise BadRequest("settings must be a JSON object")
    unknown = sorted(set(changes) - set(NAMES))
    if unknown:
        raise BadRequest(
            f"unknown setting {shorten(repr(unknown[0]), 64)}; valid settings: {', '.join(NAMES)}"
        )
    values: dict[str, Any] = {}
    for name, value in changes.items():
        if BY_NAME[name].kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise BadRequest(f"{name} must be a whole number, got {_json_type(value)}")
            if value < 0:
                raise BadRequest(f"{name} must not be negative (0 means the default)")
            if value > MAX_COUNT:
                raise BadRequest(f"{name} is too large")
        else:
            check_text(name, value, MAX_STRING_BYTES[name])
            if name == "image":
                value = _normalized_image(value)
        values[name] = value
    return replace(current, **values)


def _normalized_image(image: str) -> str:
    """A reference as people write it gets its scheme (``python:3`` -> ``docker://python:3``)."""
    try:
        return normalize_image(image)
    except BadReference as exc:
        message = str(exc)
        raise BadRequest(message if message.startswith("image") else f"image: {message}") from None


def _json_type(value: Any) -> str:
    """How to name a wrong value in an answer without echoing it (it may be huge)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    names = {float: "a decimal number", str: "a string", list: "a list", dict: "an object"}
    return names.get(type(value), "null")


def check_static(settings: Settings) -> None:
    """Checks that need no Slurm."""
    if settings.gpu_driver not in GPU_DRIVERS:
        raise BadRequest('gpu_driver must be "nvidia", "amd" or "" (none)')
    for name, cap in MAX_STRING_BYTES.items():
        # Also here: saved settings are checked again when they are applied.
        check_text(name, getattr(settings, name), cap)
    if not _GPU_TYPE.fullmatch(settings.gpu_type):
        raise BadRequest("gpu_type may hold only letters, digits, '.', '_' and '-'")
    if not _PARTITION.fullmatch(settings.partition):
        raise BadRequest(f"partition may hold {_NAME_RULE}")
    for name in ("account", "qos", "reservation"):
        if not _SLURM_NAME.fullmatch(getattr(settings, name)):
            raise BadRequest(f"{name} may hold {_NAME_RULE}, as Slurm's names do")
    if not _CONSTRAINT.fullmatch(settings.constraint):
        raise BadRequest(
            "constraint may hold node features (letters, digits, '.', '_', '-', ':') joined by "
            "sbatch's operators & | , * [ ] ( )"
        )
    service_words(settings.service)
    service_restarts(settings.restart)
    if settings.port > MAX_PORT:
        raise BadRequest(f"port must be at most {MAX_PORT} (0: none)")
    image = settings.image
    if image and not (image.startswith("/") or image.startswith(IMAGE_SCHEMES)):
        raise BadRequest(
            "image must be an absolute path or a docker://, oras:// or library:// reference "
            "(a bare name like python:3.12-slim is docker://)"
        )
    if image.startswith("/") and (".." in image.split("/")):
        raise BadRequest("image path must not contain '..'")


def effective(settings: Settings, defaults: Settings) -> Settings:
    """The settings with every 0/"" replaced by the deployment's (`defaults`, rxd.toml's
    [defaults])."""
    values = {}
    for name in NAMES:
        value = getattr(settings, name)
        values[name] = value if value not in (0, "") else getattr(defaults, name)
    result = Settings(**values)
    if result.gpus == 0:
        # No GPU asked for: a default GPU type or driver must not leak into the job.
        result = replace(result, gpu_type="", gpu_driver="")
    return result


def check_against_slurm(
    settings: Settings, partitions: dict[str, Any], default_partition: str
) -> None:
    """Checks against what Slurm reports; `settings` are the effective ones.

    `partitions` maps name -> rxslurm.slurm.adapter.PartitionInfo (per-node maxima, GPU types).
    """
    name = settings.partition or default_partition
    if name not in partitions:
        valid = ", ".join(sorted(partitions)) or "none"
        raise BadRequest(f"unknown partition {name!r}; Slurm has: {valid}")
    part = partitions[name]
    if settings.gpus > part.max_gpus_per_node:
        raise BadRequest(
            f"{settings.gpus} GPUs asked for, but no node of partition {name} has more than "
            f"{part.max_gpus_per_node}"
        )
    if settings.gpu_type and settings.gpus and settings.gpu_type not in part.gpu_types:
        have = ", ".join(sorted(part.gpu_types)) or "none"
        raise BadRequest(
            f"partition {name} has no GPUs of type {settings.gpu_type!r} (it has: {have})"
        )
    if part.max_cpus_per_node and settings.cpus > part.max_cpus_per_node:
        raise BadRequest(
            f"{settings.cpus} CPUs asked for, but no node of partition {name} has more than "
            f"{part.max_cpus_per_node}"
        )
    if part.max_mem_mb_per_node and settings.mem_mb > part.max_mem_mb_per_node:
        raise BadRequest(
            f"{settings.mem_mb} MB of memory asked for, but no node of partition {name} has more "
            f"than {part.max_mem_mb_per_node} MB"
        )
