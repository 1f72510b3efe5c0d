"""Where rxd, rxctl and Slurm's hooks find each other and their settings on a host.

rxctl and the hooks fall back to rxd's default socket when nothing else names one, so the
default is the daemon's, written once here. (The exec socket's name is in exec_wire.)
"""

from __future__ import annotations

# rxd's API socket, when neither [daemon] socket, --socket nor $RXCTL_SOCKET names another.
DEFAULT_SOCKET = "/run/rxslurm/rxd.sock"
DEFAULT_LEDGER = "/var/lib/rxslurm/ledger.db"
CONFIG_DIR = "/etc/rxslurm"
DAEMON_CONFIG = f"{CONFIG_DIR}/rxd.toml"
# rxctl's own settings on a host that reaches rxd over the network door.
CLI_CONFIG = f"{CONFIG_DIR}/rxctl.toml"
# The job hooks' targets, one socket path or "host:port" a line.
HOOK_TARGETS = f"{CONFIG_DIR}/hook-sockets"
PLATFORM_TOKEN = f"{CONFIG_DIR}/platform.token"
