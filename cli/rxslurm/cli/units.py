"""Slurm's ways of writing memory and time, as sbatch reads them, turned into rx-slurm's units.

`--mem 16G` and `--time 1-00:00:00` work as they do with sbatch; a bare number keeps sbatch's
default unit (MB for memory, minutes for time), which is also what rx-slurm stores.
"""

from __future__ import annotations

import re
from typing import Any

import click

_MEM = re.compile(r"(\d+)([KMGT]?)B?", re.IGNORECASE)
_MB_PER = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}
# sbatch --time: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S.
_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


def memory_mb(text: str) -> int:
    """`16G` -> 16384; `500` (MB, as sbatch) -> 500; `1500K` -> 2 (rounded up)."""
    match = _MEM.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a size like 16G, 512M or 2048 (MB)")
    mb = int(match.group(1)) * _MB_PER[match.group(2).upper()]
    return int(-(-mb // 1))


def minutes(text: str) -> int:
    """sbatch's time formats -> whole minutes, seconds rounded up: `1-00:00:00` -> 1440."""
    match = _TIME.fullmatch(text.strip())
    if not match:
        raise ValueError(
            f"{text!r} is not a time like 90, 1:30:00, 2-00:00:00 (minutes; [D-]H:M:S as sbatch)"
        )
    days, first, second, third = (int(g) if g is not None else None for g in match.groups())
    if days is None:
        if second is None:  # M
            h, m, s = 0, first, 0
        elif third is None:  # M:S
            h, m, s = 0, first, second
        else:  # H:M:S
            h, m, s = first, second, third
    else:  # D-H, D-H:M, D-H:M:S
        h, m, s = first, second or 0, third or 0
    seconds = (((days or 0) * 24 + h) * 60 + m) * 60 + s  # type: ignore[operator]
    return -(-seconds // 60)


class _Converted(click.ParamType):
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


MEMORY = Memory()
MINUTES = Minutes()
