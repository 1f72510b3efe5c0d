"""systemd's readiness protocol without a dependency: one datagram to $NOTIFY_SOCKET.

The unit is Type=notify: systemd counts rxd as started only once every listener serves (the Unix
socket, the exec socket, the network door), so units ordered after it, and `systemctl start`,
wait for a daemon that answers. Outside systemd the variable is unset and this does nothing.
"""

from __future__ import annotations

import os
import socket

ENV = "NOTIFY_SOCKET"


def notify(state: str, env: dict[str, str] | None = None) -> bool:
    """Send `state` (e.g. "READY=1"); whether there was a socket to send it to."""
    address = (os.environ if env is None else env).get(ENV, "")
    if not address or address[0] not in "/@":
        return False  # unset, or a form (vsock) rxd does not need
    if address[0] == "@":
        address = "\0" + address[1:]  # Linux's abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError:  # systemd gone: nothing to tell
            return False
    return True
