"""What every rxctl command module shares: --json, the project option, errors as one line."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

from rxslurm.cli import render
from rxslurm.cli.client import Client, ClientError
from rxslurm.cli.project_choice import PROJECT_ENV, PROJECT_FLAGS
from rxslurm.protocol import routes

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("json_", "--json", is_flag=True, help="Print JSON instead of text.")


def complete_projects(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Shell completion: the caller's projects, as rxd lists them (nothing if it is not there)."""
    from click.shell_completion import CompletionItem

    root = ctx.find_root()
    try:
        mine = Client(root.params.get("socket_"), timeout=5).get(routes.CONTAINERS)["containers"]
    except ClientError:
        return []
    names = sorted(str(c["project"]) for c in mine)
    return [CompletionItem(name) for name in names if name.startswith(incomplete)]


project_option = click.option(
    *PROJECT_FLAGS,
    "project",
    metavar="PROJECT",
    shell_complete=complete_projects,
    help=f"The project (default: ${PROJECT_ENV}, else your only project).",
)


class ProjectNamedFirst(click.Command):
    """A command that takes the project as `-P`/`--project` (else $RX_PROJECT, else the caller's
    only project) and used to take it as its first argument (`rxctl project show alpha`).

    That old spelling still works, undocumented, with a one-line note on stderr: when no project
    option is given and there is one word more than the command's arguments, the first word is
    the project.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        named_first = self._named_first(ctx, args)
        ctx.meta[_meta_key(ctx)] = named_first
        rest = super().parse_args(ctx, args)
        if named_first:
            ctx.params["project"] = ctx.params.pop(_NAMED_FIRST)
            click.echo(
                f"Note: `{ctx.command_path} NAME` is deprecated; "
                f"use `{ctx.command_path} --project NAME`.",
                err=True,
            )
        return rest

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)
        if ctx.meta.get(_meta_key(ctx)):
            return [click.Argument([_NAMED_FIRST]), *params]
        return params

    def _named_first(self, ctx: click.Context, args: list[str]) -> bool:
        try:
            # The words left over once the command's own arguments have theirs.
            options, extra, _ = self.make_parser(ctx).parse_args(args=list(args))
        except click.UsageError:
            return False  # the real parse says what is wrong
        return len(extra) == 1 and options.get("project") is None


_NAMED_FIRST = "project_named_first"


def _meta_key(ctx: click.Context) -> str:
    # ctx.meta is shared by the whole chain of contexts: the key names this command.
    return f"rxslurm.{_NAMED_FIRST}:{ctx.command_path}"


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


def echo_lines(lines: list[str]) -> None:
    if lines:
        echo("\n".join(lines))


def list_options(func: F) -> F:
    """`--noheader` and `--format` (as squeue's -h and -o) for a command that prints a list; the
    command gets them as `shape`."""

    @click.option(
        "--format",
        "format_",
        metavar="COL,...",
        help="Only these columns, in this order: names as in the header, e.g. project,state.",
    )
    @click.option("--noheader", is_flag=True, help="No header line, and nothing for an empty list.")
    @wraps(func)
    def wrapper(*args: Any, noheader: bool, format_: str | None, **kwargs: Any) -> Any:
        try:
            return func(*args, shape=render.Shape(noheader, format_), **kwargs)
        except render.BadFormat as exc:
            raise click.UsageError(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def list_command(func: F) -> F:
    """A command that prints a list: `--noheader`, `--format` (as `shape`) and `--json`, the
    client, and errors as one line."""
    return list_options(json_option(click.pass_obj(api_errors(func))))  # type: ignore[return-value]


def print_list(
    answer: Mapping[str, Any],
    key: str,
    lines: Callable[[Any, render.Shape], list[str]],
    json_: bool,
    shape: render.Shape,
) -> None:
    """A list as rxd answered it (`--json`), or the table `lines` makes of `answer[key]`."""
    if json_:
        emit_json(answer)
    else:
        echo_lines(lines(answer[key], shape))
