"""The README table (bench/results/latest.md) from the JSON results in a results folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.harness import fmt

ORDER = ("exec", "agent", "door", "startup", "wake", "batch", "reconcile", "api", "footprint")
REPRODUCE = (
    "Reproduce: `make bench` (as root on Debian 12: it starts the local test cluster first), or "
    "`RXSLURM_TEST_CLUSTER=existing .venv/bin/python -m bench` once `make cluster` ran. "
    "`--only exec,wake` runs some; `--quick` is the smoke-test size. See bench/README.md."
)


def load(out_dir: Path) -> list[dict[str, Any]]:
    found = {}
    for path in out_dir.glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and data.get("benchmark") in ORDER:
            found[data["benchmark"]] = data
    return [found[name] for name in ORDER if name in found]


def cell(value: float | None, unit: str) -> str:
    return fmt(value, unit) if value is not None else "–"


def markdown(results: list[dict[str, Any]], headline_only: bool = False) -> str:
    lines = [
        "| What | rx-slurm | Baseline, same run | rx-slurm ÷ baseline |",
        "|---|---:|---|---:|",
    ]
    for data in results:
        for row in data["rows"]:
            if headline_only and not row.get("headline"):
                continue
            base = "–"
            if row["baseline"] is not None:
                base = f"{cell(row['baseline'], row['unit'])} ({row['baseline_label']})"
            ratio = fmt(row["ratio"]) if row["ratio"] is not None else "–"
            what = row["metric"] + (f" — {row['note']}" if row.get("note") else "")
            lines.append(f"| {what} | {cell(row['rx'], row['unit'])} | {base} | {ratio} |")
    return "\n".join(lines)


def machine_line(results: list[dict[str, Any]]) -> str:
    if not results:
        return ""
    m = results[0]["machine"]
    app = m.get("apptainer") or {}
    apptainer = app.get("version") or "apptainer"
    if app.get("standin"):
        apptainer += " (the tests' stand-in, tests/standin; both sides use it)"
    began = min(d["started_at"] for d in results)
    ended = max(d["finished_at"] or d["started_at"] for d in results)
    quick = (
        " **Quick (smoke-test) sizes, not for publishing.**"
        if any(d["quick"] for d in results)
        else ""
    )
    return (
        f"Measured {began} to {ended} on {m.get('cores')} cores ({m.get('cpu_model')}), "
        f"{m.get('mem_total_mb')} MB, Linux {m.get('kernel')}, {m.get('os')}, {m.get('slurm')} "
        f"(the 3-node local test cluster on the same machine), {apptainer}, rx-slurm "
        f"{m.get('rx_slurm')}.{quick}"
    )


def write_latest(out_dir: Path) -> Path:
    results = load(out_dir)
    parts = [
        markdown(results, headline_only=True),
        machine_line(results),
        REPRODUCE,
        "All figures of the run (bench/results/*.json has the samples' summaries):",
        markdown(results),
    ]
    text = "\n\n".join(parts)
    path = out_dir / "latest.md"
    path.write_text(text + "\n")
    return path
