"""`rxctl exec` and `rxctl shell`: a command or a shell in a project's container."""

from __future__ import annotations

import os
import sys
from functools import wraps
from typing import Any

import click

from rxslurm.cli import exec_client, render, session, units
from rxslurm.cli.client import Client, ClientError
from rxslurm.cli.common import F, project_option
from rxslurm.cli.project_choice import choose_project
from rxslurm.protocol import env_vars

no_wake_option = click.option(
    "--no-wake", is_flag=True, help="Fail instead of waking a container that is not running."
)
timeout_option = click.option(
    "--timeout",
    type=units.SECONDS,
    metavar="DURATION",
    help="Give up waking after this long (90s, 10m, 2h, or [D-]H:M:S as sbatch); "
    "the default is to wait as long as it takes.",
)
cwd_option = click.option(
    "--cwd",
    metavar="DIR",
    default="/workspace",
    show_default=True,
    help="Working folder inside the container.",
)


class SessionFailed(click.ClickException):
    """rxctl could not run the command: `Error: ...`, and an exit status of its own."""

    exit_code = session.SESSION_FAILED


def session_errors(func: F) -> F:
    """Every failure of rxctl's own, as SessionFailed (exit 125), never the command's status."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ClientError, exec_client.ExecError) as exc:
            raise SessionFailed(render.safe(str(exc))) from None
        except click.ClickException as exc:
            if isinstance(exc, SessionFailed):
                raise
            raise SessionFailed(exc.message) from None

    return wrapper  # type: ignore[return-value]


def run_session(client: Client, project: str, request: dict[str, Any]) -> None:
    """Run the session and exit with the command's status."""
    sys.exit(session.run_session(client, project, request))


@click.command(
    "exec",
    context_settings={"allow_interspersed_args": False},
)
@project_option
@no_wake_option
@timeout_option
@cwd_option
@click.option("-t", "--tty", is_flag=True, help="Give the command a terminal (needs one here).")
@click.option(
    "-d",
    "--detach",
    is_flag=True,
    help="Start the command and return at once, printing its id; it runs on without rxctl "
    "(`rxctl ps`, `rxctl logs --exec ID`, `rxctl kill ID`).",
)
@click.option(
    "-e",
    "--env",
    "env",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set a variable for this command, over the project's (repeatable). It is visible in "
    "your shell history: use `rxctl secret` for secrets.",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
@session_errors
def exec_(
    client: Client,
    project: str | None,
    no_wake: bool,
    timeout: int | None,
    cwd: str,
    tty: bool,
    detach: bool,
    env: tuple[str, ...],
    command: tuple[str, ...],
) -> None:
    """Run a command in a project's container, waking it if needed; exits with its status.

    The command runs as the container's user, in /workspace, with your stdin, stdout and
    stderr. Put `--` before it when it has options of its own. While the container wakes, a
    line on stderr shows its state, what it waits for and for how long; it waits as long as it
    takes unless --timeout says otherwise. Ctrl-C stops waiting (exit 130) and says whether the
    container keeps starting. With --detach the command runs on its own (its output goes to
    `rxctl logs --exec ID`) and rxctl returns at once. When rxctl itself fails (rxd
    unreachable, no such project, a usage error, the --timeout passed) it exits 125, as
    `docker run` does.

    The command gets the project's variables and secrets (rxctl env, rxctl secret) in its
    environment, and those given with -e over them.

    Example: rxctl exec --project alpha -e EPOCHS=3 --timeout 30m -- python train.py
    """
    if tty and detach:
        raise click.UsageError("-t and --detach cannot be used together")
    if tty and not os.isatty(0):
        raise click.ClickException("-t needs a terminal on stdin")
    try:
        variables = env_vars.parse_assignments(env)
    except env_vars.BadVariable as exc:
        raise click.ClickException(str(exc)) from None
    name = choose_project(client, project)
    if detach:
        from rxslurm.cli.commands_ps import detach as start_detached

        start_detached(client, name, command, cwd, not no_wake, timeout, variables)
        return
    request: dict[str, Any] = {
        "argv": list(command),
        "wake": not no_wake,
        "cwd": cwd,
        "timeout": timeout,
    }
    if variables:
        request["env"] = variables
    if tty:
        request.update(tty=True, term=exec_client.terminal_type())
    run_session(client, name, request)


@click.command()
@project_option
@no_wake_option
@timeout_option
@cwd_option
@click.pass_obj
@session_errors
def shell(
    client: Client, project: str | None, no_wake: bool, timeout: int | None, cwd: str
) -> None:
    """Open an interactive shell in a project's container, waking it if needed.

    Waits for the container as `rxctl exec` does. Exits with the shell's status; 125 when
    rxctl itself fails, as `rxctl exec`.

    Example: rxctl shell --project alpha
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
        "timeout": timeout,
    }
    run_session(client, name, request)
