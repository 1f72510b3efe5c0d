"""`rxctl ps` and `rxctl kill`: what runs in a project's container (interactive sessions and
detached commands), and a signal to one detached command; `detach`, the start of one (`rxctl
exec --detach`)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import click

from rxslurm.cli import exec_client, render, session
from rxslurm.cli.client import Client
from rxslurm.cli.common import (
    api_errors,
    echo,
    emit_json,
    json_option,
    list_options,
    print_list,
    project_option,
)
from rxslurm.cli.project_choice import choose_project
from rxslurm.protocol import routes
from rxslurm.protocol.commands import KILL_SIGNALS


def command_text(argv: Sequence[Any]) -> str:
    """A command's words as one line for a table, each shown as it is unless quoting is needed."""
    import shlex  # only ps needs it

    return " ".join(shlex.quote(str(a)) for a in argv)


def ended(row: Mapping[str, Any]) -> str:
    if row.get("state") == "running":
        return "running"
    code = row.get("exit_code")
    how = "ended" if code is None else f"exited {code}"
    if code is None and row.get("signalled"):
        how = f"ended (sent {row['signalled']})"
    return how


def session_lines(rows: Sequence[Mapping[str, Any]], shape: render.Shape) -> list[str]:
    return render.table(
        ("ID", "KIND", "STARTED BY", "STARTED", "STATE", "STEP", "COMMAND"),
        [
            (
                r.get("id"),
                r.get("kind"),
                r.get("started_by"),
                render.when(r.get("started_at")),
                ended(r),
                r.get("step_id"),
                command_text(r.get("argv") or []),
            )
            for r in rows
        ],
        shape,
        empty="nothing runs in the container (no sessions, no detached commands)",
    )


@click.command()
@project_option
@list_options
@json_option
@click.pass_obj
@api_errors
def ps(client: Client, project: str | None, json_: bool, shape: render.Shape) -> None:
    """List what runs in the container: sessions and detached commands (manager+).

    Exec and shell sessions open now, detached commands running and the newest ended ones, each
    with who started it, when, and its Slurm step.

    Example: rxctl ps --project alpha
    """
    name = choose_project(client, project)
    answer = client.get(routes.path(routes.PROJECT_COMMANDS, name))
    if not json_ and not answer.get("steps_known", True):
        echo("note: Slurm did not answer; steps are as last recorded", err=True)
    print_list(answer, "sessions", session_lines, json_, shape)


@click.command()
@project_option
@click.option(
    "--signal",
    "signal_",
    type=click.Choice(KILL_SIGNALS, case_sensitive=False),
    default="TERM",
    show_default=True,
    help="The signal to send.",
)
@click.argument("command_id", metavar="ID")
@json_option
@click.pass_obj
@api_errors
def kill(client: Client, project: str | None, signal_: str, command_id: str, json_: bool) -> None:
    """Send a signal to a detached command that `rxctl ps` lists (manager+).

    The signal reaches the command's process group inside the container, so its trap runs; a
    command still running 30 s after TERM is killed. KILL ends the command's Slurm step at once
    (see docs/exec.md, also for a container without python3).

    Example: rxctl kill --project alpha 3f2a9c1e
    """
    name = choose_project(client, project)
    answer = client.post(
        routes.path(routes.PROJECT_COMMAND_SIGNAL, name, command_id),
        {"signal": signal_.upper()},
    )
    if json_:
        emit_json(answer)
    else:
        echo(f"sent {answer['signalled']} to {answer['id']} (step {answer['step_id']})")


def detach(
    client: Client,
    project: str,
    argv: Sequence[str],
    cwd: str,
    wake: bool,
    timeout: int | None,
    env: Mapping[str, str] | None = None,
) -> None:
    """`rxctl exec --detach`: wake the container if asked (and wait as `rxctl start --wait`),
    then start the command there (with `env`, its own variables) and print its id."""
    if wake:
        client.post(routes.path(routes.CONTAINER_ACTION, project, "start"))
        try:
            code = session.run_session(client, project, {"wait": True, "timeout": timeout})
        except exec_client.ExecError as exc:
            raise click.ClickException(render.safe(str(exc))) from None
        if code:
            sys.exit(code)  # Ctrl-C: rxd's words are on stderr already
    body: dict[str, Any] = {"argv": list(argv), "cwd": cwd}
    if env:
        body["env"] = dict(env)
    answer = client.post(routes.path(routes.PROJECT_COMMANDS, project), body)
    click.echo(render.safe(str(answer["id"])))
    echo(
        f"started in {project}'s container; `rxctl logs --project {project} --exec "
        f"{answer['id']} -f` follows its output, `rxctl kill --project {project} "
        f"{answer['id']}` stops it",
        err=True,
    )


COMMANDS = (ps, kill)
