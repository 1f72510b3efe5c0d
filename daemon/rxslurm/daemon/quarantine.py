"""Moving a folder rx-slurm no longer trusts out of everyone's reach, without deleting it.

A project's workspace or container folder that outlived its project (deleted, or left by an older
rx-slurm or a crash) must never be handed to the next project of that name: its old owner still
owns it, and its ACLs still grant the old members. It goes to `<root>/.quarantine/` instead,
renamed (`<name>.<UTC time>.<random>`), made root's and 0700: the data stays for an admin to
restore or purge, and nobody reaches it by path any more.

Root only renames entries inside its own root-owned folders and changes the moved entry's owner
and mode through the quarantine folder (root's, 0700): no path a user can change is followed.
Project and container names start with a letter, so `.quarantine` never is one of them.
"""

from __future__ import annotations

import calendar
import contextlib
import os
import re
import secrets
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

QUARANTINE = ".quarantine"
_STAMP = "%Y%m%dT%H%M%SZ"
_MOVED = re.compile(r".+\.([0-9]{8}T[0-9]{6}Z)\.[0-9a-f]{8}", re.ASCII)


class QuarantineError(OSError):
    """The quarantine folder is unsafe, or the move failed; the message says which."""


def quarantine(root: Path, name: str) -> Path | None:
    """Move `<root>/<name>` into `<root>/.quarantine/`; its new path, or None if it was absent."""
    if "/" in name or name in ("", ".", "..", QUARANTINE):
        raise ValueError(f"not a folder name: {name!r}")
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        info = os.fstat(root_fd)
        if info.st_uid != 0 or info.st_mode & 0o022:
            raise QuarantineError(f"{root} must be owned by root and not group/world writable")
        try:
            os.lstat(name, dir_fd=root_fd)
        except FileNotFoundError:
            return None
        quarantine_fd = _quarantine_folder(root, root_fd)
        try:
            stamp = time.strftime(_STAMP, time.gmtime())
            moved = f"{name}.{stamp}.{secrets.token_hex(4)}"
            os.rename(name, moved, src_dir_fd=root_fd, dst_dir_fd=quarantine_fd)
            _lock(moved, quarantine_fd)
        finally:
            os.close(quarantine_fd)
    finally:
        os.close(root_fd)
    return root / QUARANTINE / moved


def _quarantine_folder(root: Path, root_fd: int) -> int:
    with contextlib.suppress(FileExistsError):
        os.mkdir(QUARANTINE, 0o700, dir_fd=root_fd)
    fd = os.open(QUARANTINE, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root_fd)
    info = os.fstat(fd)
    if info.st_uid != 0 or info.st_mode & 0o077:
        os.close(fd)
        raise QuarantineError(f"{root / QUARANTINE} must be owned by root with mode 0700")
    return fd


def _lock(entry: str, folder_fd: int) -> None:
    """Root's, 0700: a held file descriptor aside, nobody (old owner, ACL grants) gets in.

    chmod also sets the ACL mask to nothing, so named entries grant nothing any more. A symlink
    is left as it is (nothing behind it is touched)."""
    info = os.lstat(entry, dir_fd=folder_fd)
    if stat.S_ISLNK(info.st_mode):
        return
    os.chown(entry, 0, 0, dir_fd=folder_fd, follow_symlinks=False)
    # The entry sits in root's 0700 folder and is not a symlink: nobody can swap it meanwhile.
    os.chmod(entry, 0o700, dir_fd=folder_fd)


@dataclass(frozen=True)
class Quarantined:
    name: str  # the entry's name in <root>/.quarantine
    bytes: int  # on disk, everything below it
    moved: int | None  # when it was moved there (from its name); None: not a name of ours


def moved_at(name: str) -> int | None:
    """When ``quarantine`` moved the entry it named ``name`` (seconds since the epoch)."""
    found = _MOVED.fullmatch(name)
    if found is None:
        return None
    try:
        return calendar.timegm(time.strptime(found.group(1), _STAMP))
    except ValueError:
        return None


def quarantined(root: Path) -> list[Quarantined]:
    """The entries of ``<root>/.quarantine`` with their size; none when there is no such folder.

    Root walks them: the quarantine folder is root's and 0700 and each entry was made root's
    when moved, so no user can reach below it by path any more; links are not followed."""
    try:
        folder_fd = os.open(root / QUARANTINE, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return []
    try:
        _check_quarantine_fd(root, folder_fd)
        return [
            Quarantined(name, _disk_bytes(name, folder_fd), moved_at(name))
            for name in sorted(os.listdir(folder_fd))
        ]
    finally:
        os.close(folder_fd)


def purge(root: Path, name: str) -> None:
    """Remove the quarantined entry ``name`` and everything below it, for good."""
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"not a quarantined entry: {name!r}")
    folder_fd = os.open(root / QUARANTINE, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        _check_quarantine_fd(root, folder_fd)
        if stat.S_ISDIR(os.lstat(name, dir_fd=folder_fd).st_mode):
            # rmtree with dir_fd works through descriptors and never follows a link.
            shutil.rmtree(name, dir_fd=folder_fd)
        else:
            os.unlink(name, dir_fd=folder_fd)
    finally:
        os.close(folder_fd)


def _check_quarantine_fd(root: Path, fd: int) -> None:
    info = os.fstat(fd)
    if info.st_uid != 0 or info.st_mode & 0o077:
        raise QuarantineError(f"{root / QUARANTINE} must be owned by root with mode 0700")


def _disk_bytes(name: str, folder_fd: int) -> int:
    top = os.lstat(name, dir_fd=folder_fd)
    if not stat.S_ISDIR(top.st_mode):
        return int(top.st_blocks) * 512
    total = int(top.st_blocks) * 512
    for _, dirs, files, dir_fd in os.fwalk(name, dir_fd=folder_fd):
        for entry in (*dirs, *files):
            with contextlib.suppress(OSError):
                total += int(os.lstat(entry, dir_fd=dir_fd).st_blocks) * 512
    return total
