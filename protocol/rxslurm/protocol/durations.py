"""A wait's length as people read it, the same on both ends: rxd's time-out line and rxctl's
progress line."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """5 -> 5s, 90 -> 1m30s, 3600 -> 1h00m, 90000 -> 25h00m (whole seconds, rounded down)."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
