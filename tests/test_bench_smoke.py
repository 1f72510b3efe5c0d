"""The benchmarks run end to end at tiny sizes (`python -m bench --quick`): every result file is
written with rx-slurm's figure beside its baseline. No timing is asserted."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

# The benchmarks time the cluster and fill its queue: nothing else of the run beside them.
pytestmark = [pytest.mark.cluster, pytest.mark.alone(reason="a benchmark run on the cluster")]

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = (
    "exec",
    "agent",
    "door",
    "startup",
    "wake",
    "batch",
    "reconcile",
    "api",
    "footprint",
)
# startup times rxctl against a stand-in rxd: it has no tag and submits no job.
SLURM_BENCHMARKS = ("exec", "agent", "door", "wake", "batch", "reconcile", "api", "footprint")
KEYS = {
    "benchmark",
    "title",
    "quick",
    "started_at",
    "finished_at",
    "machine",
    "params",
    "results",
    "rows",
}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout[-4000:]}\nstderr:\n{run.stderr[-4000:]}"
    return out


def load(results: Path, name: str) -> dict:
    path = results / f"{name}.json"
    assert path.exists(), sorted(p.name for p in results.iterdir())
    return json.loads(path.read_text())


def positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.parametrize("name", BENCHMARKS)
def test_each_benchmark_writes_its_result_with_the_baseline_beside(
    results: Path, name: str
) -> None:
    data = load(results, name)
    assert set(data) >= KEYS
    assert data["benchmark"] == name and data["quick"] is True
    machine = data["machine"]
    assert machine["cores"] >= 1 and machine["slurm"] and machine["kernel"]
    assert set(machine["apptainer"]) == {"binary", "version", "standin"}
    assert data["rows"], "a benchmark shows at least one figure"
    for row in data["rows"]:
        assert row["benchmark"] == name
        if "overhead" not in row["metric"]:  # a difference of two timings may be any sign
            assert positive(row["rx"]), row
        if row["baseline"] is not None:
            assert positive(row["baseline"]), row
            assert row["baseline_label"], row
            assert positive(row["ratio"]), row


def test_latency_benchmarks_summarize_both_sides(results: Path) -> None:
    exec_ = load(results, "exec")["results"]
    wake = load(results, "wake")["results"]
    for pair in (exec_["sequential"], wake["wake"]):
        for side in ("rx", "baseline"):
            summary = pair[side]
            assert summary["n"] >= 1
            assert positive(summary["p50_ms"]) and positive(summary["p95_ms"])
        assert positive(pair["ratio_p50"]) and positive(pair["ratio_p95"])
    assert exec_["concurrent"]["rx"]["calls"] == exec_["concurrent"]["baseline"]["calls"] > 0
    agent = load(results, "agent")["results"]
    assert agent["sequential"]["rx"]["n"] == agent["sequential"]["baseline"]["n"] >= 1
    assert len(agent["batch"]["rx_s"]) == len(agent["batch"]["baseline_s"]) == 2
    # Each command through the network door and over the local socket, as often.
    door = load(results, "door")["results"]
    for key in ("status", "exec_step", "exec_agent"):
        assert door[key]["rx"]["n"] == door[key]["baseline"]["n"] >= 1, door[key]


def test_scale_benchmarks_saw_every_held_job(results: Path) -> None:
    reconcile = load(results, "reconcile")
    jobs = reconcile["params"]["jobs"]
    assert reconcile["results"]["squeue_all"]["ours"] == jobs
    assert reconcile["results"]["cold_pass"]["changes"] >= jobs
    assert all(p["changes"] == 0 for p in reconcile["results"]["steady_pass"]["samples"])
    assert set(reconcile["results"]["polling"]) == {"squeue_j", "scontrol_show_job"}
    footprint = load(results, "footprint")["results"]
    assert positive(footprint["idle"]["rss_mb"]) and positive(footprint["loaded"]["rss_mb"])


def test_api_levels_and_the_readme_table(results: Path) -> None:
    levels = load(results, "api")["results"]["levels"]
    assert set(levels) == {"1", "8"}
    for level in levels.values():
        assert level["rx"]["requests"] > 0 and level["baseline"]["requests"] > 0
        assert level["rx"]["errors"] == 0
    latest = (results / "latest.md").read_text()
    assert "| What | rx-slurm | Baseline, same run |" in latest
    assert "Quick (smoke-test) sizes" in latest


def test_no_job_of_the_bench_is_left_behind(results: Path) -> None:
    """Only this run's jobs: its daemons' tags and its by-hand holders' names. Other developers'
    jobs (and other bench runs') may well be in squeue meanwhile."""
    tags = {load(results, name)["params"]["tag"] for name in SLURM_BENCHMARKS}
    names = {
        load(results, "wake")["params"]["baseline_job_name"],
        load(results, "batch")["params"]["hold_job_name"],
    }
    assert all(tag.startswith("bench-") for tag in tags) and names, (tags, names)
    listed = subprocess.run(
        ["squeue", "-h", "--all", "-t", "PENDING,RUNNING,CONFIGURING", "-o", "%i|%j|%k"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    left = []
    for line in listed.splitlines():
        _, name, comment = line.split("|", 2)
        if comment.split(":")[0] in tags or name in names:
            left.append(line)
    assert left == []
