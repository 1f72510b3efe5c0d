"""What every rxctl command module shares: --json, the project option, errors as one line."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from rxslurm.cli import render
from rxslurm.cli.client import ClientError
from rxslurm.cli.project_choice import PROJECT_ENV, PROJECT_FLAGS

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("json_", "--json", is_flag=True, help="Print JSON instead of text.")

project_option = click.option(
    *PROJECT_FLAGS,
    "project",
    metavar="PROJECT",
    help=f"The project (default: ${PROJECT_ENV}, else your only project).",
)


def api_errors(func: F) -> F:
    """Turn client errors into click's one-line `Error: ...` and exit 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ClientError as exc:
            raise click.ClickException(render.safe(str(exc))) from None

    return wrapper  # type: ignore[return-value]


def emit_json(data: Any) -> None:
    # JSON escapes control characters, and ensure_ascii every other non-ASCII one.
    click.echo(render.json_text(data))


def echo(text: str = "", err: bool = False) -> None:
    """Print text for people; what came from rxd in it cannot drive the terminal."""
    click.echo(render.safe_text(text), err=err)
