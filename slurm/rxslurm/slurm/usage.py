"""What a running job uses now, from `sstat` (CPU time and memory per step, as the accounting
gatherer sampled them) and squeue's allocated TRES (the GPUs it holds).

Slurm prints these as text whose details moved between versions: 22.05 and 23.02 print
``TRESUsageInTot`` as ``cpu=00:01:02,energy=0,fs/disk=123,mem=1236K,pages=0,vmem=4356K``; later
versions add TRES (``gres/gpumem``, ``gres/gpuutil``) and may print memory without a unit
(bytes) or with larger ones. CPU times come as ``MM:SS.mmm``, ``HH:MM:SS`` or ``D-HH:MM:SS``.
The parsers take what they know and skip what they cannot read, one record at a time: a step
whose line is unreadable is left out and counted, never the end of the answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# What sstat is asked for; --parsable2 separates with "|" and ends lines without one.
SSTAT_FIELDS = ("JobID", "NTasks", "TRESUsageInTot")

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_AMOUNT = re.compile(r"([0-9]{1,20}(?:\.[0-9]{1,9})?)([KMGTP]?)", re.ASCII)
_CPU_TIME = re.compile(
    r"(?:(?P<d>[0-9]{1,6})-)?(?:(?P<h>[0-9]{1,2}):)?(?P<m>[0-9]{1,2}):(?P<s>[0-9]{1,2})"
    r"(?:\.(?P<f>[0-9]{1,6}))?",
    re.ASCII,
)
_STEP_ID = re.compile(r"([1-9][0-9]{0,17})(?:\.([A-Za-z0-9_+-]{1,32}))?", re.ASCII)
_GPU_TRES = re.compile(r"gres/gpu=([0-9]{1,6})", re.ASCII)


def amount_bytes(text: str) -> int:
    """``1236K`` -> 1265664; a bare number is bytes. ValueError when it is not an amount."""
    match = _AMOUNT.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an amount: {text[:40]!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def cpu_seconds(text: str) -> float:
    """``1-02:03:04`` / ``02:03:04`` / ``03:04.500`` -> seconds. ValueError otherwise."""
    match = _CPU_TIME.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a CPU time: {text[:40]!r}")
    days, hours = int(match["d"] or 0), int(match["h"] or 0)
    minutes, seconds = int(match["m"]), int(match["s"])
    if minutes > 59 or seconds > 59 or hours > 23 and match["d"] is not None:
        raise ValueError(f"not a CPU time: {text[:40]!r}")
    fraction = float(f"0.{match['f']}") if match["f"] else 0.0
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds + fraction


def tres_fields(text: str) -> dict[str, str]:
    """``a=1,b/c=2`` -> {"a": "1", "b/c": "2"}; pieces without ``=`` are ignored."""
    found: dict[str, str] = {}
    for piece in text.strip().split(","):
        key, sep, value = piece.partition("=")
        if sep and key:
            found[key.strip()] = value.strip()
    return found


@dataclass(frozen=True)
class StepUsage:
    step: str  # "batch", "extern", "0", ...
    cpu_s: float
    memory_bytes: int


@dataclass
class JobUsage:
    """The steps of one job as sstat saw them, and how many of its lines could not be read."""

    job_id: int
    steps: list[StepUsage] = field(default_factory=list)
    skipped: int = 0
    gpus: int | None = None  # allocated GPUs, when squeue said

    @property
    def cpu_s(self) -> float:
        return sum(s.cpu_s for s in self.steps)

    @property
    def memory_bytes(self) -> int:
        return sum(s.memory_bytes for s in self.steps)


def parse_sstat(text: str, job_id: int) -> JobUsage:
    """``sstat --noheader --parsable2 --allsteps --format=JobID,NTasks,TRESUsageInTot`` output
    for ``job_id``. Lines of other jobs and unreadable lines are skipped (counted in
    ``skipped``)."""
    usage = JobUsage(job_id)
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            step = _step_usage(line, job_id)
        except (ValueError, KeyError, OverflowError):
            usage.skipped += 1
            continue
        if step is not None:
            usage.steps.append(step)
    return usage


def _step_usage(line: str, job_id: int) -> StepUsage | None:
    parts = line.rstrip("|").split("|")
    if len(parts) != len(SSTAT_FIELDS):
        raise ValueError("wrong number of fields")
    step_id, _tasks, tres = parts
    match = _STEP_ID.fullmatch(step_id.strip())
    if match is None:
        raise ValueError("unreadable step id")
    if int(match.group(1)) != job_id:
        return None
    values = tres_fields(tres)
    cpu = cpu_seconds(values["cpu"]) if "cpu" in values else 0.0
    memory = amount_bytes(values["mem"]) if "mem" in values else 0
    return StepUsage(match.group(2) or "", cpu, memory)


def parse_alloc_gpus(text: str) -> int | None:
    """The GPUs in squeue's ``tres-alloc`` (``cpu=2,mem=1G,node=1,gres/gpu=1``): 0 when it lists
    none, None when there is no readable line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != 1 or "=" not in lines[0]:
        return None
    match = _GPU_TRES.search(lines[0])
    return int(match.group(1)) if match else 0
