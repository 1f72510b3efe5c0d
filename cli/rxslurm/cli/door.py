"""Which door rxctl uses to reach rxd, and the MUNGE credential for the network door.

In order: --socket (or $RXCTL_SOCKET) names a local socket; $RXSLURM_SERVER, else `server` in
/etc/rxslurm/rxctl.toml, names rxd's network door ("host:port"); else the local socket
/run/rxslurm/rxd.sock. The network path loads libmunge (ctypes) only when it is used, so rxctl
starts as fast as before on the service host.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from rxslurm.protocol.paths import CLI_CONFIG, DEFAULT_SOCKET

SOCKET_ENV = "RXCTL_SOCKET"
SERVER_ENV = "RXSLURM_SERVER"
MUNGE_SOCKET_ENV = "RXSLURM_MUNGE_SOCKET"
CONFIG_FILE = CLI_CONFIG
CONFIG_ENV = "RXCTL_CONFIG"
_CONFIG_KEYS = ("server", "munge_socket")


class DoorError(Exception):
    """rxctl's own settings are wrong; the message is one line for people."""


# A NamedTuple, not a dataclass, and paths as strings, not pathlib: every `rxctl exec` imports
# this module, and dataclasses and pathlib took a fifth of its start-up.
class Door(NamedTuple):
    kind: str  # "socket" or "network"
    address: str  # a socket path, or "host:port"
    source: str  # where the address came from, for `rxctl doctor`
    munge_socket: str | None = None  # None: the cluster's munged

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.address.rpartition(":")
        return host.strip("[]"), int(port)

    def describe(self) -> str:
        if self.kind == "socket":
            return f"local socket {self.address} ({self.source})"
        return f"network door {self.address}, MUNGE-authenticated ({self.source})"


def _read_config(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise DoorError(f"cannot read {path}: {exc}") from None
    import tomllib  # only when the file exists

    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DoorError(f"{path} is not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - set(_CONFIG_KEYS))
    if unknown:
        raise DoorError(
            f"{path}: unknown key {unknown[0]!r}; valid keys: {', '.join(_CONFIG_KEYS)}"
        )
    for key, value in raw.items():
        if not isinstance(value, str):
            raise DoorError(f"{path}: {key} must be a string")
    return raw


def check_server(address: str, source: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DoorError(f'{source}: rxd\'s server address must be "host:port", not {address!r}')
    return address


def find_door(socket_flag: str | None = None, env: dict[str, str] | None = None) -> Door:
    env = dict(os.environ) if env is None else env
    if socket_flag:
        return Door("socket", socket_flag, "--socket")
    if env.get(SOCKET_ENV):
        return Door("socket", env[SOCKET_ENV], f"${SOCKET_ENV}")
    config_path = env.get(CONFIG_ENV) or CONFIG_FILE
    config = _read_config(config_path)
    munge_socket = env.get(MUNGE_SOCKET_ENV) or config.get("munge_socket") or None
    if env.get(SERVER_ENV):
        address = check_server(env[SERVER_ENV], f"${SERVER_ENV}")
        return Door("network", address, f"${SERVER_ENV}", munge_socket)
    if config.get("server"):
        address = check_server(config["server"], config_path)
        return Door("network", address, config_path, munge_socket)
    return Door("socket", DEFAULT_SOCKET, "default")


def munge_header(
    door: Door, method: str, target: str, body: bytes, body_sha256: bytes | None = None
) -> tuple[str, str]:
    """The header carrying a MUNGE credential of this process's uid, bound to this request
    (``body_sha256``: the digest of a body streamed rather than held)."""
    # ctypes and libmunge load here, on the network path only.
    from rxslurm.slurm.munge import MungeError, encode
    from rxslurm.slurm.request_binding import HEADER, bind

    binding = bind(method, target, body, os.getuid(), body_sha256=body_sha256)
    try:
        credential = encode(binding.to_payload(), socket=door.munge_socket)
    except MungeError as exc:
        raise DoorError(f"cannot make a MUNGE credential: {exc.message}") from None
    return HEADER, credential


def munge_check(door: Door | None) -> dict[str, object]:
    """Whether this host's munged makes and proves a credential (needed for the network door)."""
    from rxslurm.slurm.munge import MungeError, decode, encode

    socket = door.munge_socket if door else None
    try:
        decoded = decode(encode(b"rxctl doctor", socket=socket), socket=socket)
    except MungeError as exc:
        needed = door is not None and door.kind == "network"
        detail = f"MUNGE does not work here: {exc.message}"
        # On the service host's socket MUNGE is not needed; say so rather than fail.
        return {"ok": not needed, "detail": detail if needed else detail + " (not needed here)"}
    return {"ok": True, "detail": f"munged answers (credential of uid {decoded.uid})"}
