"""What rx-slurm needs to start the exec agent, and what rxd reads back of it.

The holder starts the agent (rxslurm.agent) inside the instance with its code, libmunge and
munged's folder passed as descriptors (holder.sh); this module gives it those paths. The holder
then writes two small files in the container's state folder, which its runtime user owns and
could replace with anything: ``job-<id>.agent`` (where the agent listens and the job's key, mode
0600) and ``job-<id>.sessions`` (its open sessions and when that last changed). rxd reads both as
it reads the status file: no link followed, a regular file of that user, bounded, on a worker
with a deadline (holder_status.py). A runtime user who writes nonsense there gets no agent for
their own container; nothing else trusts these files.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass

from rxslurm.daemon.runtime.holder_status import HolderStatus, Kind, StatusReader, read_user_file
from rxslurm.protocol.agent_wire import Endpoint, WireError, parse_endpoint
from rxslurm.slurm import munge

# The portions of the rxslurm namespace the agent imports (it runs on the container's Python).
AGENT_PACKAGES = ("rxslurm.agent", "rxslurm.slurm", "rxslurm.protocol")


@functools.cache
def agent_params() -> dict[str, str]:
    """holder.sh's agent parameters: the folders its code is found in (each holding an
    ``rxslurm/`` folder), libmunge's file and munged's socket; all "" where this host has no
    agent to give (the holder then starts none)."""
    folders: list[str] = []
    for name in AGENT_PACKAGES:
        spec = importlib.util.find_spec(name)
        locations = list(spec.submodule_search_locations or []) if spec else []
        if not locations:
            return {"agent_path": "", "libmunge": "", "munge_socket": ""}
        root = os.path.dirname(os.path.dirname(os.path.abspath(locations[0])))
        if root not in folders:
            folders.append(root)
    libmunge = munge.library_path()
    if libmunge is None or any(":" in folder for folder in folders):
        return {"agent_path": "", "libmunge": "", "munge_socket": ""}
    return {
        "agent_path": ":".join(folders),
        "libmunge": libmunge,
        "munge_socket": munge.DEFAULT_SOCKET,
    }


@dataclass(frozen=True)
class AgentSessions:
    open: int
    changed_at: int  # seconds since the epoch, by the node's clock


def _read_as_status(state_dir: str, name: str, uid: int) -> HolderStatus:
    data = read_user_file(state_dir, name, uid)
    if isinstance(data, HolderStatus):
        return data
    # The reader's worker carries text; these files are ASCII lines or refused below.
    return HolderStatus(Kind.LINE, data.decode("ascii", errors="replace"))


class AgentFiles:
    """Reads a job's agent files, each read bounded in time like the status file's."""

    def __init__(self, reader: StatusReader | None = None) -> None:
        self.endpoint_reader = reader or StatusReader(
            read=lambda d, j, u: _read_as_status(d, f"job-{int(j)}.agent", u)
        )
        self.sessions_reader = StatusReader(
            read=lambda d, j, u: _read_as_status(d, f"job-{int(j)}.sessions", u)
        )

    def endpoint(self, state_dir: str, job_id: int, uid: int) -> Endpoint | None:
        """Where the job's agent listens and its key; None without a (good) agent file."""
        read = self.endpoint_reader.read(state_dir, job_id, uid)
        if read.kind != Kind.LINE:
            return None
        try:
            return parse_endpoint(read.text.encode("ascii", errors="replace"))
        except WireError:
            return None

    def sessions(self, state_dir: str, job_id: int, uid: int) -> AgentSessions | None:
        """The agent's open sessions and when they last changed; None without a good file."""
        read = self.sessions_reader.read(state_dir, job_id, uid)
        if read.kind != Kind.LINE:
            return None
        words = read.text.split()
        if len(words) != 2 or not all(w.isdigit() and len(w) <= 12 for w in words):
            return None
        return AgentSessions(open=int(words[0]), changed_at=int(words[1]))
