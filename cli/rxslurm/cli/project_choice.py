"""Which project a command means: the project option, else $RX_PROJECT, else the caller's only one.

Standard library only: `rxctl exec` and `rxctl status` use it before click is imported.
"""

from __future__ import annotations

import os

from rxslurm.cli.client import Client, ClientError
from rxslurm.protocol import routes

PROJECT_ENV = "RX_PROJECT"
# The one place the option's spelling lives: click's option and rxctl's fast path read it here.
PROJECT_FLAGS = ("-P", "--project")


class NoProjectChosen(ClientError):
    """The caller named no project and rxd cannot tell which one they mean."""


def choose_project(client: Client, given: str | None) -> str:
    if given:
        return given
    from_env = os.environ.get(PROJECT_ENV)
    if from_env:
        return from_env
    mine = client.get(routes.CONTAINERS)["containers"]
    if len(mine) == 1:
        return str(mine[0]["project"])
    if not mine:
        raise NoProjectChosen("you are in no project; create one with `rxctl project create NAME`")
    names = ", ".join(c["project"] for c in mine)
    raise NoProjectChosen(
        f"you are in several projects ({names}); choose one with {PROJECT_FLAGS[0]} PROJECT"
    )
