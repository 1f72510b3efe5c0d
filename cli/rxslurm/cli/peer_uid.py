"""Who is at the other end of a local TCP connection: the uid that owns the peer's socket.

`rxctl port-forward` listens on 127.0.0.1, where any user of the login node can connect; it
relays only its own user's connections (docs/services.md). A TCP socket has no SO_PEERCRED, but
on Linux the kernel's table of this network namespace's sockets (/proc/net/tcp and tcp6) lists
each one's address pair and its owner's uid: the peer's socket is the entry whose local address
is the connection's remote one and whose remote address is ours.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

Address = tuple[str, int]

TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
# A socket in TIME_WAIT belongs to nobody any more (the table says uid 0).
TIME_WAIT = "06"


class Entry(NamedTuple):
    local: Address
    remote: Address
    state: str
    uid: int


def decode_address(text: str) -> Address:
    """An address of the table as (host, port), "0100007F:1F90" -> ("127.0.0.1", 8080): the
    kernel prints each 32-bit word of the address as a number in this machine's byte order, and
    the port as a big-endian number."""
    host, _, port = text.partition(":")
    if len(host) not in (8, 32) or not port:
        raise ValueError(f"not an address of /proc/net/tcp: {text!r}")
    raw = b"".join(
        bytes.fromhex(host[i : i + 8])[:: -1 if sys.byteorder == "little" else 1]
        for i in range(0, len(host), 8)
    )
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address), int(port, 16)


def parse_table(text: str) -> Iterator[Entry]:
    """The entries of one /proc/net/tcp{,6} text; a line that does not parse is skipped."""
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            yield Entry(
                decode_address(fields[1]), decode_address(fields[2]), fields[3], int(fields[7])
            )
        except ValueError:
            continue


def normal(address: Address) -> Address:
    """An address as decode_address gives it (an IPv4-mapped IPv6 address as IPv4)."""
    host = ipaddress.ip_address(address[0].split("%", 1)[0])
    if isinstance(host, ipaddress.IPv6Address) and host.ipv4_mapped is not None:
        host = host.ipv4_mapped
    return str(host), int(address[1])


def owner_in(entries: Iterator[Entry], ours: Address, peer: Address) -> int | None:
    """The uid of the socket at `peer` connected to `ours`; None if there is none."""
    ours, peer = normal(ours), normal(peer)
    for entry in entries:
        if entry.local == peer and entry.remote == ours and entry.state != TIME_WAIT:
            return entry.uid
    return None


def encode_address(address: Address, size: int) -> str | None:
    """`address` as a table of `size`-byte addresses prints it (decode_address's inverse): an
    IPv4 address in tcp6 is IPv4-mapped; None if it cannot be in that table."""
    host = ipaddress.ip_address(address[0].split("%", 1)[0])
    if size == 16 and isinstance(host, ipaddress.IPv4Address):
        host = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + host.packed)
    elif size == 4 and isinstance(host, ipaddress.IPv6Address):
        if host.ipv4_mapped is None:
            return None
        host = host.ipv4_mapped
    raw = host.packed
    order = -1 if sys.byteorder == "little" else 1
    words = "".join(raw[i : i + 4][::order].hex().upper() for i in range(0, len(raw), 4))
    return f"{words}:{int(address[1]):04X}"


def lines_with(text: str, needle: str) -> Iterator[str]:
    """The lines of `text` that hold `needle`."""
    at = text.find(needle)
    while at != -1:
        start = text.rfind("\n", 0, at) + 1
        end = text.find("\n", at)
        yield text[start : len(text) if end == -1 else end]
        at = text.find(needle, at + 1)


def peer_uid(ours: Address, peer: Address) -> int | None:
    """The uid owning the peer's end of the connection from `peer` to `ours` on this host, as
    /proc/net says; None when no table lists it (gone already, another namespace, no /proc).
    A login node's table may hold thousands of sockets: only the lines holding the pair as the
    kernel prints it are parsed."""
    for table, size in zip(TABLES, (4, 16), strict=True):
        local, remote = encode_address(peer, size), encode_address(ours, size)
        if local is None or remote is None:
            continue
        try:
            text = table.read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        candidates = lines_with(text, f" {local} {remote} ")
        found = owner_in(parse_table("\n" + "\n".join(candidates)), ours, peer)
        if found is not None:
            return found
    return None


def unix_peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket connection (SO_PEERCRED)."""
    _pid, uid, _gid = struct.unpack(
        "3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    )
    return int(uid)
