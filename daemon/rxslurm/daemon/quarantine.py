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

import contextlib
import os
import secrets
import stat
import time
from pathlib import Path

QUARANTINE = ".quarantine"


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
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
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
