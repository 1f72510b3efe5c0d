"""The pulled images in ``containers.image_dir`` as garbage collection sees them, and removing one.

Kept to this one module because how a reference maps to its cached file may change (today: its
digest's ``sha256-<hex>.sif``, or an older rxd's name per reference, images/cache.py and
images/digests.py): only ``in_use`` and ``cached_images`` know it here. The
folder is root's alone (cache.check_root_folder), so root lists and unlinks in it through a
descriptor; a pull's temporary file (a leading dot) and anything but a root-owned regular
``*.sif`` is left alone.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from rxslurm.daemon.images.cache import (
    check_root_folder,
    digest_file_name,
    image_file_name,
    is_reference,
)
from rxslurm.protocol.image_ref import BadReference, ImageRef, parse_reference


@dataclass(frozen=True)
class CachedImage:
    name: str  # the file's name in containers.image_dir
    bytes: int  # on disk
    installed: int  # seconds since the epoch (its modification time: install renames it in)


def in_use(
    images: Iterable[str],
    image_dir: Path | None = None,
    digest_of: Callable[[ImageRef], str | None] | None = None,
) -> set[str]:
    """The cached file names the image settings ``images`` may run: a reference's file under its
    own name (an older rxd's pulls) and, through ``digest_of`` (the ledger's record of what it
    resolved to), its digest's file; a path inside ``image_dir`` (what a container's job runs once
    its reference was pulled) by its name. Other paths are not cached files."""
    names: set[str] = set()
    for image in images:
        if not image:
            continue
        if not is_reference(image):
            path = Path(image)
            if image_dir is not None and path.parent == image_dir:
                names.add(path.name)
            continue
        names.add(image_file_name(image))
        if digest_of is None:
            continue
        try:
            digest = digest_of(parse_reference(image))
        except BadReference:
            continue
        if digest:
            try:
                names.add(digest_file_name(digest))
            except ValueError:
                continue
    return names


def cached_images(image_dir: Path) -> list[CachedImage]:
    """Every root-owned regular ``*.sif`` in the folder; none if it does not exist yet."""
    if not image_dir.is_dir():
        return []
    check_root_folder(image_dir, "containers.image_dir")
    fd = os.open(image_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        found = []
        for name in sorted(os.listdir(fd)):
            if name.startswith(".") or not name.endswith(".sif"):
                continue
            try:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(info.st_mode) and info.st_uid == 0:
                found.append(CachedImage(name, info.st_blocks * 512, int(info.st_mtime)))
        return found
    finally:
        os.close(fd)


def remove_cached(image_dir: Path, name: str) -> None:
    """Unlink the cached image ``name``; a name that is not a plain ``*.sif`` is refused."""
    if "/" in name or name.startswith(".") or not name.endswith(".sif"):
        raise ValueError(f"not a cached image: {name!r}")
    check_root_folder(image_dir, "containers.image_dir")
    fd = os.open(image_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)
