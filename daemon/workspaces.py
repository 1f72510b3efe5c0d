"""Project workspaces: one folder per project that exactly the right Linux identities can use.

Root makes only the project folder itself (inside the root-owned workspaces root) and hands it to
the runtime identity. Everything after that, ACLs included, runs as the folder's owner: rxd never
writes into a user-owned folder with root's privileges.

Access: the runtime identity owns the folder; members with a bound Linux identity get rwx (owner,
manager, editor) or r-x (viewer) through ACLs, default ACLs included so new files inherit them.
"""

from __future__ import annotations

import logging
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from rxslurm.slurm.runas import RunAs, run

log = logging.getLogger("rxslurm.workspaces")

WRITE_ROLES = frozenset({"owner", "manager", "editor"})


class WorkspaceError(Exception):
    """The workspace could not be prepared; the message says what failed."""


@dataclass(frozen=True)
class Grant:
    user: str
    write: bool


def grants_for(members: list[tuple[str | None, str]], runtime_user: str) -> list[Grant]:
    """ACL grants from (linux_user, role) pairs; unbound members get nothing yet."""
    grants = {runtime_user: Grant(runtime_user, True)}
    for linux_user, role in members:
        if linux_user is None or linux_user in grants:
            continue
        grants[linux_user] = Grant(linux_user, role in WRITE_ROLES)
    return sorted(grants.values(), key=lambda g: g.user)


def ensure_root(root: Path) -> None:
    """The workspaces root: root-owned, traversable, not writable by others."""
    root.mkdir(parents=True, exist_ok=True, mode=0o755)
    info = root.lstat()
    if info.st_uid != 0 or info.st_mode & 0o022:
        raise WorkspaceError(
            f"workspaces root {root} must be owned by root and not group/world writable"
        )


def prepare(path: Path, runtime_user: str, grants: list[Grant], revoke: list[str] = ()) -> None:  # type: ignore[assignment]
    """Create the folder if needed and set its ACLs, as its owner."""
    ensure_root(path.parent)
    owner = RunAs.for_user(runtime_user)
    try:
        info = path.lstat()
    except FileNotFoundError:
        info = None
    if info is None:
        # A fresh, empty folder in a root-owned parent: nothing of a user's is touched.
        os.mkdir(path, 0o700)
        os.chown(path, owner.uid, owner.gid)
        acting = owner
    else:
        if not path.is_dir() or path.is_symlink():
            raise WorkspaceError(f"workspace {path} exists and is not a folder")
        acting = RunAs.for_user(pwd.getpwuid(info.st_uid).pw_name) if info.st_uid else None
        if acting is None:
            raise WorkspaceError(f"workspace {path} is owned by root; refusing to use it")
    specs = []
    for grant in grants:
        if grant.user == acting.user:
            continue
        perms = "rwx" if grant.write else "r-x"
        specs += [f"u:{grant.user}:{perms}", f"d:u:{grant.user}:{perms}"]
    if specs:
        specs += ["m::rwx", "d:m::rwx", f"d:u:{acting.user}:rwx"]
        _setfacl(acting, ["-m", ",".join(specs), str(path)])
    for user in revoke:
        if user != acting.user:
            _setfacl(acting, ["-x", f"u:{user},d:u:{user}", str(path)], missing_ok=True)


def _setfacl(who: RunAs, args: list[str], missing_ok: bool = False) -> None:
    result = run(["setfacl", *args], as_user=who, timeout=30)
    if result.returncode != 0:
        message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"
        if missing_ok and "No such" in message:
            return
        raise WorkspaceError(f"setfacl as {who.user} failed: {message}")
