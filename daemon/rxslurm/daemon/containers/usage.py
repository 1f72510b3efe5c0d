"""Live usage of an awake container for `rxctl status`: CPU and memory of its job as `sstat`
sees them, and the GPUs the job holds, through the Scheduler port.

Best effort: a status must stay fast and must never fail because of this. Answers are cached a
few seconds per job (many `status` calls cost one `sstat`), Slurm's calls have a short
deadline, and any failure is an answer too: `{"unavailable": why}`. The CPU in use now is the
CPU time gained between two samples over the time between them; the first sample of a job only
has the CPU time used so far.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from rxslurm.daemon.ports import Scheduler
from rxslurm.slurm.errors import SlurmError

log = logging.getLogger(__name__)

CACHE_S = 5.0
SSTAT_TIMEOUT_S = 3.0
# A sample older than this is no base for "CPUs busy now".
RATE_WINDOW_S = 600.0


class LiveUsage:
    """Usage per running job, cached for ``ttl`` seconds."""

    def __init__(
        self,
        scheduler: Scheduler,
        ttl: float = CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.scheduler = scheduler
        self.ttl = ttl
        self.clock = clock
        self._answers: dict[int, tuple[float, dict[str, Any]]] = {}
        self._samples: dict[int, tuple[float, float]] = {}  # job -> (when, CPU seconds)
        self._gates: dict[int, threading.Lock] = {}
        self._lock = threading.Lock()

    def of(self, job_id: int) -> dict[str, Any]:
        """The job's usage now (or a few seconds ago): ``cpu_s``, ``cpus_busy`` (None on the
        first sample), ``memory_bytes``, ``gpus`` (None: not known); or ``unavailable``."""
        cached = self._fresh(job_id)
        if cached is not None:
            return cached
        with self._lock:
            gate = self._gates.setdefault(job_id, threading.Lock())
        # One sample at a time per job: callers that come meanwhile take its answer.
        with gate:
            cached = self._fresh(job_id)
            if cached is not None:
                return cached
            now = self.clock()
            answer = self._sample(job_id, now)
            with self._lock:
                # Only the jobs asked about lately are kept: the others ended or nobody looks.
                self._answers = {
                    j: a for j, a in self._answers.items() if now - a[0] < RATE_WINDOW_S
                }
                self._answers[job_id] = (now, answer)
                self._gates = {j: g for j, g in self._gates.items() if j in self._answers}
        return answer

    def _fresh(self, job_id: int) -> dict[str, Any] | None:
        with self._lock:
            cached = self._answers.get(job_id)
        if cached is not None and self.clock() - cached[0] < self.ttl:
            return cached[1]
        return None

    def _sample(self, job_id: int, now: float) -> dict[str, Any]:
        try:
            found = self.scheduler.usage(job_id, timeout=SSTAT_TIMEOUT_S)
        except SlurmError as exc:
            return {"unavailable": f"Slurm did not say ({exc.message})"}
        except Exception:
            log.exception("reading a job's usage failed", extra={"job_id": job_id})
            return {"unavailable": "reading it failed; see rxd's log"}
        if not found.steps:
            why = "sstat listed no step of the job"
            if found.skipped:
                why = f"sstat's {found.skipped} line(s) for the job could not be read"
            return {"unavailable": why, "gpus": found.gpus}
        cpu = found.cpu_s
        with self._lock:
            before = self._samples.get(job_id)
            self._samples = {j: s for j, s in self._samples.items() if now - s[0] < RATE_WINDOW_S}
            self._samples[job_id] = (now, cpu)
        busy = None
        if before is not None and 1.0 <= now - before[0] <= RATE_WINDOW_S and cpu >= before[1]:
            busy = round((cpu - before[1]) / (now - before[0]), 2)
        return {
            "cpu_s": round(cpu, 1),
            "cpus_busy": busy,
            "memory_bytes": found.memory_bytes,
            "gpus": found.gpus,
            "steps": len(found.steps),
            "skipped": found.skipped,
        }
