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
CONVENTIONS = """\
Every command takes `-h`/`--help`; `man ./docs/rxctl.1` is the same reference as a man page.

- **The project**: every command that acts on a project takes `-P`/`--project PROJECT`, else
  `$RX_PROJECT`, else your only project; `-p` is `--partition`, as in sbatch. The one exception is
  `project create NAME`: a new name is its argument, because the option and `$RX_PROJECT` name a
  project that exists, and a project made from a stale `$RX_PROJECT` would be a quiet mistake.
  Where `--project` narrows what an admin command covers (`admin audit`, `admin quota set`) it is
  never guessed. The old `rxctl project show NAME` form (the project as the first argument of
  `project` subcommands and `admin stop`) still works, with a note on stderr.
- **Slurm's units**: `--mem 16G` (a bare number is MB), `-t`/`--time 1-00:00:00` (a bare number is
  minutes), as sbatch reads them.
- **Output**: `--json` prints the API's answer on stdout; every list is an object with one key
  holding the array (`{"containers": [...]}`). Lists take `--noheader` and `--format COL,...`
  (column names as in the header), as squeue's `-h` and `-o`.
- **Exit status**: 0 ok; 1 rxd refused or could not be reached (`Error: ...`, one line on stderr);
  2 a usage error. `exec` and `shell` exit with the command's status, and 125 when rxctl itself
  fails (as `docker run`).
- **Shell completion** of commands, options and project names: add
  `eval "$(_RXCTL_COMPLETE=bash_source rxctl)"` to `~/.bashrc` (`zsh_source` in `~/.zshrc`;
  `_RXCTL_COMPLETE=fish_source rxctl | source` for fish).

"""


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
        + CONVENTIONS
        + "\n".join(sections)
    )


def main() -> None:
    click.echo(render(), nl=False)


if __name__ == "__main__":
    main()
