"""`rxctl exec` and `rxctl shell`: a command or a shell in a project's container."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from rxslurm.cli import exec_client, render, session
from rxslurm.cli.client import Client
from rxslurm.cli.common import api_errors, project_option
from rxslurm.cli.project_choice import choose_project

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


def run_session(client: Client, project: str, request: dict[str, Any]) -> None:
    """Run the session and exit with the command's status."""
    try:
        code = session.run_session(client, project, request)
    except exec_client.ExecError as exc:
        raise click.ClickException(render.safe(str(exc))) from None
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
