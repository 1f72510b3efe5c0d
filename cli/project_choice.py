"""Which project a container command means: -p, else $RX_PROJECT, else the caller's only one."""

from __future__ import annotations

import os

import click

from rxslurm.cli.client import Client

PROJECT_ENV = "RX_PROJECT"

project_option = click.option(
    "-p",
    "--project",
    metavar="PROJECT",
    help=f"The project (default: ${PROJECT_ENV}, else your only project).",
)


def choose_project(client: Client, given: str | None) -> str:
    if given:
        return given
    from_env = os.environ.get(PROJECT_ENV)
    if from_env:
        return from_env
    mine = client.get("/v1/containers")["containers"]
    if len(mine) == 1:
        return str(mine[0]["project"])
    if not mine:
        raise click.ClickException(
            "you are in no project; create one with `rxctl project create NAME`"
        )
    names = ", ".join(c["project"] for c in mine)
    raise click.ClickException(f"you are in several projects ({names}); choose one with -p PROJECT")
