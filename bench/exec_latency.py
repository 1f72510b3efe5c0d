"""Exec latency: `rxctl exec -p P -- true` on a running container against the same step by hand.

The baseline is exactly the step rxd runs (rxslurm.daemon.exec_server.srun_argv): `srun
--jobid J --overlap --ntasks=1 --quiet ... apptainer exec --pwd /workspace instance://NAME true`,
as the job's user with APPTAINER_CONFIGDIR=<state_dir>/apptainer. The two sides alternate
(ABBA), so drift and other users of the cluster hit both alike. To show where rx-slurm's time
goes, two more figures: rxctl's own start-up (`rxctl --version`) and a session on rxd's exec
socket from a process that is already running (bench.clients exec: no interpreter start-up).
Then throughput: `clients` processes at once, each running its share of the execs.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.harness import (
    REPO,
    VENV_BIN,
    BenchError,
    Result,
    Row,
    compare,
    must,
    run_as,
    summarize,
    timed_as,
)
from bench.rig import new_container, tag_of
from bench.suite import Context

RXCTL = str(VENV_BIN / "rxctl")
PYTHON = str(VENV_BIN / "python")
WARMUP = 3


def raw_step(row: dict[str, Any], project: str, command: Sequence[str]) -> list[str]:
    """The step rxd would run for this container, built by rxd's own function."""
    from rxslurm.daemon.containers import ExecTarget
    from rxslurm.daemon.exec_server import ExecRequest, srun_argv
    from rxslurm.slurm.runas import RunAs

    target = ExecTarget(
        container_id=row["id"],
        job_id=row["job_id"],
        node=row["node"],
        instance=row["instance"],
        state_dir=row["state_dir"],
        runas=RunAs.for_user(row["runtime_user"]),
    )
    srun = shutil.which("srun") or "srun"
    return srun_argv(srun, "apptainer", target, ExecRequest(project, tuple(command)))


def raw_env(row: dict[str, Any]) -> dict[str, str]:
    return {"APPTAINER_CONFIGDIR": f"{row['state_dir']}/apptainer"}


def alternate(a: Callable[[], float], b: Callable[[], float], n: int) -> tuple[list, list]:
    """n samples of each, in ABBA order, after a few unrecorded warm-up rounds."""
    for _ in range(WARMUP):
        a()
        b()
    xs: list[float] = []
    ys: list[float] = []
    for i in range(n):
        if i % 2 == 0:
            xs.append(a())
            ys.append(b())
        else:
            ys.append(b())
            xs.append(a())
    return xs, ys


def concurrent(one: Callable[[], float], clients: int, total: int) -> dict[str, Any]:
    """`total` calls of `one` spread over `clients` threads (each a process at a time)."""
    shares = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    samples: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        try:
            mine = [one() for _ in range(k)]
        except BaseException as exc:  # re-raised below, in the caller's thread
            errors.append(exc)
            return
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=worker, args=(k,)) for k in shares if k]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise BenchError(f"a concurrent client failed: {errors[0]}")
    return {
        "clients": len(threads),
        "calls": len(samples),
        "wall_s": round(wall, 3),
        "per_s": round(len(samples) / wall, 2),
        "latency": summarize(samples),
    }


def run(ctx: Context) -> Result:
    sizes = ctx.sizes
    rxd = ctx.rxd()
    container = new_container(rxd, "bx-exec")
    result = Result("exec", "Exec latency: rxctl exec vs srun --overlap by hand", ctx.quick)
    try:
        row = container.enable()
        project = container.project
        rx_argv = [RXCTL, "--socket", str(rxd.socket), "exec", "-p", project, "--", "true"]
        base_argv = raw_step(row, project, ["true"])
        env = raw_env(row)
        result.params = {
            "tag": tag_of(rxd),
            "n": sizes.exec_n,
            "clients": sizes.exec_clients,
            "concurrent_n": sizes.exec_concurrent_n,
            "warmup": WARMUP,
            "rx_command": ["rxctl", "exec", "-p", project, "--", "true"],
            "baseline_command": base_argv,
            "baseline_env": env,
            "user": container.user,
            "node": row["node"],
        }

        def rx() -> float:
            return timed_as(rx_argv)

        def base() -> float:
            return timed_as(base_argv, env=env)

        xs, ys = alternate(rx, base, sizes.exec_n)
        seq = compare(xs, ys)
        startup = summarize(
            [timed_as([RXCTL, "--version"]) for _ in range(max(5, sizes.exec_n // 4))]
        )
        loop = must(
            run_as(
                [
                    PYTHON,
                    "-m",
                    "bench.clients",
                    "exec",
                    str(rxd.socket),
                    project,
                    str(sizes.exec_n),
                ],
                cwd=REPO,
                timeout=600,
            ),
            "exec socket loop",
        )
        import json

        socket_only = json.loads(loop.stdout)
        if "error" in socket_only:
            raise BenchError(f"exec socket loop: {socket_only['error']}")
        socket_summary = summarize(socket_only["seconds"])
        conc_rx = concurrent(rx, sizes.exec_clients, sizes.exec_concurrent_n)
        conc_base = concurrent(base, sizes.exec_clients, sizes.exec_concurrent_n)
        result.results = {
            "sequential": seq,
            "rxctl_startup": startup,
            "exec_socket_session": socket_summary,
            "breakdown_p50_ms": {
                "raw_srun_step": seq["baseline"]["p50_ms"],
                "rxd_over_raw_step": round(socket_summary["p50_ms"] - seq["baseline"]["p50_ms"], 3),
                "rxctl_process_over_socket_session": round(
                    seq["rx"]["p50_ms"] - socket_summary["p50_ms"], 3
                ),
                "rxctl_version_startup": startup["p50_ms"],
            },
            "concurrent": {
                "rx": conc_rx,
                "baseline": conc_base,
                "ratio_per_s": round(conc_rx["per_s"] / conc_base["per_s"], 2),
            },
        }
        result.rows = [
            Row(
                "exec",
                "exec p50 (`-- true`)",
                seq["rx"]["p50_ms"],
                seq["baseline"]["p50_ms"],
                "ms",
                "raw srun --overlap",
            ),
            Row(
                "exec",
                "exec p95",
                seq["rx"]["p95_ms"],
                seq["baseline"]["p95_ms"],
                "ms",
                "raw srun --overlap",
            ),
            Row(
                "exec",
                "exec overhead p50",
                seq["overhead_p50_ms"],
                None,
                "ms",
                better="",
                note=f"of which rxctl start-up ~{startup['p50_ms']:.0f} ms",
            ),
            Row(
                "exec",
                f"exec throughput, {sizes.exec_clients} clients",
                conc_rx["per_s"],
                conc_base["per_s"],
                "/s",
                "raw srun --overlap",
                better="higher",
            ),
        ]
        result.notes = [
            "Both sides run the same srun step with the same apptainer; the rx-slurm side adds "
            "rxctl's start-up, the exec-socket hand-over and rxd's authorization.",
        ]
    finally:
        try:
            container.stop()
        except BenchError as exc:
            result.notes.append(f"stopping the container failed: {exc}")
    return result
