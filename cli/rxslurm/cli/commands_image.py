"""`rxctl image ...`: a project's images. Only the group and its table live here; each command
lives in the module the table names and is imported when it runs (as in main.py)."""

from __future__ import annotations

import click

from rxslurm.cli.main import LazyGroup

# Subcommand -> "module:attribute", imported on first use.
IMAGE_COMMANDS = {
    "pull": "rxslurm.cli.commands_image_set:pull",
    "set": "rxslurm.cli.commands_image_set:set_",
}


@click.group(cls=LazyGroup, lazy=IMAGE_COMMANDS)
def image() -> None:
    """A project's image: set it, pull it (and, with builds, build it).

    Example: rxctl image set --project alpha python:3.12-slim
    """
