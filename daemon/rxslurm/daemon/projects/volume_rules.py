"""What a named volume may be called, where a project may mount it, and whose projects may.

The mount rule: a project may mount a volume when an owner of the volume's project is also an
owner of the mounting project (the same people's projects share data; nobody shares into a project
they do not own). docs/volumes.md says it in words.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from rxslurm.daemon.errors import BadRequest

# Matched in full; it becomes a folder name under [volumes] root and part of a bind spec.
VOLUME_NAME = re.compile(r"[a-z](?:[a-z0-9-]{0,30}[a-z0-9])?")
# Each part of a mount path: no ',' or ':' (they separate Apptainer's bind specs), no spaces.
_PART = re.compile(r"[A-Za-z0-9_.-]+")
MAX_TARGET = 200
# The container's own paths and rx-slurm's: a volume over one would hide or replace what the
# container (or the workspace) needs, so neither these nor anything below them may be a target.
RESERVED_TARGETS = (
    "/workspace",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/tmp",
    "/usr",
    "/var",
    "/.singularity.d",
)


@dataclass(frozen=True)
class Mount:
    volume: str
    target: str
    read_only: bool

    def bind(self, volume_path: str) -> str:
        """Apptainer's -B spec for this mount of the volume at `volume_path`."""
        return f"{volume_path}:{self.target}:{'ro' if self.read_only else 'rw'}"


def check_volume_name(name: Any) -> str:
    if not isinstance(name, str) or not VOLUME_NAME.fullmatch(name):
        raise BadRequest(
            "volume name must be 1-32 characters: lowercase letters, digits and '-', "
            "starting with a letter and not ending with '-'"
        )
    return name


def check_target(target: Any) -> str:
    """An absolute mount path inside the container, of plain parts, over nothing reserved."""
    if not isinstance(target, str) or not target.startswith("/"):
        raise BadRequest("a volume's mount path must be absolute (start with '/')")
    if len(target) > MAX_TARGET:
        raise BadRequest(f"a volume's mount path must be at most {MAX_TARGET} characters")
    parts = target.strip("/").split("/")
    if target == "/" or target.endswith("/") or "//" in target:
        raise BadRequest(f"mount path {target!r} must name a folder below '/', without '//'")
    if any(part in (".", "..") or not _PART.fullmatch(part) for part in parts):
        raise BadRequest(
            f"mount path {target!r} may hold only letters, digits, '.', '_', '-' and '/' "
            "(no '.' or '..' parts)"
        )
    for reserved in RESERVED_TARGETS:
        if target == reserved or target.startswith(reserved + "/"):
            raise BadRequest(
                f"mount path {target!r} is over {reserved}, which the container needs; "
                "choose another (e.g. /data/NAME)"
            )
    return target


def check_mount(body: Any) -> Mount:
    """A mount as the API takes it: {"volume", "target", "read_only"}."""
    if not isinstance(body, dict):
        raise BadRequest("a mount must be a JSON object")
    read_only = body.get("read_only", False)
    if not isinstance(read_only, bool):
        raise BadRequest("read_only must be true or false")
    return Mount(check_volume_name(body.get("volume")), check_target(body.get("target")), read_only)


def may_mount(volume_owners: Collection[str], mounting_owners: Collection[str]) -> bool:
    """The rule: some owner of the volume's project also owns the mounting project."""
    return bool(set(volume_owners) & set(mounting_owners))
