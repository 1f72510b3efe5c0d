"""Slurm's ways of writing memory and time, as sbatch reads them, turned into rx-slurm's units.

`--mem 16G` and `--time 1-00:00:00` work as they do with sbatch; a bare number keeps sbatch's
default unit (MB for memory, minutes for time), which is also what rx-slurm stores. A wait's
`--timeout` also takes `90s`, `10m`, `2h`, `1d`.
"""

from __future__ import annotations

import re
from typing import Any

import click

_MEM = re.compile(r"(\d+)([KMGT]?)B?", re.IGNORECASE)
_MB_PER = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}
# sbatch --time: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S.
_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", re.ASCII)


def memory_mb(text: str) -> int:
    """`16G` -> 16384; `500` (MB, as sbatch) -> 500; `1500K` -> 2 (rounded up)."""
    match = _MEM.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a size like 16G, 512M or 2048 (MB)")
    mb = int(match.group(1)) * _MB_PER[match.group(2).upper()]
    return int(-(-mb // 1))


def minutes(text: str) -> int:
    """sbatch's time formats -> whole minutes, seconds rounded up: `1-00:00:00` -> 1440."""
    return -(-_sbatch_seconds(text) // 60)


def _sbatch_seconds(text: str) -> int:
    match = _TIME.fullmatch(text.strip())
    if not match:
        raise ValueError(
            f"{text!r} is not a time like 90, 1:30:00, 2-00:00:00 (minutes; [D-]H:M:S as sbatch)"
        )
    days, *rest = match.groups()
    numbers = [int(g) for g in rest if g is not None]  # the first is always there
    if days is not None:  # D-H, D-H:M, D-H:M:S
        h, m, s = (numbers + [0, 0])[:3]
    elif len(numbers) == 1:  # M
        h, m, s = 0, numbers[0], 0
    elif len(numbers) == 2:  # M:S
        h, m, s = 0, numbers[0], numbers[1]
    else:  # H:M:S
        h, m, s = numbers
    return ((int(days or 0) * 24 + h) * 60 + m) * 60 + s


_UNIT = re.compile(r"(\d+)([smhd])", re.IGNORECASE)
_SECONDS_PER = {"s": 1, "m": 60, "h": 3600, "d": 86400}


# Ten years: anything longer is a typo, and the number stays far from overflowing a timestamp.
MAX_SECONDS = 10 * 365 * 86400
_UNITS = re.compile(r"(?:\d+[smhd])+", re.IGNORECASE | re.ASCII)


def seconds(text: str) -> int:
    """A duration as `90s`, `10m`, `2h`, `1d12h` (as `docker logs --since` and journalctl take
    spans), or as sbatch --time takes it (a bare number is minutes, `1:30` is M:S): `10m` -> 600,
    `1:30` -> 90, `0` -> 0. One parser for --timeout and --since; at most ten years."""
    value = text.strip()
    if _UNITS.fullmatch(value):
        total = sum(int(n) * _SECONDS_PER[u.lower()] for n, u in _UNIT.findall(value))
    else:
        try:
            total = _sbatch_seconds(value)
        except ValueError:
            raise ValueError(
                f"{text!r} is not a duration like 90s, 10m, 2h, 1d12h or 1:30:00 "
                "([D-]H:M:S as sbatch)"
            ) from None
    if total > MAX_SECONDS:
        raise ValueError(f"{text!r} is longer than ten years")
    return total


# Newer clicks declare ParamType generic; 8.1 (which pyproject allows) cannot be subscripted.
class _Converted(click.ParamType):  # type: ignore[type-arg]
    convert_text: Any

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return int(type(self).convert_text(str(value)))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Memory(_Converted):
    """A memory size in MB, written as sbatch --mem takes it."""

    name = "memory"
    convert_text = staticmethod(memory_mb)


class Minutes(_Converted):
    """A duration in minutes, written as sbatch --time takes it."""

    name = "time"
    convert_text = staticmethod(minutes)


class Seconds(_Converted):
    """A duration in seconds: `90s`, `10m`, `2h`, or as sbatch --time takes it."""

    name = "duration"
    convert_text = staticmethod(seconds)


MEMORY = Memory()
MINUTES = Minutes()
SECONDS = Seconds()
