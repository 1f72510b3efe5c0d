"""An exec or shell session as rxctl shows it: the waking line on stderr, then the command.

Standard library only: `rxctl exec` runs this before (and without) importing click.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from rxslurm.cli import exec_client
from rxslurm.cli.client import Client
from rxslurm.protocol.durations import duration
from rxslurm.protocol.exec_wire import exec_socket_for

# rxctl exec and shell exit with the command's status, so their own failures need a status a
# command is unlikely to use: docker run's 125 ("the docker command itself failed"). 126 and 127
# (cannot run, not found) come from the container's side, as there.
SESSION_FAILED = 125
# How a command runs: "agent" only through the container's exec agent (an error if there is
# none), "step" only as a Slurm step; unset (or anything else), the agent when it answers and a
# step otherwise. For tests and benchmarks; people need not set it.
EXEC_PATH_ENV = "RXSLURM_EXEC_PATH"


class WaitLine:
    """Shows a waking container's progress on stderr: what it waits for (its state, and the
    bottleneck in rxd's words) and for how long; one line redrawn on a terminal, else each change
    once."""

    def __init__(
        self,
        project: str,
        stream: TextIO | None = None,
        verb: str = "waking",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.project = project
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.verb = verb
        self.clock = clock
        self.started = clock()
        self.text: str | None = None

    def line(self) -> str:
        return f"{self.verb} {self.project}: {self.text} ({duration(self.clock() - self.started)})"

    def progress(self, message: dict[str, Any]) -> None:
        from rxslurm.cli.render import safe  # only when there is a wait to show

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

    def stopped(self, note: str) -> None:
        """The caller stopped waiting: rxd's word on what the container does now, on its own
        line."""
        from rxslurm.cli.render import safe

        self.done()
        self.stream.write(safe(note) + "\n")
        self.stream.flush()


def run_session(client: Client, project: str, request: dict[str, Any], verb: str = "waking") -> int:
    """Run the session; the command's exit status, or exec_client.ExecError. A request without
    a `timeout` waits for the container as long as the caller does (rxd's own limit applies only
    to clients that name none)."""
    wait = WaitLine(project, verb=verb)
    request = {"project": project, "timeout": None, **request}
    hooks: dict[str, Any] = {
        "on_progress": wait.progress,
        "on_tick": wait.redraw if wait.tty else None,
        "on_ready": wait.done,
        "on_stopped": wait.stopped,
    }
    path = os.environ.get(EXEC_PATH_ENV, "")
    runs_commands = not request.get("wait")
    munge_socket = client.door.munge_socket if client.door else None
    if runs_commands and path != "step":
        request["agent"] = "only" if path == "agent" else True
    # While rxd decides, load what talking to the agent takes: that time is otherwise paid after.
    warm = _prepare_agent if "agent" in request else None
    try:
        try:
            return _converse(client, request, hooks, on_sent=warm)
        except exec_client.ExecError as exc:
            if "agent" not in request or str(exc) != "unknown request field 'agent'":
                raise
            # An rxd from before the agent: the step path, as it knows it.
            return _converse(client, {k: v for k, v in request.items() if k != "agent"}, hooks)
        except exec_client.UseAgent as use:
            wait.done()
            from rxslurm.cli import agent_client

            try:
                return agent_client.run(use.grant, request, munge_socket)
            except agent_client.AgentUnavailable as exc:
                if path == "agent":
                    raise exec_client.ExecError(f"the container's exec agent: {exc}") from None
            # Not ready, gone, unreachable: the same command as a Slurm step.
            return _converse(client, {**request, "agent": False}, hooks)
    finally:
        wait.done()


def _converse(
    client: Client,
    request: dict[str, Any],
    hooks: dict[str, Any],
    on_sent: Callable[[], None] | None = None,
) -> int:
    if client.door is not None and client.door.kind == "network":
        # Across hosts: the same protocol over the network door (never the local socket).
        from rxslurm.cli import exec_remote

        return exec_remote.run(client.door, request, **hooks)
    return exec_client.run(exec_socket_for(client.path), request, on_sent=on_sent, **hooks)


def _prepare_agent() -> None:
    from rxslurm.cli import agent_client

    agent_client.prepare()
