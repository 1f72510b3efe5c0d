"""Removing an image build's files, as the runtime user who built them (root never walks a folder
a user controls). The build folder itself sits in the root-owned state root, so its owner can empty
it but not remove it; rxd removes the empty folder afterwards (or quarantines one that is not)."""

from __future__ import annotations

from rxslurm.daemon.runtime.user_script import run_script, script_argv
from rxslurm.slurm.runas import RunAs

REMOVE_TIMEOUT_S = 120.0

# Run as the runtime user (`python -I -S -c`): everything inside the folder goes, links removed
# as links (rmtree never follows them), the folder itself stays. argv: the folder.
REMOVER = r"""
import os, shutil, stat, sys
folder = sys.argv[1]
try:
    d = os.open(folder, os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC)
except FileNotFoundError:
    sys.exit(0)
for name in os.listdir(d):
    info = os.lstat(name, dir_fd=d)
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(name, dir_fd=d)
    else:
        os.unlink(name, dir_fd=d)
"""


class RemoveError(Exception):
    """The build's files could not be removed; the message says why."""


def empty_build_folder(build_dir: str, as_user: RunAs | None) -> None:
    """Remove everything in ``build_dir`` as ``as_user`` (None: as this process, for tests)."""
    result = run_script(
        script_argv(REMOVER, build_dir),
        as_user=as_user,
        timeout=REMOVE_TIMEOUT_S,
        doing="removing the build's files",
        name="remover",
        error=RemoveError,
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        raise RemoveError(f"cannot remove the build's files: {last[:300]}")
