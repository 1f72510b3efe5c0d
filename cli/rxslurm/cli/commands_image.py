"""`rxctl image ...`: the group only. Each subcommand lives in its own module, imported when it
runs (as rxctl's top-level commands are, rxslurm/cli/main.py): builds and drafts in
commands_image_build.py, setting and pulling the project's image in commands_image_set.py."""

from __future__ import annotations

import click

from rxslurm.cli.main import LazyGroup

# Subcommand -> "module:attribute", imported on first use.
LAZY_IMAGE_COMMANDS = {
    "build": "rxslurm.cli.commands_image_build:build",
    "cancel": "rxslurm.cli.commands_image_build:cancel",
    "delete": "rxslurm.cli.commands_image_build:delete",
    "draft": "rxslurm.cli.commands_image_build:draft",
    "list": "rxslurm.cli.commands_image_build:list_",
    "logs": "rxslurm.cli.commands_image_build:logs",
    "pull": "rxslurm.cli.commands_image_set:pull",
    "rename": "rxslurm.cli.commands_image_build:rename",
    "set": "rxslurm.cli.commands_image_set:set_",
    "status": "rxslurm.cli.commands_image_build:status",
}


@click.group(cls=LazyGroup, lazy=LAZY_IMAGE_COMMANDS)
def image() -> None:
    """Build images as Slurm jobs from drafts, and set or pull the project's image.

    Example: rxctl image build --project alpha main
    """
