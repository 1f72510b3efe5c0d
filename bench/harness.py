"""What every benchmark shares: statistics, timed commands as a test user, machine facts, results.

Times are taken with time.perf_counter() around whole commands, so both sides of a comparison
pay the same fork/exec from this (root) process. Results are JSON, one file per benchmark; each
carries `rows`, the figures the README table shows (rx-slurm beside its baseline).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import pwd
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
VENV_BIN = Path(sys.executable).parent
SYSTEM_PATH = ("/usr/local/bin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/sbin", "/sbin")
USER = "rxalice"


# -- statistics --------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), interpolated between the closest ranks."""
    if not values:
        raise ValueError("no samples")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """Latency samples in seconds, summarized in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p95_ms": round(percentile(ms, 95), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
        "min_ms": round(min(ms), 3),
        "max_ms": round(max(ms), 3),
        "stdev_ms": round(statistics.stdev(ms), 3) if len(ms) > 1 else 0.0,
    }


def ratio(rx: float, baseline: float) -> float | None:
    """rx / baseline to three significant digits (a 200-fold difference stays visible)."""
    return float(f"{rx / baseline:.3g}") if baseline else None


def compare(rx: Sequence[float], baseline: Sequence[float]) -> dict[str, Any]:
    """Both sides' latency summaries, their p50/p95 ratios and the overhead at p50."""
    a, b = summarize(rx), summarize(baseline)
    return {
        "rx": a,
        "baseline": b,
        "ratio_p50": ratio(a["p50_ms"], b["p50_ms"]),
        "ratio_p95": ratio(a["p95_ms"], b["p95_ms"]),
        "overhead_p50_ms": round(a["p50_ms"] - b["p50_ms"], 3),
    }


# -- commands as a test user -------------------------------------------------------------------


def user_env(user: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    pw = pwd.getpwnam(user)
    env = {
        "HOME": pw.pw_dir,
        "USER": user,
        "LOGNAME": user,
        "PATH": os.pathsep.join((str(VENV_BIN), *SYSTEM_PATH)),
        "LANG": "C.UTF-8",
    }
    return {**env, **(extra or {})}


def as_user(user: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Popen keyword arguments that run a command as `user` with a clean environment."""
    pw = pwd.getpwnam(user)
    return {
        "user": pw.pw_uid,
        "group": pw.pw_gid,
        "extra_groups": os.getgrouplist(user, pw.pw_gid),
        "env": user_env(user, env),
        "cwd": pw.pw_dir if os.path.isdir(pw.pw_dir) else "/",
    }


def run_as(
    argv: Sequence[str],
    user: str = USER,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    cwd: str | os.PathLike[str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    kwargs = as_user(user, env)
    if cwd is not None:
        kwargs["cwd"] = cwd
    return subprocess.run(
        list(argv),
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )


def timed_as(
    argv: Sequence[str],
    user: str = USER,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> float:
    """Seconds one command took as `user`; a failure is an error, not a fast sample."""
    started = time.perf_counter()
    result = run_as(argv, user, env, timeout)
    took = time.perf_counter() - started
    if result.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
    return took


def must(result: subprocess.CompletedProcess[str], what: str) -> subprocess.CompletedProcess[str]:
    if result.returncode != 0:
        raise BenchError(
            f"{what} failed (exit {result.returncode}): {result.stderr.strip() or result.stdout}"
        )
    return result


class BenchError(Exception):
    """A benchmark could not measure what it should; the message says why."""


@dataclass
class Failures:
    """Failed samples are counted and reported, not timed (a shared test cluster drops a step
    launch now and then); too many end the benchmark."""

    limit: int
    seen: list[str] = field(default_factory=list)

    def attempt(self, fn: Callable[[], float]) -> float | None:
        try:
            return fn()
        except BenchError as exc:
            self.seen.append(str(exc))
            if len(self.seen) > self.limit:
                raise BenchError(
                    f"{len(self.seen)} samples failed (limit {self.limit}); first: {self.seen[0]}"
                ) from None
            return None

    def report(self) -> dict[str, Any]:
        return {"count": len(self.seen), "first": self.seen[:3]}


def wait_until(predicate: Any, timeout: float, interval: float = 0.05, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what or predicate}")
        time.sleep(interval)


# -- processes -------------------------------------------------------------------------------

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all threads)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def pid_of(command: str) -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == command:
                    return int(entry.name)
            except OSError:
                continue
    return None


# -- the machine -------------------------------------------------------------------------------


def _first_line(argv: Sequence[str]) -> str | None:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else None


def apptainer_info() -> dict[str, Any]:
    found = shutil.which("apptainer", path=os.pathsep.join(SYSTEM_PATH))
    real = Path(found).resolve() if found else None
    standin = (
        real is not None and real.parent.name == "standin" and real.parent.parent.name == "tests"
    )
    return {
        "binary": str(real) if real else None,
        "version": _first_line(["apptainer", "--version"]) if found else None,
        "standin": standin,
    }


def machine_info() -> dict[str, Any]:
    model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    from rxslurm.daemon.version import __version__

    return {
        "hostname": platform.node(),
        "cores": os.cpu_count(),
        "cpu_model": model,
        "mem_total_mb": mem_kb // 1024 if mem_kb else None,
        "kernel": platform.release(),
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "slurm": _first_line(["scontrol", "--version"]),
        "apptainer": apptainer_info(),
        "rx_slurm": __version__,
    }


# -- results -----------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the README table: a figure for rx-slurm beside the same done by hand."""

    benchmark: str
    metric: str
    rx: float
    baseline: float | None
    unit: str
    baseline_label: str = ""
    # How to read the comparison: "lower" (latency), "higher" (throughput), "" (no baseline).
    better: str = "lower"
    note: str = ""
    # One of the few figures the top-level README shows.
    headline: bool = False

    @property
    def ratio(self) -> float | None:
        return ratio(self.rx, self.baseline) if self.baseline else None


@dataclass
class Result:
    name: str
    title: str
    quick: bool
    params: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started_at: str = field(default_factory=lambda: now_iso())
    finished_at: str | None = None
    seconds: float | None = None

    def to_json(self, machine: dict[str, Any]) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "title": self.title,
            "quick": self.quick,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "seconds": self.seconds,
            "machine": machine,
            "params": self.params,
            "results": self.results,
            "rows": [{**asdict(r), "ratio": r.ratio} for r in self.rows],
            "notes": self.notes,
        }


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "–"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    elif abs(value) >= 0.1 or value == 0:
        text = f"{value:.2f}"
    else:
        text = f"{value:.2g}"
    return f"{text} {unit}".strip()


def print_rows(rows: Sequence[Row], out: Any = None) -> None:
    out = out or sys.stdout
    width = max((len(r.metric) for r in rows), default=10)
    for r in rows:
        line = f"  {r.metric:<{width}}  rx-slurm {fmt(r.rx, r.unit):>14}"
        if r.baseline is not None:
            line += f"   {r.baseline_label or 'baseline'} {fmt(r.baseline, r.unit):>12}"
            line += f"   ratio {fmt(r.ratio)}"
        print(line, file=out)
