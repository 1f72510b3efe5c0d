"""What tests assert about an rxctl (or rxd) run: it succeeded, or it was refused in one line."""

from __future__ import annotations

import subprocess

Run = subprocess.CompletedProcess[str]


def ok(result: Run) -> Run:
    """The run, which exited 0 (else the assertion shows its argv, stdout and stderr)."""
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result


def output(result: Run) -> str:
    """The stdout of a run that exited 0."""
    return ok(result).stdout


def refused(result: Run, code: int = 1) -> str:
    """The one `Error: ...` line of a refused command: exit ``code`` (1; exec and shell exit 125
    when rxctl itself, not the command, fails), nothing on stdout, one line on stderr."""
    assert result.returncode == code, (result.args, result.stdout, result.stderr)
    assert result.stdout == "", (result.args, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]
