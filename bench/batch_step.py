"""Batch steps in a project's environment: `srun --rx-project=P true` against the step by hand.

Inside one allocation of the bench user (a held `sleep` job), steps take turns (rotating order):
- rx-slurm: `srun --jobid J --overlap -n 1 --rx-project=P true` (the SPANK plugin as
  tests/cluster/setup.sh installs it: the task becomes `rxctl run`, which asks rxd for the plan
  and execs apptainer with the project's snapshot read-only and its workspace);
- `srun ... rxctl run --project P -- true` (the same without the plugin);
- the baseline by hand: `srun ... apptainer exec IMAGE true`, the plain image;
- and, to split the difference, the exact `apptainer exec` rxctl run builds (snapshot overlay,
  workspace bind) typed by hand.
So the difference to the plain step is rx-slurm's own part (rxctl's start-up and one request)
plus mounting the snapshot.
"""

from __future__ import annotations

import json
import time

from bench.exec_latency import PYTHON, RXCTL, rotate
from bench.harness import (
    USER,
    BenchError,
    Failures,
    Result,
    Row,
    compare,
    must,
    run_as,
    summarize,
    timed_as,
)
from bench.rig import IMAGE, network_door, new_container, suffix, tag_of
from bench.suite import Context
from rxslurm.protocol import batch_plan, routes

HOLD_SECONDS = 3600


def plan_of(socket: str, project: str) -> batch_plan.BatchPlan:
    """The project's batch plan as the bench user gets it (rxd checks the role)."""
    probe = (
        "import json, sys; from rxslurm.cli.client import Client; "
        "print(json.dumps(Client(sys.argv[1]).get(sys.argv[2])))"
    )
    route = routes.path(routes.PROJECT_BATCH_PLAN, project)
    out = must(run_as([PYTHON, "-c", probe, socket, route]), "asking rxd for the batch plan")
    return batch_plan.parse(json.loads(out.stdout))


def wait_snapshot(socket: str, project: str, timeout: float = 180) -> batch_plan.BatchPlan:
    deadline = time.monotonic() + timeout
    while True:
        plan = plan_of(socket, project)
        if plan.snapshot is not None:
            return plan
        if time.monotonic() > deadline:
            raise BenchError(f"no snapshot of {project} after {timeout:g}s asleep")
        time.sleep(0.5)


def hold_allocation(name: str) -> int:
    """A job of the bench user that only holds an allocation for the steps; its id."""
    argv = ["sbatch", "--parsable", "-J", name, "-n", "1", "-o", "/dev/null"]
    argv += ["--wrap", f"sleep {HOLD_SECONDS}"]
    job_id = int(must(run_as(argv), "sbatch of the holding job").stdout.strip().split(";")[0])
    deadline = time.monotonic() + 120
    while True:
        state = run_as(["squeue", "-h", "-j", str(job_id), "-o", "%T"]).stdout.strip()
        if state == "RUNNING":
            return job_id
        if time.monotonic() > deadline:
            raise BenchError(f"the holding job {job_id} is not running after 120 s ({state})")
        time.sleep(0.1)


def run(ctx: Context) -> Result:
    sizes = ctx.sizes
    rxd = ctx.rxd()
    container = new_container(rxd, "bx-batch")
    result = Result("batch", "Batch steps: srun --rx-project vs srun apptainer exec", ctx.quick)
    hold_name = f"bench-batch-hold-{suffix()}"
    job_id: int | None = None
    try:
        # A snapshot is taken when the container sleeps after having run.
        container.enable()
        container.stop()
        plan = wait_snapshot(str(rxd.socket), container.project)
        job_id = hold_allocation(hold_name)
        step = ["srun", f"--jobid={job_id}", "--overlap", "-n", "1", "--quiet"]
        # The step's node does not see rxd's socket (tests/cluster/setup.sh): the plugin's rxctl
        # reaches rxd through its network door, as on a real cluster.
        env = {"RXSLURM_SERVER": network_door(rxd)}
        spank_argv = [*step, f"--rx-project={container.project}", "true"]
        run_argv = [*step, RXCTL, "run", "--project", container.project, "--", "true"]
        plain_argv = [*step, "apptainer", "--quiet", "exec", IMAGE, "true"]
        same_argv = [*step, *batch_plan.exec_argv(plan, ["true"], gpus=False)]
        result.params = {
            "tag": tag_of(rxd),
            "hold_job_name": hold_name,
            "n": sizes.batch_n,
            "user": USER,
            "rx_command": spank_argv,
            "rxctl_run_command": run_argv,
            "baseline_command": plain_argv,
            "same_apptainer_command": same_argv,
        }
        limit = max(3, sizes.batch_n // 20)
        failures = tuple(Failures(limit) for _ in range(4))
        sides = (spank_argv, run_argv, plain_argv, same_argv)
        spank, via_run, plain, same = rotate(
            [lambda a=argv: timed_as(a, env=env) for argv in sides], sizes.batch_n, failures
        )
        seq = compare(spank, plain)
        run_summary, same_summary = summarize(via_run), summarize(same)
        own = round(seq["rx"]["p50_ms"] - same_summary["p50_ms"], 3)
        mount = round(same_summary["p50_ms"] - seq["baseline"]["p50_ms"], 3)
        result.results = {
            "sequential": seq,
            "rxctl_run": run_summary,
            "same_apptainer_by_hand": same_summary,
            "breakdown_p50_ms": {"rx_slurm_own": own, "snapshot_and_workspace_mounts": mount},
            "failures": {
                name: f.report()
                for name, f in zip(("spank", "rxctl_run", "plain", "same"), failures, strict=True)
            },
        }
        result.rows = [
            Row(
                "batch",
                "batch step p50 (`srun --rx-project=P true`)",
                seq["rx"]["p50_ms"],
                seq["baseline"]["p50_ms"],
                "ms",
                "srun apptainer exec IMAGE true",
                note=f"{seq['overhead_p50_ms']:+.0f} ms: rxctl run and rxd's plan {own:+.0f} ms, "
                f"the snapshot and workspace mounts {mount:+.0f} ms",
                headline=True,
            ),
            Row(
                "batch",
                "batch step p95",
                seq["rx"]["p95_ms"],
                seq["baseline"]["p95_ms"],
                "ms",
                "srun apptainer exec IMAGE true",
            ),
            Row(
                "batch",
                "batch step p50 with `srun rxctl run` (no plugin)",
                run_summary["p50_ms"],
                seq["baseline"]["p50_ms"],
                "ms",
                "srun apptainer exec IMAGE true",
            ),
            Row(
                "batch",
                "batch step p50 against the same apptainer exec by hand",
                seq["rx"]["p50_ms"],
                same_summary["p50_ms"],
                "ms",
                "srun apptainer exec --overlay SNAP:ro -B WS:/workspace",
                note="rx-slurm's own part alone",
            ),
        ]
        result.notes = [
            "All four run as steps of one held allocation of the bench user (srun --overlap), "
            "with the same apptainer and image; the plugin and rxctl run add rxctl's start-up "
            "and one request to rxd, the snapshot overlay its mount.",
        ]
    finally:
        if job_id is not None:
            run_as(["scancel", str(job_id)])
        container.stop_noting(result.notes)
    return result
