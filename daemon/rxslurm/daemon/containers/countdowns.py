"""How long an awake container has, for `rxctl status`: until idle sleep and until its job's time
limit, best-effort, from what the ledger keeps (no Slurm call).

Idle sleep counts from the last activity the reconciler noted (or the start) and does not count
at all while sessions or detached commands are open, as the reconciler's idle check. The exec
agent's own sessions (seen only by the reconciler) may still push it back: this is an upper
bound on nothing, a best guess. The time limit counts from the job's start.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Countdowns:
    sessions: int
    detached: int
    idle_timeout_min: int
    # Seconds until idle sleep; None: not counting (work open, no timeout, nothing known).
    idle_sleep_in_s: int | None
    time_limit_min: int | None
    # Seconds until the job's time limit; None: no limit rxd knows, or no start.
    time_limit_in_s: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "sessions": self.sessions,
            "detached": self.detached,
            "idle_timeout_min": self.idle_timeout_min,
            "idle_sleep_in_s": self.idle_sleep_in_s,
            "time_limit_min": self.time_limit_min,
            "time_limit_in_s": self.time_limit_in_s,
        }


def countdowns(
    now: datetime,
    *,
    sessions: int,
    detached: int,
    idle_timeout_min: int,
    last_activity: datetime | None,
    time_limit_min: int | None,
    job_started: datetime | None,
) -> Countdowns:
    """Never negative: a deadline already passed is 0 (the reconciler acts on its next pass)."""
    idle: int | None = None
    if idle_timeout_min > 0 and not (sessions or detached) and last_activity is not None:
        idle = _left(now, last_activity, idle_timeout_min)
    limit: int | None = None
    if time_limit_min and time_limit_min > 0 and job_started is not None:
        limit = _left(now, job_started, time_limit_min)
    return Countdowns(sessions, detached, idle_timeout_min, idle, time_limit_min or None, limit)


def _left(now: datetime, since: datetime, minutes: int) -> int:
    return max(0, int(minutes * 60 - (now - since).total_seconds()))
