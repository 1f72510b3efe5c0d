"""Generate docs/cli.md, the rxctl reference, from the click command tree.

Run: .venv/bin/python -m rxslurm.cli.docs > docs/cli.md
Every command (and every command added later) is picked up by walking the tree;
tests/test_cli_help.py fails when docs/cli.md is out of date.
"""

from __future__ import annotations

from collections.abc import Iterator

import click

from rxslurm.cli.main import cli

# Fixed, so the generated text does not depend on the terminal it was made in.
WIDTH = 100
REGENERATE = ".venv/bin/python -m rxslurm.cli.docs > docs/cli.md"


def walk(
    command: click.Command, parent: click.Context | None = None, name: str = "rxctl"
) -> Iterator[tuple[click.Context, click.Command]]:
    """Every command with its context, parents before children, children by name."""
    ctx = click.Context(
        command,
        info_name=name,
        parent=parent,
        terminal_width=WIDTH,
        max_content_width=WIDTH,
        **command.context_settings,
    )
    yield ctx, command
    if isinstance(command, click.Group):
        for sub_name in sorted(command.list_commands(ctx)):
            sub = command.get_command(ctx, sub_name)
            if sub is not None and not sub.hidden:
                yield from walk(sub, ctx, sub_name)


def render() -> str:
    sections = []
    for ctx, command in walk(cli):
        depth = ctx.command_path.count(" ")
        heading = "#" * min(depth + 2, 4)
        sections.append(
            f"{heading} `{ctx.command_path}`\n\n```text\n{command.get_help(ctx)}\n```\n"
        )
    return (
        "# rxctl reference\n\n"
        f"<!-- Generated from rxctl's help texts; do not edit. Regenerate: {REGENERATE} -->\n\n"
        "Every command takes `-h`/`--help`. Errors are one line on stderr, `Error: ...`, exit 1;\n"
        "`--json` prints the API's answer on stdout.\n\n" + "\n".join(sections)
    )


def main() -> None:
    click.echo(render(), nl=False)


if __name__ == "__main__":
    main()
