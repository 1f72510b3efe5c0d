"""`rxctl env ...` and `rxctl secret ...`: a project's environment variables and secrets, which
every command in its container gets (docs/exec.md#environment-and-secrets)."""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import click

from rxslurm.cli import render
from rxslurm.cli.client import Client
from rxslurm.cli.common import (
    api_errors,
    echo,
    emit_json,
    json_option,
    list_command,
    print_list,
    project_option,
)
from rxslurm.cli.project_choice import choose_project
from rxslurm.protocol import env_vars, routes


def assignments(texts: Sequence[str]) -> dict[str, str]:
    """KEY=VALUE words, checked here as rxd checks them: one line names the first bad one."""
    try:
        return env_vars.parse_assignments(texts)
    except env_vars.BadVariable as exc:
        raise click.ClickException(str(exc)) from None


def _done(answer: Any, json_: bool, message: str) -> None:
    if json_:
        emit_json(answer)
    else:
        echo(message)


@click.group("env")
def env() -> None:
    """Set, remove and list a project's environment variables.

    Every command in the container gets them (rxctl exec, rxctl shell, the container's start)
    and so do batch steps (rxctl run). Owners and managers set them; every member sees names and
    values. For passwords and tokens use `rxctl secret`.

    Example: rxctl env set --project alpha WANDB_PROJECT=alpha OMP_NUM_THREADS=8
    """


@env.command("set")
@project_option
@click.argument("assignment", nargs=-1, required=True, metavar="KEY=VALUE...")
@json_option
@click.pass_obj
@api_errors
def env_set(client: Client, project: str | None, assignment: tuple[str, ...], json_: bool) -> None:
    """Set variables of a project (KEY=VALUE each; the value may be empty).

    Names are POSIX names; names Apptainer, Slurm or rx-slurm read (APPTAINER*, SINGULARITY*,
    SLURM_*, RXSLURM_*, LD_*, PATH, HOME...) are refused with the reason. Running commands get
    them at their next exec; the container's start at its next start.

    Example: rxctl env set --project alpha WANDB_PROJECT=alpha
    """
    variables = assignments(assignment)
    name = choose_project(client, project)
    answer = client.request("PATCH", routes.path(routes.PROJECT_ENV, name), {"set": variables})
    _done(answer, json_, f"Set {', '.join(sorted(variables))} in {name}.")


@env.command("unset")
@project_option
@click.argument("names", nargs=-1, required=True, metavar="KEY...")
@json_option
@click.pass_obj
@api_errors
def env_unset(client: Client, project: str | None, names: tuple[str, ...], json_: bool) -> None:
    """Remove variables of a project.

    Example: rxctl env unset --project alpha WANDB_PROJECT
    """
    name = choose_project(client, project)
    answer = client.request("PATCH", routes.path(routes.PROJECT_ENV, name), {"unset": list(names)})
    _done(answer, json_, f"Removed {', '.join(sorted(set(names)))} from {name}.")


def env_lines(variables: Sequence[Mapping[str, Any]], shape: render.Shape) -> list[str]:
    rows = [
        (v.get("name"), v.get("value"), v.get("set_by"), render.when(v.get("set_at")))
        for v in variables
    ]
    return render.table(("NAME", "VALUE", "SET BY", "SET AT"), rows, shape, empty="no variables")


@env.command("list")
@project_option
@list_command
def env_list(client: Client, project: str | None, json_: bool, shape: render.Shape) -> None:
    """List a project's variables with their values.

    Example: rxctl env list --project alpha
    """
    name = choose_project(client, project)
    print_list(
        client.get(routes.path(routes.PROJECT_ENV, name)), "variables", env_lines, json_, shape
    )


@click.group("secret")
def secret() -> None:
    """Set, remove and list a project's secrets.

    A secret reaches every command run in the container (rxctl exec, rxctl shell) as an
    environment variable of its name; it never appears in a command line, a log, the audit log
    or `rxctl status`. Only rxd (root) can read the stored value; members see names, who set
    them and when. Batch steps (rxctl run) do not get secrets.

    Example: rxctl secret set --project alpha HF_TOKEN < token.txt
    """


def read_secret(name: str) -> str:
    """The value from stdin: typed without echo at a terminal, else all of stdin (one final
    newline dropped, as `echo` and editors add it)."""
    if os.isatty(0):
        return getpass.getpass(f"Value of {name} (not shown): ")
    raw = sys.stdin.buffer.read(env_vars.MAX_VALUE + 3)
    if len(raw) > env_vars.MAX_VALUE + 2:
        raise click.ClickException(f"the value on stdin is longer than {env_vars.MAX_VALUE} bytes")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise click.ClickException("the value on stdin is not UTF-8 text") from None
    return text.removesuffix("\n").removesuffix("\r")


@secret.command("set")
@project_option
@click.argument("secret_name", metavar="SECRET")
@json_option
@click.pass_obj
@api_errors
def secret_set(client: Client, project: str | None, secret_name: str, json_: bool) -> None:
    """Set a secret of a project, reading its value from stdin (never from the command line).

    At a terminal the value is typed without echo. Owners and managers set secrets; running
    commands get them at their next exec.

    Example: rxctl secret set --project alpha HF_TOKEN < token.txt
    """
    try:
        env_vars.check_name(secret_name, "secret")
    except env_vars.BadVariable as exc:
        raise click.ClickException(str(exc)) from None
    value = read_secret(secret_name)
    name = choose_project(client, project)
    answer = client.request(
        "PUT", routes.path(routes.PROJECT_SECRET, name, secret_name), {"value": value}
    )
    _done(answer, json_, f"Set secret {secret_name} in {name}.")


@secret.command("rm")
@project_option
@click.argument("secret_name", metavar="SECRET")
@json_option
@click.pass_obj
@api_errors
def secret_rm(client: Client, project: str | None, secret_name: str, json_: bool) -> None:
    """Remove a secret of a project.

    Example: rxctl secret rm --project alpha HF_TOKEN
    """
    name = choose_project(client, project)
    answer = client.request("DELETE", routes.path(routes.PROJECT_SECRET, name, secret_name))
    _done(answer, json_, f"Removed secret {secret_name} from {name}.")


def secret_lines(secrets: Sequence[Mapping[str, Any]], shape: render.Shape) -> list[str]:
    rows = [(s.get("name"), s.get("set_by"), render.when(s.get("set_at"))) for s in secrets]
    return render.table(("NAME", "SET BY", "SET AT"), rows, shape, empty="no secrets")


@secret.command("list")
@project_option
@list_command
def secret_list(client: Client, project: str | None, json_: bool, shape: render.Shape) -> None:
    """List a project's secrets: names, who set them and when; never their values.

    Example: rxctl secret list --project alpha
    """
    name = choose_project(client, project)
    print_list(
        client.get(routes.path(routes.PROJECT_SECRETS, name)), "secrets", secret_lines, json_, shape
    )
