"""The run: sizes (full or --quick), a bench rxd shared by the benchmarks that need one."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import RESULTS
from bench.rig import bench_rxd
from tests.support.daemon import Rxd


@dataclass(frozen=True)
class Sizes:
    exec_n: int = 200  # sequential `rxctl exec -- true`, and as many raw steps
    exec_clients: int = 8  # concurrent clients for throughput
    exec_concurrent_n: int = 200  # execs per side in the concurrent run
    agent_batch: int = 100  # small commands one after the other, per block (agent vs raw step)
    wake_n: int = 20  # wakes per side
    batch_n: int = 50  # batch steps per side (srun --rx-project, rxctl run, by hand twice)
    scale_jobs: int = 10_000  # held jobs in the queue
    scale_ledger: int = 10_000  # containers in the ledger (the first scale_jobs hold a job)
    scale_passes: int = 5  # steady-state reconcile passes timed
    poll_n: int = 100  # per-container polls measured, then extrapolated
    api_clients: tuple[int, ...] = (1, 8, 64)
    api_seconds: float = 5.0
    submit_workers: int = 4


FULL = Sizes()
QUICK = Sizes(
    exec_n=5,
    exec_concurrent_n=8,
    agent_batch=3,
    wake_n=1,
    batch_n=3,
    scale_jobs=200,
    scale_ledger=1_000,
    scale_passes=2,
    poll_n=20,
    api_clients=(1, 8),
    api_seconds=1.0,
)


@dataclass
class Context:
    quick: bool = False
    out_dir: Path = RESULTS
    machine: dict[str, Any] = field(default_factory=dict)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _rxd: Rxd | None = None

    @property
    def sizes(self) -> Sizes:
        return QUICK if self.quick else FULL

    def rxd(self) -> Rxd:
        """The shared bench rxd (exec, wake, API), started on first use."""
        if self._rxd is None:
            self._rxd = self._stack.enter_context(bench_rxd())
        return self._rxd

    def close(self) -> None:
        self._stack.close()
