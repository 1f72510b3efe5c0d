"""Project workspaces: one folder per project that exactly the right Linux identities can use.

Whose a folder is, is proved by its owner. Root makes the project folder inside the root-owned
workspaces root (where nobody else can create, rename or replace an entry) and hands it to the
runtime identity; the ledger records the uid it was handed to (`projects.workspace_uid`). So:
- a new project moves whatever already sits at its path (a deleted project's folder, a leftover
  of a crash or of an older rx-slurm) to quarantine (see quarantine.py) and starts empty;
- an existing project uses its folder only if it belongs to the runtime identity or to the uid
  recorded for it; anything else is refused, never adopted;
- when the runtime identity changes, root hands over the top folder (chown through a descriptor
  opened without following links); while a project has no run-as identity the folder is parked as
  root's, so a former run-as user does not keep owning it.

Everything else, ACLs included, runs as the runtime identity: rxd never writes into a user-owned
folder with root's privileges, and never acts as a folder's foreign owner.

Access: the runtime identity owns the folder; members with a bound Linux identity get rwx (owner,
manager, editor) or r-x (viewer) through ACLs, default ACLs included so new files inherit them.
Grants, downgrades and removals are applied recursively (`setfacl -R -P`, symlinks not followed)
to everything the runtime identity owns; what other members own keeps the entries it was created
with, since only its owner may change them (docs/roles.md says what that leaves).
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rxslurm.daemon.folders import make_folder
from rxslurm.daemon.quarantine import quarantine
from rxslurm.slurm.runas import RunAs, run

log = logging.getLogger("rxslurm.workspaces")

WRITE_ROLES = frozenset({"owner", "manager", "editor"})
# setfacl walks the whole tree; a big workspace takes a while, but not forever.
RECURSIVE_TIMEOUT_S = 600


class WorkspaceError(Exception):
    """The workspace could not be prepared; the message says what failed."""


@dataclass(frozen=True)
class Grant:
    user: str
    write: bool


@dataclass(frozen=True)
class Prepared:
    """The folder's owner now (to record in the ledger), and what could not be done below it."""

    uid: int
    warning: str | None = None


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
    make_folder(root)
    info = root.lstat()
    if info.st_uid != 0 or info.st_mode & 0o022 or not stat.S_ISDIR(info.st_mode):
        raise WorkspaceError(
            f"workspaces root {root} must be owned by root and not group/world writable"
        )


def prepare(
    path: Path,
    runtime_user: str,
    grants: list[Grant],
    *,
    recorded_uid: int | None,
    fresh: bool = False,
    revoke: tuple[str, ...] = (),
) -> Prepared:
    """Make or claim the folder for `runtime_user`, then set its ACLs as that user.

    `recorded_uid`: whom the ledger says the folder was handed to. `fresh`: the project was just
    created, so nothing at its path can be its own. `revoke`: users to strip of every entry
    (besides any user with an entry on the folder who is not granted).
    """
    ensure_root(path.parent)
    owner = RunAs.for_user(runtime_user)
    if fresh and quarantine(path.parent, path.name) is not None:
        log.warning("moved a leftover folder to quarantine", extra={"path": str(path)})
    claim(path, owner, recorded_uid)
    return Prepared(owner.uid, set_acls(path, owner, grants, revoke))


def claim(path: Path, owner: RunAs, recorded_uid: int | None) -> None:
    """Make the folder `owner`'s: create it, keep it, or take it over from the recorded uid."""
    root_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        try:
            info = os.lstat(path.name, dir_fd=root_fd)
        except FileNotFoundError:
            # A fresh, empty folder in a root-owned parent: nothing of a user's is touched.
            os.mkdir(path.name, 0o700, dir_fd=root_fd)
            _chown(root_fd, path.name, owner.uid, owner.gid)
            return
        if not stat.S_ISDIR(info.st_mode):
            raise WorkspaceError(f"workspace {path} exists and is not a folder")
        if info.st_uid == owner.uid:
            return
        # 0: parked by rxd (a crash may have come between parking and recording it); only root
        # can make a folder root's, and nobody else can put one at this path.
        if recorded_uid is None or info.st_uid not in (recorded_uid, 0):
            raise WorkspaceError(
                f"workspace {path} belongs to uid {info.st_uid}, which rx-slurm never gave it "
                "to; refusing to use it (an admin moves it away)"
            )
        # The runtime identity changed (or the folder was parked): hand over the top folder.
        _chown(root_fd, path.name, owner.uid, owner.gid)
        log.info("workspace handed over", extra={"path": str(path), "to": owner.user})
    finally:
        os.close(root_fd)


