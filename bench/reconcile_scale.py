"""Reconcile at scale: one whole reconcile pass over a ledger of N containers whose N jobs are
really queued (held), against the per-container polling spawners do today.

rx-slurm's side runs in its own process (bench.reconcile_pass): the one squeue call, a cold pass
(every container changes state) and steady passes (nothing changes, the cost every interval),
with the peak memory of each. The baseline is one `squeue -h -j ID` or one `scontrol show job ID`
per container (batchspawner and friends poll like this), measured on the real cluster with the
same queue for `poll_n` containers and extrapolated to N. All commands run as root, as rxd's
read-only Slurm calls do.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

from bench.fleet import HeldFleet, big_ledger
from bench.harness import REPO, BenchError, Result, Row, summarize
from bench.suite import Context

QUEUE_CALLS = 3


def timed_root(argv: list[str]) -> float:
    started = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    took = time.perf_counter() - started
    if out.returncode != 0 or not out.stdout.strip():
        raise BenchError(f"{' '.join(argv)} failed: {out.stderr.strip() or 'no output'}")
    return took


def polling_baseline(job_ids: list[int], n: int, total: int) -> dict[str, dict]:
    """n jobs spread over the fleet, each asked for by itself; extrapolated to `total`."""
    step = max(1, len(job_ids) // n)
    sample = [str(j) for j in job_ids[::step][:n]]
    out = {}
    for name, argv in (
        ("squeue_j", ["squeue", "-h", "-j"]),
        ("scontrol_show_job", ["scontrol", "show", "job"]),
    ):
        seconds = [timed_root([*argv, job]) for job in sample]
        out[name] = {
            "command": " ".join(argv) + " ID",
            "per_call": summarize(seconds),
            "extrapolated_s": round(statistics.fmean(seconds) * total, 3),
            "extrapolated_to": total,
        }
    return out


def run(ctx: Context, fleet: HeldFleet) -> Result:
    sizes = ctx.sizes
    n = fleet.size
    result = Result(
        "reconcile", f"Reconcile pass at {n:,} containers vs per-container polling", ctx.quick
    )
    started = time.perf_counter()
    rxd = big_ledger(fleet, sizes.scale_ledger)
    ledger_s = time.perf_counter() - started
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.reconcile_pass",
                str(rxd.config),
                str(sizes.scale_passes),
                str(QUEUE_CALLS),
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=3600,
            check=False,
        )
        if proc.returncode != 0:
            raise BenchError(f"reconcile pass failed:\n{proc.stderr[-3000:]}")
        passes = json.loads(proc.stdout)
    finally:
        rxd.remove_folders()
    if passes["cold"]["changes"] < n or passes["queue_ours"] < n:
        raise BenchError(
            f"the cold pass changed {passes['cold']['changes']} containers and saw "
            f"{passes['queue_ours']} of {n} jobs; expected all"
        )
    polls = polling_baseline(fleet.job_ids, sizes.poll_n, n)
    steady = summarize([p["seconds"] for p in passes["steady"]])
    queue = summarize([q["seconds"] for q in passes["queue"]])
    steady_peak_mb = max(p["peak_rss_kb"] for p in passes["steady"]) / 1024
    cold_peak_mb = passes["cold"]["peak_rss_kb"] / 1024
    before_mb = passes["cold"]["rss_before_kb"] / 1024
    grow_mb = max(steady_peak_mb, cold_peak_mb) - before_mb
    result.params = {
        "tag": fleet.tag,
        "jobs": n,
        "ledger_containers": sizes.scale_ledger,
        "steady_passes": sizes.scale_passes,
        "poll_n": sizes.poll_n,
        "submit_workers": fleet.workers,
    }
    result.results = {
        "submit": {
            "jobs": n,
            "seconds": round(fleet.submit_s, 3),
            "per_s": round(n / fleet.submit_s, 1),
            "workers": fleet.workers,
        },
        "ledger_build_s": round(ledger_s, 3),
        "squeue_all": {"jobs_listed": passes["queue_jobs"], "ours": passes["queue_ours"], **queue},
        "cold_pass": passes["cold"],
        "steady_pass": {**steady, "samples": passes["steady"]},
        "tracemalloc_peak_kb": passes["tracemalloc_peak_kb"],
        "squeue_process_peak_rss_kb": passes["squeue_peak_rss_kb"],
        "pass_process_rss_at_start_kb": passes["process_rss_at_start_kb"],
        "states_after": passes["states_after"],
        "polling": polls,
    }
    sq, sc = polls["squeue_j"], polls["scontrol_show_job"]
    result.rows = [
        Row(
            "reconcile",
            f"reconcile pass, {n:,} containers",
            steady["p50_ms"] / 1000,
            sq["extrapolated_s"],
            "s",
            f"`squeue -j` ×{n:,} (extrap.)",
            note=f"first pass, {n:,} state changes: {passes['cold']['seconds']:.1f} s",
            headline=True,
        ),
        Row(
            "reconcile",
            f"reconcile pass, {n:,} containers",
            steady["p50_ms"] / 1000,
            sc["extrapolated_s"],
            "s",
            f"`scontrol show job` ×{n:,} (extrap.)",
        ),
        Row(
            "reconcile",
            f"first pass ({n:,} state changes)",
            passes["cold"]["seconds"],
            None,
            "s",
            better="",
        ),
        Row(
            "reconcile",
            f"one squeue for {n:,} jobs",
            queue["p50_ms"],
            sq["per_call"]["p50_ms"],
            "ms",
            "one `squeue -j`",
            note="the reconciler's only Slurm call in a steady pass",
        ),
        Row(
            "reconcile",
            "peak RSS of the process during a pass",
            max(steady_peak_mb, cold_peak_mb),
            None,
            "MB",
            better="",
            note=f"{grow_mb:+.0f} MB over its {before_mb:.0f} MB before the first pass; "
            f"Python heap peak {passes['tracemalloc_peak_kb'] / 1024:.0f} MB in a steady pass",
        ),
    ]
    result.notes = [
        f"{n:,} held jobs submitted in {fleet.submit_s:.1f} s ({fleet.workers} sbatch at once, "
        "as the bench user).",
        f"squeue listed {passes['queue_jobs']:,} rx-* jobs (others' and recently ended ones "
        "count too: squeue --states=all keeps ended jobs for MinJobAge).",
    ]
    return result
