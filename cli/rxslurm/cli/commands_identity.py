"""Binding your Linux account to your platform identity: `rxctl bind` and `rxctl unbind`."""

from __future__ import annotations

from typing import Any

import click

from rxslurm.cli.client import Client
from rxslurm.cli.common import api_errors, echo, emit_json, json_option
from rxslurm.protocol import routes


def _binding_text(verb: str, binding: dict[str, Any]) -> str:
    return (
        f"{verb} {binding['user']} (uid {binding['uid']}) "
        f"{'to' if verb == 'Bound' else 'from'} platform user {binding['platform_user']}"
    )


@click.command()
@click.argument("code")
@json_option
@click.pass_obj
@api_errors
def bind(client: Client, code: str, json_: bool) -> None:
    """Bind your Linux account to a platform user with a one-time code.

    The code comes from the research platform or from an rx-slurm admin (`rxctl admin code`).

    Example: rxctl bind 7KQ2-M9XD
    """
    binding = client.post(routes.BIND, {"code": code})
    if json_:
        emit_json(binding)
    else:
        echo(_binding_text("Bound", binding))


@click.command()
@json_option
@click.pass_obj
@api_errors
def unbind(client: Client, json_: bool) -> None:
    """Remove the binding between your Linux account and your platform user.

    Example: rxctl unbind
    """
    binding = client.post(routes.UNBIND)
    if json_:
        emit_json(binding)
    else:
        echo(_binding_text("Unbound", binding))
