"""Exec through the container's agent: `rxctl exec --project P -- true` (RXSLURM_EXEC_PATH=agent:
rxd names the agent, rxctl connects to it with a MUNGE credential and it forks `true` in the
container) against the cheapest Slurm can do by hand, a raw `srun --jobid J --overlap true` (no
container at all), as the job's user. Beside them, the same rxctl on the step path
(RXSLURM_EXEC_PATH=step), for scale. The three take turns in rotating order. (rxctl asks rxd
for the agent on every exec: rxd decides whether the command may go to the agent at all, e.g.
not when the project has variables or secrets, which only a step rxd runs carries.)

Then what an agent or a coding assistant feels: 100 small commands one after the other, through
rx-slurm's agent and as raw steps, in blocks taken in ABBA order; the wall time of each block.
"""

from __future__ import annotations

import compileall
import time
from collections.abc import Callable

from bench.exec_latency import RXCTL, STEP_PATH, WARMUP, rotate
from bench.harness import REPO, Failures, Result, Row, compare, summarize, timed_as
from bench.rig import new_container, tag_of
from bench.suite import Context


def batch(one: Callable[[], float], n: int) -> float:
    """Seconds n calls of `one` take one after the other."""
    started = time.perf_counter()
    for _ in range(n):
        one()
    return time.perf_counter() - started


def compiled_client() -> bool:
    """Byte-compile the modules rxctl and the agent load, as installing a wheel does: the
    bench's user cannot write __pycache__ in the checkout, and without a current .pyc every
    rxctl would compile them again at its start (tens of ms, which no installed rxctl pays)."""
    folders = ("cli", "protocol", "slurm", "agent")
    return all(compileall.compile_dir(REPO / f / "rxslurm", quiet=1) for f in folders)


def run(ctx: Context) -> Result:
    sizes = ctx.sizes
    compiled = compiled_client()
    rxd = ctx.rxd()
    container = new_container(rxd, "bx-agent")
    result = Result(
        "agent", "Exec through the container's agent vs a raw srun --overlap step", ctx.quick
    )
    try:
        row = container.enable()
        project = container.project
        rx_argv = [RXCTL, "--socket", str(rxd.socket), "exec", "--project", project, "--", "true"]
        raw_argv = ["srun", "--jobid", str(row["job_id"]), "--overlap", "--quiet", "true"]
        agent_env = {"RXSLURM_EXEC_PATH": "agent"}
        step_env = STEP_PATH
        result.params = {
            "tag": tag_of(rxd),
            "n": sizes.exec_n,
            "batch": sizes.agent_batch,
            "warmup": WARMUP,
            "rx_command": ["rxctl", "exec", "--project", project, "--", "true"],
            "rx_env": agent_env,
            "step_env": step_env,
            "baseline_command": raw_argv,
            "user": container.user,
            "node": row["node"],
            "byte_compiled": compiled,
        }

        def agent() -> float:
            return timed_as(rx_argv, env=agent_env)

        def step() -> float:
            return timed_as(rx_argv, env=step_env)

        def raw() -> float:
            return timed_as(raw_argv)

        limit = max(3, sizes.exec_n // 20)
        failures = tuple(Failures(limit) for _ in range(3))
        xs, ys, zs = rotate((agent, raw, step), sizes.exec_n, failures)
        seq = compare(xs, ys)
        step_summary = summarize(zs)
        # ABBA blocks of `batch` commands each, one after the other.
        blocks: dict[str, list[float]] = {"rx": [], "baseline": []}
        for side, one in (("rx", agent), ("baseline", raw), ("baseline", raw), ("rx", agent)):
            blocks[side].append(batch(one, sizes.agent_batch))
        rx_batch = sum(blocks["rx"]) / len(blocks["rx"])
        raw_batch = sum(blocks["baseline"]) / len(blocks["baseline"])
        result.results = {
            "sequential": seq,
            "step_path": step_summary,
            "batch": {
                "commands": sizes.agent_batch,
                "rx_s": [round(s, 3) for s in blocks["rx"]],
                "baseline_s": [round(s, 3) for s in blocks["baseline"]],
                "rx_mean_s": round(rx_batch, 3),
                "baseline_mean_s": round(raw_batch, 3),
            },
            "failures": {
                "agent": failures[0].report(),
                "raw_step": failures[1].report(),
                "step_path": failures[2].report(),
            },
        }
        result.rows = [
            Row(
                "agent",
                "exec p50 through the agent (`rxctl exec -- true`, start-up included)",
                seq["rx"]["p50_ms"],
                seq["baseline"]["p50_ms"],
                "ms",
                "raw `srun --jobid J --overlap true`",
                note=f"the step path {step_summary['p50_ms']:.0f} ms",
                headline=True,
            ),
            Row(
                "agent",
                "exec p95 through the agent",
                seq["rx"]["p95_ms"],
                seq["baseline"]["p95_ms"],
                "ms",
                "raw `srun --jobid J --overlap true`",
                note=f"the step path: {step_summary['p95_ms']:.0f} ms",
            ),
            Row(
                "agent",
                f"{sizes.agent_batch} sequential small commands through the agent",
                rx_batch,
                raw_batch,
                "s",
                f"{sizes.agent_batch} raw `srun --overlap true`",
                headline=True,
            ),
        ]
        result.notes = [
            "The baseline runs no container: `true` on the node as a step of the job. The agent's "
            "side runs `true` inside the container, as the container's runtime user, with rxctl's "
            "start-up, its request to rxd and the MUNGE handshake both ways included.",
        ]
    finally:
        container.stop_noting(result.notes)
    return result
