"""Daemon footprint: rxd's resident memory idle (fresh ledger) and with N containers in its ledger.

Both are real `rxd serve` processes. The loaded one starts on a ledger of N containers whose N
held jobs are queued (bench.fleet); it is measured once its first reconcile pass has moved every
container to waiting (read from the ledger), then sampled for two reconcile intervals. VmRSS is
the memory it holds; VmHWM the peak since it started (the first pass writes N state changes).
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from bench.fleet import HeldFleet, big_ledger
from bench.harness import BenchError, Result, Row, must
from bench.rig import bench_rxd
from bench.suite import Context
from tests.support.daemon import Rxd

SAMPLE_EVERY_S = 0.5


def status_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    return out


def sample(rxd: Rxd, seconds: float) -> dict[str, Any]:
    """VmRSS over `seconds` (a measurement window, not a wait for something)."""
    assert rxd.proc is not None
    pid = rxd.proc.pid
    rss = []
    deadline = time.monotonic() + seconds
    last = status_kb(pid)
    while True:
        last = status_kb(pid)
        rss.append(last["VmRSS"])
        if time.monotonic() >= deadline:
            break
        time.sleep(SAMPLE_EVERY_S)
    return {
        "rss_mb": round(rss[-1] / 1024, 1),
        "rss_max_mb": round(max(rss) / 1024, 1),
        "peak_mb": round(last["VmHWM"] / 1024, 1),
        "threads": last["Threads"],
        "samples": len(rss),
    }


def count_waiting(ledger: Path) -> int:
    conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(
            "SELECT count(*) FROM containers WHERE state = 'waiting_for_resources'"
        ).fetchone()[0]
    finally:
        conn.close()


def run(ctx: Context, fleet: HeldFleet) -> Result:
    sizes = ctx.sizes
    n = sizes.scale_ledger
    result = Result("footprint", f"rxd resident memory: idle vs {n:,} containers", ctx.quick)
    interval = 5.0
    # Two reconcile intervals: the memory between passes and during one.
    window = 1.0 if ctx.quick else 2 * interval
    with bench_rxd(reconcile_interval=interval, hooks=False) as idle_rxd:
        must(idle_rxd.rxctl("rxalice", "whoami"), "rxctl whoami")
        idle = sample(idle_rxd, window)
        root = idle_rxd.root
    shutil.rmtree(root, ignore_errors=True)

    loaded_rxd = big_ledger(fleet, n)
    try:
        started = time.monotonic()
        loaded_rxd.start()
        deadline = started + 1800
        while count_waiting(loaded_rxd.ledger) < fleet.size:
            if loaded_rxd.proc is not None and loaded_rxd.proc.poll() is not None:
                raise BenchError(f"rxd exited:\n{loaded_rxd.log_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise BenchError("rxd's first pass did not finish in 30 min")
            time.sleep(0.2)
        first_pass_s = time.monotonic() - started
        loaded = sample(loaded_rxd, window)
    finally:
        # Not cancel_own_jobs: the held jobs are the fleet's, and the fleet cancels them.
        if loaded_rxd.proc is not None and loaded_rxd.proc.poll() is None:
            loaded_rxd.stop()
        loaded_rxd.remove_folders()
    result.params = {
        "tag": fleet.tag,
        "containers": n,
        "jobs": fleet.size,
        "reconcile_interval_s": interval,
        "sample_window_s": window,
    }
    result.results = {
        "idle": idle,
        "loaded": {**loaded, "start_to_first_pass_done_s": round(first_pass_s, 2)},
        "delta_mb": round(loaded["rss_mb"] - idle["rss_mb"], 1),
    }
    result.rows = [
        Row("footprint", "rxd RSS idle", idle["rss_mb"], None, "MB", better=""),
        Row(
            "footprint",
            f"rxd RSS, {n:,} containers",
            loaded["rss_mb"],
            idle["rss_mb"],
            "MB",
            "idle rxd",
            note=f"peak {loaded['peak_mb']:.0f} MB during the first pass",
            headline=True,
        ),
    ]
    return result
