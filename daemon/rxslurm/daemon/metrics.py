"""Counters, histograms and the Prometheus text exposition format (0.0.4), by hand.

Standard library only: rxd takes no runtime dependency for its figures, and any layer may record
one (the reconciler a wake's latency, the API its requests). docs/metrics.md lists what rxd
exposes; api/routes_metrics.py gathers it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TYPES = ("counter", "gauge", "histogram", "untyped")

Labels = Mapping[str, str]


@dataclass(frozen=True)
class Sample:
    """One line: the family's name (plus a suffix such as ``_bucket``), its labels, a value."""

    value: float
    labels: Labels = field(default_factory=dict)
    suffix: str = ""


@dataclass(frozen=True)
class Family:
    name: str
    type: str
    help: str
    samples: Sequence[Sample]

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"unknown metric type {self.type!r}")


def number(value: float) -> str:
    """A sample value as the format spells it (+Inf, -Inf, NaN; integers without a point)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{key}="{_escape_label(str(value))}"' for key, value in labels.items())
    return "{" + inner + "}"


def render(families: Iterable[Family]) -> str:
    """The exposition text: per family its HELP and TYPE lines, then its samples."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for sample in family.samples:
            name = family.name + sample.suffix
            lines.append(f"{name}{_labels(sample.labels)} {number(sample.value)}")
    return "\n".join(lines) + "\n"


class Histogram:
    """Observations counted into cumulative buckets (seconds); safe across threads."""

    def __init__(self, buckets: Sequence[float]) -> None:
        bounds = sorted(set(buckets))
        if not bounds or any(b <= 0 or math.isinf(b) for b in bounds):
            raise ValueError("histogram buckets must be finite and positive")
        self.bounds: tuple[float, ...] = tuple(bounds)
        self._counts = [0] * len(self.bounds)
        self._count = 0
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        value = max(0.0, value)  # a clock step back must not make a negative latency
        with self._lock:
            self._count += 1
            self._sum += value
            for i, bound in enumerate(self.bounds):
                if value <= bound:
                    self._counts[i] += 1
                    break

    def samples(self) -> list[Sample]:
        with self._lock:
            counts, total, summed = list(self._counts), self._count, self._sum
        out: list[Sample] = []
        cumulative = 0
        for bound, count in zip(self.bounds, counts, strict=True):
            cumulative += count
            out.append(Sample(cumulative, {"le": number(bound)}, "_bucket"))
        out.append(Sample(total, {"le": "+Inf"}, "_bucket"))
        out.append(Sample(summed, {}, "_sum"))
        out.append(Sample(total, {}, "_count"))
        return out


class Counters:
    """Counters keyed by a tuple of label values (names given once); safe across threads."""

    def __init__(self, label_names: Sequence[str]) -> None:
        self.label_names = tuple(label_names)
        self._counts: dict[tuple[str, ...], int] = {}
        self._lock = threading.Lock()

    def inc(self, *values: str) -> None:
        if len(values) != len(self.label_names):
            raise ValueError(f"expected labels {self.label_names}, got {values}")
        with self._lock:
            self._counts[values] = self._counts.get(values, 0) + 1

    def samples(self, suffix: str = "") -> list[Sample]:
        with self._lock:
            counts = sorted(self._counts.items())
        return [
            Sample(count, dict(zip(self.label_names, key, strict=True)), suffix)
            for key, count in counts
        ]
