"""An exec or shell session as rxctl shows it: the waking line on stderr, then the command.

Standard library only: `rxctl exec` runs this before (and without) importing click.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from rxslurm.cli import exec_client
from rxslurm.cli.client import Client
from rxslurm.cli.render import safe
from rxslurm.protocol.exec_wire import exec_socket_for

# rxctl exec and shell exit with the command's status, so their own failures need a status a
# command is unlikely to use: docker run's 125 ("the docker command itself failed"). 126 and 127
# (cannot run, not found) come from the container's side, as there.
SESSION_FAILED = 125


class WaitLine:
    """Shows a waking container's progress on stderr: one line redrawn on a terminal, else each
    change once."""

    def __init__(self, project: str, stream: TextIO | None = None) -> None:
        self.project = project
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self.text: str | None = None

    def line(self) -> str:
        return f"waking {self.project}: {self.text} ({time.monotonic() - self.started:.0f}s)"

    def progress(self, message: dict[str, Any]) -> None:
        text = safe(str(message.get("progress")))
        if text == self.text:
            return
        self.text = text
        if self.tty:
            self.redraw()
        else:
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def redraw(self) -> None:
        if self.tty and self.text is not None:
            self.stream.write("\r\033[K" + self.line())
            self.stream.flush()

    def done(self) -> None:
        if self.tty and self.text is not None:
            self.stream.write("\r\033[K")
            self.stream.flush()
        self.text = None


def run_session(client: Client, project: str, request: dict[str, Any]) -> int:
    """Run the session; the command's exit status, or exec_client.ExecError."""
    wait = WaitLine(project)
    request = {"project": project, **request}
    hooks: dict[str, Any] = {
        "on_progress": wait.progress,
        "on_tick": wait.redraw if wait.tty else None,
        "on_ready": wait.done,
    }
    try:
        if client.door is not None and client.door.kind == "network":
            # Across hosts: the same protocol over the network door (never the local socket).
            from rxslurm.cli import exec_remote

            return exec_remote.run(client.door, request, **hooks)
        return exec_client.run(exec_socket_for(client.path), request, **hooks)
    finally:
        wait.done()
