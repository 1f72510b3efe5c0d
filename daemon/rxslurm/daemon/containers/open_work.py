"""What still runs in a container besides its holder, in one line: a plain stop refuses while
there is any (`rxctl stop --force` ends it), and `status` counts it.

The exec server and the detached commands know it (containers/sessions.py); the service only
asks through `ContainerService.open_work`, so this module names the parts and says them.
"""

from __future__ import annotations

from dataclasses import dataclass

# How many sessions or commands the line names before it says "and N more".
NAMED = 3


@dataclass(frozen=True)
class OpenSession:
    """An interactive exec or shell session open now."""

    kind: str  # "exec" or "shell"
    started_by: str


@dataclass(frozen=True)
class RunningCommand:
    """A detached command the ledger says still runs."""

    command_id: str
    first_word: str
    started_by: str


@dataclass(frozen=True)
class OpenWork:
    sessions: tuple[OpenSession, ...] = ()
    commands: tuple[RunningCommand, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.sessions or self.commands)

    def describe(self) -> str:
        """One line: "2 open sessions (shell by ada, exec by bea) and 1 running detached command
        (0a1b2c3d sleep by ada)"; "" when there is nothing."""
        parts = []
        if self.sessions:
            parts.append(
                _counted(len(self.sessions), "open session")
                + _named([f"{s.kind} by {s.started_by}" for s in self.sessions])
            )
        if self.commands:
            parts.append(
                _counted(len(self.commands), "running detached command")
                + _named(
                    [f"{c.command_id} {c.first_word} by {c.started_by}" for c in self.commands]
                )
            )
        return " and ".join(parts)


def _counted(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _named(items: list[str]) -> str:
    shown = ", ".join(items[:NAMED])
    more = f", and {len(items) - NAMED} more" if len(items) > NAMED else ""
    return f" ({shown}{more})"
