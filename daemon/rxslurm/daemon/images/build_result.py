"""What a finished build job's output says: the image's size and digest, or why it failed.

build.sh ends with one "rx-build: succeeded size=N sha256=H" line, or "rx-build: failed: ...".
When ``apptainer build`` fails, its FATAL line says in which part; a failing ``%post`` is traced
(``sh -x``: "+ command" lines), so the last traced command before the FATAL line is the one that
failed, and its line in the definition is found by its text. The output is the runtime user's
(anything in the build may print anything), so only the last marker counts and every reported
text is made safe to store and show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rxslurm.daemon.text_checks import reported_line

_SUCCEEDED = re.compile(r"rx-build: succeeded size=([0-9]{1,18}) sha256=([0-9a-f]{64})")
_FAILED = re.compile(r"rx-build: failed: (.*)")


@dataclass(frozen=True)
class Result:
    succeeded: bool
    size: int | None = None
    sha256: str | None = None
    reason: str = ""


def read_result(output: str, definition: str) -> Result:
    """The build's outcome from the end of its job output (the last 64 KiB is plenty)."""
    lines = output.splitlines()
    for line in reversed(lines):
        match = _SUCCEEDED.fullmatch(line.strip())
        if match:
            return Result(True, int(match.group(1)), match.group(2))
        if line.startswith("rx-build: failed: ") or line.startswith("rx-build: cancelled"):
            break
    return Result(False, reason=failure_reason(lines, definition))


def failure_reason(lines: list[str], definition: str) -> str:
    fatal_at = None
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].startswith("FATAL:"):
            fatal_at = index
            break
    if fatal_at is None:
        for line in reversed(lines):
            match = _FAILED.fullmatch(line.strip())
            if match:
                return reported_line(match.group(1))
        return "the build job ended without a result (see rxctl image logs)"
    fatal = lines[fatal_at][len("FATAL:") :].strip()
    section = re.search(r"while running %([a-z]+) section", fatal)
    traced = next(
        (line[2:].strip() for line in reversed(lines[:fatal_at]) if line.startswith("+ ")), None
    )
    if section and traced:
        where = definition_line(definition, section.group(1), traced)
        at = f" at line {where}" if where else ""
        return reported_line(f"%{section.group(1)} failed{at}: {traced} ({fatal})")
    return reported_line(fatal)


def definition_line(definition: str, section: str, command: str) -> int | None:
    """The line of ``section`` in the definition whose text is ``command`` (as ``sh -x`` shows
    it), the last such; None when it is not found (a continued line, a traced function)."""
    current = ""
    found = None
    for number, raw in enumerate(definition.splitlines(), start=1):
        if raw.startswith("%"):
            current = raw[1:].split(None, 1)[0].lower() if raw[1:].strip() else ""
            continue
        if current == section and _words(raw) == _words(command) and _words(raw):
            found = number
    return found


def _words(text: str) -> list[str]:
    return text.split()
