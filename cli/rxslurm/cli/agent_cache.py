"""Where a project's exec agent was, remembered by the container's runtime user's rxctl.

The runtime user needs no ticket (the agent lets its own user in on a MUNGE credential alone),
so once rxd has named the agent, their next `rxctl exec` goes to it straight away: one exchange
less, the one with rxd. Only the address is kept (`host`, `port`, `job_id`, `uid`; never a
ticket, nothing secret), in the user's own cache folder. A stale entry costs one refused
connection, after which rxctl forgets it and asks rxd; whatever listens there must prove with
MUNGE that it is the runtime user's agent of that job (agent_client.connect) before rxctl sends
it anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import Any

FOLDER_MODE = 0o700
_KEYS = ("host", "port", "job_id", "uid")


def folder() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rxslurm", "agents")


def _path(door: str, project: str) -> str:
    name = hashlib.sha256(f"{door}\0{project}".encode()).hexdigest()[:32]
    return os.path.join(folder(), name)


def load(door: str, project: str) -> dict[str, Any] | None:
    """The remembered agent of `project` behind `door`, if any (and well-formed)."""
    try:
        fd = os.open(_path(door, project), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as file:
        if os.fstat(file.fileno()).st_uid != os.getuid():
            return None
        data = file.read(1024)
    try:
        entry = json.loads(data)
    except ValueError:
        return None
    if not isinstance(entry, dict) or entry.get("uid") != os.getuid():
        return None
    if not all(isinstance(entry.get(k), int | str) for k in _KEYS):
        return None
    return {k: entry[k] for k in _KEYS}


def remember(door: str, project: str, grant: dict[str, Any]) -> None:
    """Keep rxd's answer for next time, if this user is the agent's own (no ticket needed)."""
    if grant.get("uid") != os.getuid():
        return
    entry = {k: grant.get(k) for k in _KEYS}
    path = _path(door, project)
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path), mode=FOLDER_MODE, exist_ok=True)
        temporary = f"{path}.{os.getpid()}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump(entry, file)
        os.replace(temporary, path)


def forget(door: str, project: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(_path(door, project))
