"""API throughput: concurrent `GET /v1/projects/P/status` over rxd's Unix socket from 1, 8 and 64
clients, with rxd's CPU time per request.

Clients are processes of the bench user (bench.clients api), up to 8, each with threads to make
up the client count; every request opens its own connection, as rxctl does. They start together
at a wall-clock instant and run for a fixed window; rxd's CPU time (utime + stime of all its
threads, /proc/PID/stat) is read at both ends of the window. The status asked for is a running
container's. Baseline: what a user does without rx-slurm, `squeue -h -j J` for the same job,
from as many clients, with slurmctld's CPU time per query. The clients share the machine's
cores with rxd (and with slurmctld), so on a small machine they limit both sides.

The same status is also asked through rxd's network door (TCP on loopback, a MUNGE credential
made per request by the client and decoded by rxd), beside the Unix socket: what the door costs.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

from bench.exec_latency import PYTHON
from bench.harness import (
    REPO,
    BenchError,
    Result,
    Row,
    as_user,
    cpu_seconds,
    pid_of,
    ratio,
    summarize,
)
from bench.rig import network_door, new_container, tag_of
from bench.suite import Context

MAX_PROCESSES = 8
START_DELAY_S = 2.0  # time for the client processes to start before the window opens


def window(clients: int, seconds: float, args: list[str], watch_pid: int | None) -> dict[str, Any]:
    """Run `clients` load threads spread over up to MAX_PROCESSES processes for one window."""
    procs = min(clients, MAX_PROCESSES)
    threads = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    start_at = time.time() + START_DELAY_S
    end_at = start_at + seconds
    running = [
        subprocess.Popen(
            [PYTHON, "-m", "bench.clients", *args, str(t), str(start_at), str(end_at)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **{**as_user("rxalice"), "cwd": str(REPO)},
        )
        for t in threads
    ]
    time.sleep(max(0.0, start_at - time.time()))
    cpu_before = cpu_seconds(watch_pid) if watch_pid else None
    time.sleep(max(0.0, end_at - time.time()))
    cpu_after = cpu_seconds(watch_pid) if watch_pid else None
    seconds_all: list[float] = []
    errors = 0
    first_errors: list[str] = []
    for proc in running:
        out, err = proc.communicate(timeout=seconds + 120)
        if proc.returncode != 0:
            raise BenchError(f"a load client failed: {err.strip()[-2000:]}")
        data = json.loads(out)
        seconds_all += data["seconds"]
        errors += data["error_count"]
        first_errors += data["errors"]
    count = len(seconds_all)
    if count == 0:
        raise BenchError(f"no request succeeded: {first_errors[:3]}")
    out_data: dict[str, Any] = {
        "clients": clients,
        "processes": procs,
        "window_s": seconds,
        "requests": count,
        "per_s": round(count / seconds, 1),
        "errors": errors,
        "first_errors": first_errors[:3],
        "latency": summarize(seconds_all),
    }
    if cpu_before is not None and cpu_after is not None:
        cpu = cpu_after - cpu_before
        out_data["server_cpu_s"] = round(cpu, 3)
        out_data["server_cpu_ms_per_request"] = round(cpu * 1000 / count, 3)
    return out_data


def run(ctx: Context) -> Result:
    sizes = ctx.sizes
    rxd = ctx.rxd()
    container = new_container(rxd, "bx-api")
    result = Result("api", "API throughput: status over the socket vs squeue -j", ctx.quick)
    try:
        row = container.enable()
        assert rxd.proc is not None
        slurmctld = pid_of("slurmctld")
        levels: dict[str, Any] = {}
        for clients in sizes.api_clients:
            rx = window(
                clients,
                sizes.api_seconds,
                ["api", str(rxd.socket), container.project],
                rxd.proc.pid,
            )
            base = window(clients, sizes.api_seconds, ["squeue", str(row["job_id"])], slurmctld)
            net = window(
                clients,
                sizes.api_seconds,
                ["api", f"tcp:{network_door(rxd)}", container.project],
                rxd.proc.pid,
            )
            levels[str(clients)] = {
                "rx": rx,
                "baseline": base,
                "ratio_per_s": ratio(rx["per_s"], base["per_s"]),
                "rx_network": net,
                "network_to_socket_per_s": ratio(net["per_s"], rx["per_s"]),
            }
        result.params = {
            "tag": tag_of(rxd),
            "clients": list(sizes.api_clients),
            "window_s": sizes.api_seconds,
            "route": f"GET /v1/projects/{container.project}/status",
            "baseline_command": ["squeue", "-h", "-j", str(row["job_id"]), "-o", "%T|%N|%M"],
            "user": "rxalice",
            "network_door": network_door(rxd),
        }
        result.results = {"levels": levels}
        for clients in sizes.api_clients:
            level = levels[str(clients)]
            result.rows.append(
                Row(
                    "api",
                    f"status requests/s, {clients} client{'s' if clients > 1 else ''}",
                    level["rx"]["per_s"],
                    level["baseline"]["per_s"],
                    "/s",
                    "`squeue -j`/s",
                    better="higher",
                    headline=clients in (min(sizes.api_clients), max(sizes.api_clients)),
                )
            )
        for clients in sizes.api_clients:
            level = levels[str(clients)]
            result.rows.append(
                Row(
                    "api",
                    f"status requests/s over the network door (MUNGE), {clients} "
                    f"client{'s' if clients > 1 else ''}",
                    level["rx_network"]["per_s"],
                    level["rx"]["per_s"],
                    "/s",
                    "over the Unix socket /s",
                    better="higher",
                )
            )
            result.rows.append(
                Row(
                    "api",
                    f"status latency p50 over the network door, {clients} "
                    f"client{'s' if clients > 1 else ''}",
                    level["rx_network"]["latency"]["p50_ms"],
                    level["rx"]["latency"]["p50_ms"],
                    "ms",
                    "over the Unix socket",
                )
            )
        top = levels[str(max(sizes.api_clients))]
        if "server_cpu_ms_per_request" in top["rx"]:
            result.rows.append(
                Row(
                    "api",
                    "server CPU per status request",
                    top["rx"]["server_cpu_ms_per_request"],
                    top["baseline"].get("server_cpu_ms_per_request"),
                    "ms",
                    "slurmctld CPU per `squeue -j`",
                    note=f"at {max(sizes.api_clients)} clients",
                    headline=True,
                )
            )
        if "server_cpu_ms_per_request" in top["rx_network"]:
            result.rows.append(
                Row(
                    "api",
                    "server CPU per status request over the network door",
                    top["rx_network"]["server_cpu_ms_per_request"],
                    top["rx"].get("server_cpu_ms_per_request"),
                    "ms",
                    "rxd CPU per request over the Unix socket",
                    note=f"at {max(sizes.api_clients)} clients; includes decoding the credential",
                )
            )
    finally:
        container.stop_noting(result.notes)
    return result
