"""Exec latency: `rxctl exec --project P -- true` on a running container against the step by hand.

The baseline is exactly the step rxd runs (rxslurm.daemon.exec.server.step_command): `srun
--jobid J --overlap --ntasks=1 --quiet ... apptainer exec --pwd /workspace instance://NAME true`,
as the job's user with APPTAINER_CONFIGDIR=<state_dir>/apptainer. The two sides alternate
(ABBA), so drift and other users of the cluster hit both alike. To show where rx-slurm's time
goes, two more figures: rxctl's own start-up (`rxctl status`, one request) and a session on
rxd's exec socket from a process that is already running (bench.clients exec: no interpreter
start-up).
Then throughput: `clients` processes at once, each running its share of the execs.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.harness import (
    REPO,
    USER,
    VENV_BIN,
    BenchError,
    Failures,
    Result,
    Row,
    as_user,
    compare,
    cpu_seconds,
    ratio,
    summarize,
    timed_as,
)
from bench.rig import new_container, tag_of
from bench.suite import Context

RXCTL = str(VENV_BIN / "rxctl")
PYTHON = str(VENV_BIN / "python")
WARMUP = 3
STEP_PATH = {"RXSLURM_EXEC_PATH": "step"}


def raw_step(row: dict[str, Any], project: str, command: Sequence[str]) -> list[str]:
    """The step rxd would run for this container, built by rxd's own function."""
    from rxslurm.daemon.config import ApptainerConfig
    from rxslurm.daemon.containers.service import ExecTarget
    from rxslurm.daemon.exec.server import ExecRequest, step_command
    from rxslurm.daemon.runtime.apptainer import ApptainerRuntime
    from rxslurm.slurm.adapter import SlurmCli
    from rxslurm.slurm.runas import RunAs

    target = ExecTarget(
        container_id=row["id"],
        job_id=row["job_id"],
        node=row["node"],
        instance=row["instance"],
        state_dir=row["state_dir"],
        runas=RunAs.for_user(row["runtime_user"]),
    )
    request = ExecRequest(project, tuple(command))
    # The bench's baseline runs the bare `apptainer` from PATH, as a user would by hand.
    runtime = ApptainerRuntime(ApptainerConfig(binary="apptainer"))
    return step_command(SlurmCli(), runtime, target, request, "rx-exec-bench")


def raw_env(row: dict[str, Any]) -> dict[str, str]:
    return {"APPTAINER_CONFIGDIR": f"{row['state_dir']}/apptainer"}


def rotate(
    fns: Sequence[Callable[[], float]], n: int, failures: Sequence[Failures]
) -> list[list[float]]:
    """n samples of each function, taking turns in rotating order (ABC, BCA, CAB, ...) so drift
    and other users of the cluster hit all alike; after a few unrecorded warm-up rounds."""
    for _ in range(WARMUP):
        for fn in fns:
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    turn = 0
    while any(len(s) < n for s in samples):
        for k in range(len(fns)):
            i = (turn + k) % len(fns)
            if len(samples[i]) < n and (took := failures[i].attempt(fns[i])) is not None:
                samples[i].append(took)
        turn += 1
    return samples


class SocketClient:
    """A process of the bench user that runs one exec-socket session per request."""

    def __init__(self, socket: Path, project: str) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "bench.clients", "exec-serve", str(socket), project],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            **{**as_user(USER), "cwd": str(REPO)},
        )

    def __call__(self) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError(f"exec socket client died: {self.proc.communicate()[1][-2000:]}")
        answer = json.loads(line)
        if "error" in answer:
            raise BenchError(f"exec socket session: {answer['error']}")
        return float(answer["seconds"])

    def close(self) -> None:
        self.proc.communicate(timeout=60)


def concurrent(
    one: Callable[[], float], clients: int, total: int, failures: Failures
) -> dict[str, Any]:
    """`total` calls of `one` spread over `clients` threads (each a process at a time)."""
    shares = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    samples: list[float] = []
    fatal: list[BaseException] = []
    lock = threading.Lock()
    before = len(failures.seen)

    def worker(k: int) -> None:
        mine = []
        try:
            for _ in range(k):
                took = failures.attempt(one)
                if took is not None:
                    mine.append(took)
        except BaseException as exc:  # re-raised below, in the caller's thread
            fatal.append(exc)
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=worker, args=(k,)) for k in shares if k]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if fatal:
        raise BenchError(f"a concurrent client failed: {fatal[0]}")
    return {
        "clients": len(threads),
        "calls": len(samples),
        "failed": len(failures.seen) - before,
        "wall_s": round(wall, 3),
        "per_s": round(len(samples) / wall, 2),
        "latency": summarize(samples),
    }


