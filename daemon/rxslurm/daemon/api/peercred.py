"""Who is on the other end of a Unix socket: the kernel says, never the request."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass

_UCRED = struct.Struct("3i")


class UnknownCaller(Exception):
    """The peer's uid has no consistent passwd entry."""


@dataclass(frozen=True)
class Caller:
    pid: int
    uid: int
    gid: int
    user: str
    groups: tuple[str, ...]
    # How the uid was proved: "socket" (SO_PEERCRED) or "munge" (the network door).
    door: str = "socket"

    @property
    def is_root(self) -> bool:
        return self.uid == 0


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that connected, as the kernel recorded at connect()."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def resolve_caller(pid: int, uid: int, gid: int) -> Caller:
    """Name the uid and check the name maps back to it (a duplicate or stale entry is refused)."""
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        raise UnknownCaller(f"uid {uid} has no passwd entry") from None
    try:
        back = pwd.getpwnam(entry.pw_name)
    except KeyError:
        raise UnknownCaller(f"user {entry.pw_name!r} does not resolve back to uid {uid}") from None
    if back.pw_uid != uid:
        raise UnknownCaller(
            f"user {entry.pw_name!r} resolves to uid {back.pw_uid}, not the caller's uid {uid}"
        )
    gids = os.getgrouplist(entry.pw_name, entry.pw_gid)
    names = []
    for g in gids:
        try:
            names.append(grp.getgrgid(g).gr_name)
        except KeyError:
            continue
    return Caller(pid=pid, uid=uid, gid=gid, user=entry.pw_name, groups=tuple(sorted(set(names))))
