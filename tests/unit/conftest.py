"""Unit tests that invoke one rxctl command on its own (not through `rxctl`'s group) make click
cache that command's help option without the group's `-h` (click >= 8.1.8 caches it on the
command object); forget it after each test, so a later test of `rxctl CMD -h` sees rxctl's."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest


def _commands(group: click.Group, ctx: click.Context) -> Iterator[click.Command]:
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None:
            continue
        yield command
        if isinstance(command, click.Group):
            yield from _commands(command, ctx)


@pytest.fixture(autouse=True)
def _forget_cached_help_options() -> Iterator[None]:
    yield
    from rxslurm.cli.main import cli

    ctx = click.Context(cli, **cli.context_settings)
    for command in _commands(cli, ctx):
        command._help_option = None