def park(path: Path) -> bool:
    """Make the folder root's while the project has no run-as identity; True if it changed.

    Members keep what their ACL entries grant; the former run-as user, who owned it, has none."""
    root_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        try:
            info = os.lstat(path.name, dir_fd=root_fd)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(info.st_mode) or info.st_uid == 0:
            return False
        _chown(root_fd, path.name, 0, 0)
        log.info("workspace parked", extra={"path": str(path), "from_uid": info.st_uid})
        return True
    finally:
        os.close(root_fd)


def retire(path: Path) -> Path | None:
    """The project is gone: its folder goes to quarantine (root's, 0700), never to a newcomer."""
    return quarantine(path.parent, path.name)


def _chown(root_fd: int, name: str, uid: int, gid: int) -> None:
    # The entry is in root's folder, so it cannot be swapped for a link between open and chown;
    # O_NOFOLLOW|O_DIRECTORY refuses anything but the folder itself.
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root_fd)
    try:
        os.fchown(fd, uid, gid)
    finally:
        os.close(fd)


def acl_specs(grants: list[Grant], runtime_user: str, *, recursive: bool) -> list[str]:
    """setfacl -m entries for the grants. Below the top folder, `X` keeps files that are not
    executable for anyone from becoming so; the runtime identity gets a default entry so files
    members create stay usable by the container."""
    x = "X" if recursive else "x"
    specs = []
    for grant in grants:
        if grant.user == runtime_user:
            continue
        perms = f"rw{x}" if grant.write else f"r-{x}"
        specs += [f"u:{grant.user}:{perms}", f"d:u:{grant.user}:{perms}"]
    if not recursive:
        specs += ["m::rwx", "d:m::rwx"]
    return [*specs, f"d:u:{runtime_user}:rw{x}"]


def named_uids(getfacl_output: str) -> set[int]:
    """The uids with a named (default) user entry in `getfacl -cpn` output."""
    uids = set()
    for line in getfacl_output.splitlines():
        fields = line.strip().removeprefix("default:").split(":")
        if len(fields) >= 3 and fields[0] == "user" and fields[1].isdigit():
            uids.add(int(fields[1]))
    return uids


def set_acls(path: Path, owner: RunAs, grants: list[Grant], revoke: tuple[str, ...]) -> str | None:
    """Grants and revocations on the folder (must succeed) and below it (best effort), as its
    owner. Returns a warning for what could not be changed below, else None."""
    listed = _as_owner(owner, ["getfacl", "-cpn", str(path)])
    granted = {RunAs.for_user(g.user).uid for g in grants}
    named = {_uid_of(u) for u in revoke} | named_uids(listed.stdout)
    gone = sorted(str(uid) for uid in named - granted - {None})
    top = ",".join(acl_specs(grants, owner.user, recursive=False))
    _as_owner(owner, ["setfacl", "-m", top, str(path)])
    removals = ",".join(f"u:{u},d:u:{u}" for u in gone)
    if removals:
        _as_owner(owner, ["setfacl", "-x", removals, str(path)])
    below = ",".join(acl_specs(grants, owner.user, recursive=True))
    problems = _recursive(owner, ["-m", below], path)
    if removals:
        problems += _recursive(owner, ["-x", removals], path)
    if not problems:
        return None
    log.warning(
        "some entries below the workspace kept their ACLs",
        extra={"path": str(path), "count": len(problems), "first": problems[0]},
    )
    return (
        f"{len(problems)} entries below the workspace are not {owner.user}'s and kept their "
        f"ACLs (first: {problems[0]})"
    )


def _uid_of(user: str) -> int | None:
    try:
        return RunAs.for_user(user).uid
    except ValueError:
        return None


def _as_owner(owner: RunAs, argv: list[str]) -> subprocess.CompletedProcess[str]:
    result = run(argv, as_user=owner, timeout=30)
    if result.returncode != 0:
        message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"
        raise WorkspaceError(f"{argv[0]} as {owner.user} failed: {message}")
    return result


def _recursive(owner: RunAs, args: list[str], path: Path) -> list[str]:
    """setfacl -R -P below the folder; the lines it could not apply (others' files)."""
    try:
        result = run(
            ["setfacl", "-R", "-P", *args, str(path)], as_user=owner, timeout=RECURSIVE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return [f"setfacl -R did not finish within {RECURSIVE_TIMEOUT_S}s"]
    if result.returncode == 0:
        return []
    return [line for line in result.stderr.splitlines() if line.strip()] or ["setfacl -R failed"]
