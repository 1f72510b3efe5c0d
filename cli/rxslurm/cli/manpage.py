"""Generate docs/rxctl.1, rxctl's man page, from the click command tree (as docs/cli.md is).

Run: .venv/bin/python -m rxslurm.cli.manpage > docs/rxctl.1   (read it: man ./docs/rxctl.1)
tests/test_cli_help.py fails when docs/rxctl.1 is out of date.
"""

from __future__ import annotations

import inspect

import click

from rxslurm.cli.docs import walk
from rxslurm.cli.main import cli
from rxslurm.protocol.paths import DEFAULT_SOCKET

REGENERATE = ".venv/bin/python -m rxslurm.cli.manpage > docs/rxctl.1"

EXIT_STATUS = (
    ("0", "Success."),
    ("1", "rxd refused the request or could not be reached; the reason is on stderr."),
    ("2", "A usage error (an unknown option, a missing argument)."),
    (
        "125",
        "exec and shell only: rxctl itself failed (as docker run's 125); any other status "
        "of exec and shell is the command's own.",
    ),
)
ENVIRONMENT = (
    ("RXCTL_SOCKET", f"rxd's socket, when --socket is not given (default {DEFAULT_SOCKET})."),
    ("RX_PROJECT", "The project, when -P/--project is not given."),
    (
        "_RXCTL_COMPLETE",
        'Shell completion: eval "$(_RXCTL_COMPLETE=bash_source rxctl)" in ~/.bashrc '
        "(zsh_source, fish_source for those shells) completes commands, options and project "
        "names.",
    ),
)


def roff(text: str) -> str:
    """Text as roff: backslashes and hyphens escaped, no line starting as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(
        "\\&" + line if line.startswith((".", "'")) else line for line in text.splitlines()
    )


def section(ctx: click.Context, command: click.Command) -> list[str]:
    lines = [f'.SS "{ctx.command_path}"']
    usage = " ".join(command.collect_usage_pieces(ctx))
    lines += [f".B {roff(ctx.command_path)}", roff(usage), ".PP"]
    for paragraph in inspect.cleandoc(command.help or "").split("\n\n"):
        lines += [roff(" ".join(paragraph.split())), ".PP"]
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record and record[1]:  # arguments without help are in the usage line already
            lines += [".TP", f".B {roff(record[0])}", roff(record[1])]
    return lines


def render() -> str:
    root_help = inspect.cleandoc(cli.help or "").split("\n\n")[0]
    out = [
        f".\\\" Generated from rxctl's help texts; do not edit. Regenerate: {REGENERATE}",
        '.TH RXCTL 1 "" "rx-slurm" "User Commands"',
        ".SH NAME",
        "rxctl \\- " + roff(root_help.split(":", 1)[-1].strip()),
        ".SH SYNOPSIS",
        ".B rxctl",
        "[\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
        ".SH DESCRIPTION",
        roff(
            "rxctl talks to rxd, the rx-slurm daemon, over its Unix socket. Commands that act on "
            "a project take it as -P/--project PROJECT, else $RX_PROJECT, else your only project "
            "(project create takes the new name as its argument); -p/--partition is the Slurm "
            "partition, and memory and time take "
            "sbatch's forms (--mem 16G, --time 1-00:00:00). Every command takes -h/--help; those "
            "that show data take --json (lists: an object with one key holding the array), and "
            "lists take --noheader and --format COL,... as squeue's -h and -o."
        ),
        ".SH COMMANDS",
    ]
    for ctx, command in walk(cli):
        if ctx.parent is not None and not isinstance(command, click.Group):
            out += section(ctx, command)
    out.append(".SH EXIT STATUS")
    for code, words in EXIT_STATUS:
        out += [".TP", f".B {code}", roff(words)]
    out.append(".SH ENVIRONMENT")
    for name, words in ENVIRONMENT:
        out += [".TP", f".B {roff(name)}", roff(words)]
    out += [".SH SEE ALSO", "sbatch(1), squeue(1), srun(1), apptainer(1)"]
    return "\n".join(out) + "\n"


def main() -> None:
    click.echo(render(), nl=False)


if __name__ == "__main__":
    main()
