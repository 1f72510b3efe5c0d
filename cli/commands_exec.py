"""`rxctl exec` and `rxctl shell`: a command or a shell in a project's container."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

import click

from rxslurm.cli import exec_client
from rxslurm.cli.client import Client
from rxslurm.cli.main import api_errors
from rxslurm.cli.project_choice import choose_project, project_option

no_wake_option = click.option(
    "--no-wake", is_flag=True, help="Fail instead of waking a container that is not running."
)
cwd_option = click.option(
    "--cwd",
    metavar="DIR",
    default="/workspace",
    show_default=True,
    help="Working folder inside the container.",
)


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
        text = str(message.get("progress"))
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


def run_session(client: Client, project: str, request: dict[str, Any]) -> None:
    """Run the session and exit with the command's status."""
    if client.door is not None and client.door.kind == "network":
        # Exec across hosts (issue 12, item 3) is not built yet; never fall back to a local socket.
        raise click.ClickException(
            "exec is not served over the network door yet: run it on rxd's host"
        )
    wait = WaitLine(project)
    request = {"project": project, **request}
    try:
        code = exec_client.run(
            exec_client.exec_socket_for(client.path),
            request,
            on_progress=wait.progress,
            on_tick=wait.redraw if wait.tty else None,
            on_ready=wait.done,
        )
    except exec_client.ExecError as exc:
        wait.done()
        raise click.ClickException(str(exc)) from None
    wait.done()
    sys.exit(code)


@click.command(
    "exec",
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
)
@project_option
@no_wake_option
@cwd_option
@click.option("-t", "--tty", is_flag=True, help="Give the command a terminal (needs one here).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
@api_errors
def exec_(
    client: Client,
    project: str | None,
    no_wake: bool,
    cwd: str,
    tty: bool,
    command: tuple[str, ...],
) -> None:
    """Run a command in a project's container, waking it if needed; exits with its status.

    The command runs as the container's user, in /workspace, with your stdin, stdout and
    stderr. Put `--` before it when it has options of its own.

    Example: rxctl exec -p alpha -- python train.py --epochs 3
    """
    if tty and not os.isatty(0):
        raise click.ClickException("-t needs a terminal on stdin")
    name = choose_project(client, project)
    request: dict[str, Any] = {"argv": list(command), "wake": not no_wake, "cwd": cwd}
    if tty:
        request.update(tty=True, term=exec_client.terminal_type())
    run_session(client, name, request)


@click.command()
@project_option
@no_wake_option
@cwd_option
@click.pass_obj
@api_errors
def shell(client: Client, project: str | None, no_wake: bool, cwd: str) -> None:
    """Open an interactive shell in a project's container, waking it if needed.

    Example: rxctl shell -p alpha
    """
    if not os.isatty(0):
        raise click.ClickException(
            "rxctl shell needs a terminal; run a command with `rxctl exec -- CMD` instead"
        )
    name = choose_project(client, project)
    request = {
        "shell": True,
        "tty": True,
        "term": exec_client.terminal_type(),
        "wake": not no_wake,
        "cwd": cwd,
    }
    run_session(client, name, request)