def socket_sessions(socket: Path, project: str, counts: list[int]) -> list[dict[str, Any]]:
    """Sessions on rxd's exec socket from already-running processes of the bench user, one
    process per count, all at once; each reports its samples and when it began and ended."""
    procs = [
        subprocess.Popen(
            [PYTHON, "-m", "bench.clients", "exec", str(socket), project, str(count)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **{**as_user(USER), "cwd": str(REPO)},
        )
        for count in counts
    ]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise BenchError(f"exec socket client failed: {stderr.strip()[-2000:]}")
        data = json.loads(stdout)
        if "error" in data:
            raise BenchError(f"exec socket client: {data['error']}")
        out.append(data)
    return out


def concurrent_sessions(
    socket: Path, project: str, clients: int, total: int, rxd_pid: int
) -> dict[str, Any]:
    """Throughput of rxd's exec path alone: `clients` socket clients at once, no rxctl start-up
    (each client process starts first; the window is from the first session to the last)."""
    shares = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    cpu_before = cpu_seconds(rxd_pid)
    runs = socket_sessions(socket, project, [k for k in shares if k])
    cpu = cpu_seconds(rxd_pid) - cpu_before
    samples = [x for r in runs for x in r["seconds"]]
    wall = max(r["ended"] for r in runs) - min(r["began"] for r in runs)
    return {
        "clients": len(runs),
        "calls": len(samples),
        "wall_s": round(wall, 3),
        "per_s": round(len(samples) / wall, 2),
        "latency": summarize(samples),
        "rxd_cpu_ms_per_session": round(cpu * 1000 / len(samples), 2),
    }


def run(ctx: Context) -> Result:
    sizes = ctx.sizes
    rxd = ctx.rxd()
    container = new_container(rxd, "bx-exec")
    result = Result("exec", "Exec latency: rxctl exec vs srun --overlap by hand", ctx.quick)
    try:
        row = container.enable()
        project = container.project
        rx_argv = [RXCTL, "--socket", str(rxd.socket), "exec", "--project", project, "--", "true"]
        base_argv = raw_step(row, project, ["true"])
        # rxctl's start-up, on the path exec takes: `status` of the same project (one request).
        startup_argv = [RXCTL, "--socket", str(rxd.socket), "status", "--project", project]
        env = raw_env(row)
        result.params = {
            "tag": tag_of(rxd),
            "n": sizes.exec_n,
            "clients": sizes.exec_clients,
            "concurrent_n": sizes.exec_concurrent_n,
            "warmup": WARMUP,
            "rx_command": ["rxctl", "exec", "--project", project, "--", "true"],
            "rx_env": STEP_PATH,
            "baseline_command": base_argv,
            "baseline_env": env,
            "user": container.user,
            "node": row["node"],
        }

        def rx() -> float:
            # The step path: the same step as the baseline (bench/agent_exec.py times the agent).
            return timed_as(rx_argv, env=STEP_PATH)

        def base() -> float:
            return timed_as(base_argv, env=env)

        # A few failed step launches are reported, not timed (see harness.Failures).
        limit = max(3, sizes.exec_n // 20)
        seq_failures = tuple(Failures(limit) for _ in range(4))
        via_socket = SocketClient(rxd.socket, project)
        try:
            xs, ys, zs, vs = rotate(
                (rx, base, via_socket, lambda: timed_as(startup_argv)),
                sizes.exec_n,
                seq_failures,
            )
        finally:
            via_socket.close()
        seq = compare(xs, ys)
        socket_summary = summarize(zs)
        startup = summarize(vs)
        conc_failures = (Failures(limit), Failures(limit))
        conc_rx = concurrent(rx, sizes.exec_clients, sizes.exec_concurrent_n, conc_failures[0])
        conc_base = concurrent(base, sizes.exec_clients, sizes.exec_concurrent_n, conc_failures[1])
        assert rxd.proc is not None
        conc_socket = concurrent_sessions(
            rxd.socket, project, sizes.exec_clients, sizes.exec_concurrent_n, rxd.proc.pid
        )
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
                "rxctl_status_startup": startup["p50_ms"],
            },
            "failures": {
                "sequential_rx": seq_failures[0].report(),
                "sequential_baseline": seq_failures[1].report(),
                "sequential_socket": seq_failures[2].report(),
                "concurrent_rx": conc_failures[0].report(),
                "concurrent_baseline": conc_failures[1].report(),
            },
            "concurrent": {
                "rx": conc_rx,
                "baseline": conc_base,
                "ratio_per_s": ratio(conc_rx["per_s"], conc_base["per_s"]),
                "socket_sessions": conc_socket,
            },
        }
        rxd_part = result.results["breakdown_p50_ms"]["rxd_over_raw_step"]
        result.rows = [
            Row(
                "exec",
                "exec p50 (`-- true`)",
                seq["rx"]["p50_ms"],
                seq["baseline"]["p50_ms"],
                "ms",
                "raw srun --overlap",
                note=f"{seq['overhead_p50_ms']:+.0f} ms: `rxctl status` as the user takes "
                f"{startup['p50_ms']:.0f} ms, rxd's part {rxd_part:+.1f} ms",
                headline=True,
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
                note=f"`rxctl status` as the user (start-up and one request) takes "
                f"{startup['p50_ms']:.0f} ms",
            ),
            Row(
                "exec",
                "exec p50 through rxd's socket, no CLI start-up",
                socket_summary["p50_ms"],
                seq["baseline"]["p50_ms"],
                "ms",
                "raw srun --overlap",
                note="rxd's own share of the overhead",
            ),
            Row(
                "exec",
                f"exec throughput, {sizes.exec_clients} clients",
                conc_rx["per_s"],
                conc_base["per_s"],
                "/s",
                "raw srun --overlap",
                better="higher",
                note=f"through the socket without rxctl start-up: {conc_socket['per_s']:.1f}/s",
            ),
        ]
        result.notes = [
            "Both sides run the same srun step with the same apptainer; the rx-slurm side adds "
            "rxctl's start-up, the exec-socket hand-over and rxd's authorization.",
        ]
    finally:
        container.stop_noting(result.notes)
    return result
