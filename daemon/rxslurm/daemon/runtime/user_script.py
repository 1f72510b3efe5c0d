"""A constant Python script run as a container's runtime user: how rxd reads and tidies files in
a folder that user controls, since root never opens them itself (docs/security.md). The script is
rxd's own text, never the user's; its arguments are data."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from rxslurm.slurm.runas import RunAs, run


def script_argv(script: str, *args: str) -> list[str]:
    """The interpreter rxd runs on, isolated (-I -S: no user site folder, no environment
    variables, no current folder on the path), with the constant script and its arguments."""
    return [sys.executable, "-I", "-S", "-c", script, *args]


def run_script(
    argv: list[str],
    *,
    as_user: RunAs | None,
    timeout: float,
    doing: str,
    name: str,
    error: type[Exception],
    input: str | None = None,  # noqa: A002 - mirrors subprocess.run
) -> subprocess.CompletedProcess[str]:
    """Run it as ``as_user`` (None: as this process, for tests) within ``timeout`` seconds, with
    ``input`` on its stdin; a deadline passed or a script that cannot start is ``error``, in words
    ("<doing> took over …", "cannot start the <name>: …")."""
    try:
        if input is None:
            return run(argv, as_user=as_user, timeout=timeout)
        return run(argv, as_user=as_user, input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise error(f"{doing} took over {timeout:g} s") from None
    except OSError as exc:
        raise error(f"cannot start the {name}: {exc}") from None


def script_answer(
    returncode: int, stdout: str, stderr: str, *, failed: str, error: type[Exception]
) -> dict[str, Any]:
    """The JSON object a script prints as its last line; ``error`` ("<failed>: <why>") when it
    failed, printed something else, or answered ``{"error": why}``."""
    try:
        answer = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else None
    except json.JSONDecodeError:
        answer = None
    if returncode != 0 or not isinstance(answer, dict):
        why = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {returncode}"
        raise error(f"{failed}: {why}")
    if "error" in answer:
        raise error(f"{failed}: {answer['error']}")
    return answer
