"""Status and exec through rxd's network door beside its local socket, in one paired run.

The same rxctl command as the bench user, once on the service host's Unix socket (`--socket`,
the caller known by SO_PEERCRED) and once with only `$RXSLURM_SERVER` (the MUNGE TCP door, as
on a login node or in a batch job: a credential munged makes per request, bound to it, decoded
by rxd), all in rotating order so that drift and other users of the shared cluster hit each
alike:
- `rxctl status --project P` (start-up and one request);
- `rxctl exec --project P -- true` on the step path (RXSLURM_EXEC_PATH=step): on the socket rxd
  starts the srun step with the caller's descriptors; through the door the caller is the
  container's runtime user, so rxd hands the step's argv back and rxctl runs srun itself;
- the same exec through the container's agent (RXSLURM_EXEC_PATH=agent): rxd grants it on
  either door, rxctl then talks to the agent.
Each row's baseline is the local socket: the difference is what the network door costs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bench.exec_latency import RXCTL, STEP_PATH, WARMUP, rotate
from bench.harness import Failures, Result, Row, compare, timed_as
from bench.rig import network_door, new_container, tag_of
from bench.suite import Context

AGENT_PATH = {"RXSLURM_EXEC_PATH": "agent"}
# (key, what the row calls it, rxctl's arguments after the door, its environment)
SERIES = (
    ("status", "status", ("status",), {}),
    ("exec_step", "exec -- true (step path)", ("exec",), STEP_PATH),
    ("exec_agent", "exec -- true (agent)", ("exec",), AGENT_PATH),
)


def argv_for(words: Sequence[str], project: str) -> list[str]:
    return [*words, "--project", project, *(["--", "true"] if words[0] == "exec" else [])]


def run(ctx: Context) -> Result:
    sizes = ctx.sizes
    rxd = ctx.rxd()
    container = new_container(rxd, "bx-door")
    result = Result(
        "door", "Status and exec: the network door (MUNGE, TCP) vs the local socket", ctx.quick
    )
    try:
        row = container.enable()
        project = container.project
        server = network_door(rxd)
        socket_side = [RXCTL, "--socket", str(rxd.socket)]
        fns: list[Callable[[], float]] = []
        commands: dict[str, Any] = {}
        for key, _, words, env in SERIES:
            args = argv_for(words, project)
            door_env: Mapping[str, str] = {**env, "RXSLURM_SERVER": server}
            fns.append(lambda a=[*socket_side, *args], e=env: timed_as(a, env=e))
            fns.append(lambda a=[RXCTL, *args], e=door_env: timed_as(a, env=e))
            commands[key] = {"socket": ["rxctl", "--socket", "S", *args], "door": ["rxctl", *args]}
            commands[key]["env"] = env
        result.params = {
            "tag": tag_of(rxd),
            "n": sizes.exec_n,
            "warmup": WARMUP,
            "commands": commands,
            "network_door": server,
            "user": container.user,
            "node": row["node"],
        }
        load_before = os.getloadavg()
        limit = max(3, sizes.exec_n // 20)
        failures = tuple(Failures(limit) for _ in fns)
        samples = rotate(fns, sizes.exec_n, failures)
        load_after = os.getloadavg()
        pairs = {
            key: compare(samples[2 * i + 1], samples[2 * i])  # rx: the door; baseline: socket
            for i, (key, *_) in enumerate(SERIES)
        }
        result.results = {
            **pairs,
            "load_average": {
                "before": [round(x, 2) for x in load_before],
                "after": [round(x, 2) for x in load_after],
            },
            "failures": {
                f"{key}_{side}": failures[2 * i + j].report()
                for i, (key, *_) in enumerate(SERIES)
                for j, side in enumerate(("socket", "door"))
            },
        }
        for key, label, *_ in SERIES:
            pair = pairs[key]
            door, sock = pair["rx"], pair["baseline"]
            result.rows.append(
                Row(
                    "door",
                    f"`rxctl {label}` p50 through the network door",
                    door["p50_ms"],
                    sock["p50_ms"],
                    "ms",
                    "over the local socket",
                    note=f"{pair['overhead_p50_ms']:+.1f} ms; p95 {door['p95_ms']:.0f} ms "
                    f"against {sock['p95_ms']:.0f} ms, stdev {door['stdev_ms']:.0f} and "
                    f"{sock['stdev_ms']:.0f} ms",
                    headline=key in ("status", "exec_agent"),
                )
            )
        result.notes = [
            "Both sides run the same rxctl as the same user in the same rotation; the door side "
            "adds a MUNGE credential per request (encoded by munged for rxctl, decoded by rxd) "
            "and TCP on loopback instead of the Unix socket.",
            f"The machine is shared with other developers' test runs: load average "
            f"{load_before[0]:.1f} before, {load_after[0]:.1f} after.",
        ]
    finally:
        container.stop_noting(result.notes)
    return result
