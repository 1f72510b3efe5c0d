"""Reconcile passes in a process of their own, so its memory is the pass's alone:
`python -m bench.reconcile_pass CONFIG PASSES QUEUE_CALLS` prints one JSON object.

The daemon's parts are built as rxd builds them (serve.build_daemon: ledger, SlurmCli,
runtime, reconciler), and `Reconciler.reconcile_once()` is called directly. First the squeue
call alone (SlurmCli.queue as the reconciler makes it), then one cold pass (every container
moves STARTING -> WAITING: one transaction and event each), then steady passes (nothing
changed). Peak memory is the kernel's high-water mark (VmHWM), reset before each measurement
through /proc/self/clear_refs; plus the Python heap's peak from tracemalloc in one extra pass.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any


def proc_status_kb(field: str, pid: str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def measured(fn: Any) -> dict[str, Any]:
    reset_peak()
    before = proc_status_kb("VmRSS")
    started = time.perf_counter()
    report = fn()
    took = time.perf_counter() - started
    out = {
        "seconds": took,
        "rss_before_kb": before,
        "rss_after_kb": proc_status_kb("VmRSS"),
        "peak_rss_kb": proc_status_kb("VmHWM"),
    }
    if hasattr(report, "changes"):
        out.update(
            ok=report.ok,
            containers=report.containers,
            jobs_seen=report.jobs_seen,
            changes=report.changes,
        )
    return out


def main(config_path: str, passes: int, queue_calls: int) -> dict[str, Any]:
    from rxslurm.daemon.api.serve import build_daemon
    from rxslurm.daemon.config import load_config
    from rxslurm.protocol.job_comment import JOB_PREFIX

    logging.basicConfig(level=logging.WARNING)
    config = load_config(Path(config_path))
    started_rss = proc_status_kb("VmRSS")
    daemon = build_daemon(config)
    reconciler = daemon.reconciler
    queue = [
        measured(lambda: daemon.slurm.queue(name_prefix=JOB_PREFIX)) for _ in range(queue_calls)
    ]
    listed = daemon.slurm.queue(name_prefix=JOB_PREFIX)
    cold = measured(reconciler.reconcile_once)
    steady = [measured(reconciler.reconcile_once) for _ in range(passes)]
    tracemalloc.start()
    reconciler.reconcile_once()
    _, heap_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    states = dict(
        daemon.ledger.db.execute("SELECT state, count(*) FROM containers GROUP BY state").fetchall()
    )
    daemon.ledger.close()
    return {
        "queue": queue,
        "queue_jobs": len(listed),
        "queue_ours": sum(
            1 for j in listed.values() if (j.comment or "").startswith(config.slurm.tag + ":")
        ),
        "cold": cold,
        "steady": steady,
        "tracemalloc_peak_kb": heap_peak // 1024,
        "process_rss_at_start_kb": started_rss,
        "squeue_peak_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        "states_after": states,
    }


if __name__ == "__main__":
    json.dump(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])), sys.stdout)
