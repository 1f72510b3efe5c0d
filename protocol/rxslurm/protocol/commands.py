"""Detached commands as both ends name them: a command's id and the signals `rxctl kill` may
send (docs/exec.md, Detached commands)."""

from __future__ import annotations

import re

# A detached command's id: 8 lowercase hexadecimal digits, as rxd makes them and `rxctl ps`
# shows them; its output file is exec-<id>.out.
COMMAND_ID = re.compile(r"[0-9a-f]{8}", re.ASCII)

# What `rxctl kill --signal` may send to a detached command's step; KILL ends what ignores TERM.
KILL_SIGNALS = ("TERM", "INT", "HUP", "QUIT", "USR1", "USR2", "KILL")
