"""Folders rxd makes, with the modes it means, whatever the umask.

rxd's unit runs with UMask=0077 so that nothing it writes is readable by others by accident. But
`mkdir(mode=0o755)` is filtered by the umask, and a shared root (workspaces, container state,
images) or the socket's folder made 0700 cannot be reached by the users' jobs or rxctl. So every
folder rxd creates gets its mode set explicitly; folders that were already there are left alone
(their checks are the callers').
"""

from __future__ import annotations

import os
from pathlib import Path


def make_folder(path: Path, mode: int = 0o755) -> None:
    """mkdir -p `path`; each folder this call creates gets exactly `mode`."""
    missing: list[Path] = []
    current = path
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, mode)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs, checked by the caller
        # Not through the path: a folder swapped for a symlink meanwhile is not followed.
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
