"""GET /metrics: rxd's figures in the Prometheus text format, for any caller.

Aggregates only: no label names a project, a user or a path, so whoever can reach the socket
(or the optional metrics listener, see docs/metrics.md) learns nothing of anyone's work.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from rxslurm.daemon.api.app import REQUEST_COUNTS, Handler
from rxslurm.daemon.api.context import Daemon, daemon_of
from rxslurm.daemon.metrics import CONTENT_TYPE, Family, Sample, render
from rxslurm.protocol.states import State

log = logging.getLogger("rxslurm.api")

METRICS = "/metrics"
# A queued container whose partition cannot be told now (Slurm's default unknown).
UNKNOWN_PARTITION = "unknown"

routes = web.RouteTableDef()


@routes.get(METRICS)
async def metrics(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    # The ledger is read on the API's pool, like every route's ledger calls.
    families = await asyncio.get_running_loop().run_in_executor(None, collect, daemon)
    counts = request.app.get(REQUEST_COUNTS)
    if counts is not None:
        families.append(
            Family(
                "rxslurm_api_requests_total",
                "counter",
                "API requests answered, by route pattern, method and status class.",
                counts.samples(),
            )
        )
    return web.Response(body=render(families).encode(), headers={"Content-Type": CONTENT_TYPE})


def collect(daemon: Daemon) -> list[Family]:
    """Everything but the API's own counts (those are per listener's app)."""
    reconciler = daemon.reconciler
    last = reconciler.last_pass_seconds
    return [
        Family(
            "rxslurm_containers",
            "gauge",
            "Containers per state (every state, 0 included).",
            [Sample(n, {"state": state}) for state, n in containers_per_state(daemon).items()],
        ),
        Family(
            "rxslurm_quota_queue_length",
            "gauge",
            "Containers queued for a partition quota (waiting, no job yet), per partition.",
            [Sample(n, {"partition": p}) for p, n in queue_lengths(daemon).items()],
        ),
        Family(
            "rxslurm_reconcile_passes_total",
            "counter",
            "Reconciler passes run since rxd started.",
            [Sample(reconciler.passes)],
        ),
        Family(
            "rxslurm_reconcile_last_pass_seconds",
            "gauge",
            "How long the reconciler's last pass took (NaN before the first).",
            [Sample(float("nan") if last is None else last)],
        ),
        Family(
            "rxslurm_slurm_reachable",
            "gauge",
            "1 when Slurm answered the reconciler's last pass, else 0.",
            [Sample(1 if reconciler.slurm_reachable else 0)],
        ),
        Family(
            "rxslurm_exec_sessions_open",
            "gauge",
            "Exec and shell sessions open now, and detached commands running.",
            [Sample(reconciler.sessions.total())],
        ),
        Family(
            "rxslurm_wake_latency_seconds",
            "histogram",
            "From a wake's job submission (starting) to its container running.",
            reconciler.wake_latency.samples(),
        ),
    ]


def containers_per_state(daemon: Daemon) -> dict[str, int]:
    counts = {state.value: 0 for state in State}
    for state, n in daemon.ledger.db.execute(
        "SELECT state, count(*) FROM containers GROUP BY state"
    ).fetchall():
        if state in counts:
            counts[state] = n
    return counts


def queue_lengths(daemon: Daemon) -> dict[str, int]:
    service = daemon.containers
    try:
        # Cached (the reconciler asks each pass): a scrape does not wait on Slurm as a rule.
        default_partition = service.default_partition()
    except Exception as exc:  # Slurm unknown now: those queued on the default say so
        log.debug("metrics: default partition unknown", extra={"error": str(exc)})
        default_partition = ""
    db = service.ledger.db
    # Every partition with a quota shows, its queue empty or not.
    lengths = {row[0]: 0 for row in db.execute("SELECT DISTINCT partition FROM quotas").fetchall()}
    for _row, request in service.queued(db, default_partition):
        partition = request.partition or UNKNOWN_PARTITION
        lengths[partition] = lengths.get(partition, 0) + 1
    return dict(sorted(lengths.items()))


@web.middleware
async def anyone(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The metrics listener's caller check: none (aggregates only; loopback unless configured)."""
    return await handler(request)
