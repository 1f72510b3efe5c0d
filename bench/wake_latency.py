"""Wake latency: from `rxctl exec` on a sleeping (stopped) container to its first output, against
doing it by hand: `sbatch` the same holder script, poll until RUNNING, then run the step.

The by-hand side renders the holder with rxd's own template and job options (so the job, the
instance start and the step are the same work), submits it as the same user, polls `squeue -h
-j J` every 0.1 s until RUNNING and then the holder's status file every 0.05 s until the
instance is up (a step before that fails: the instance does not exist yet), then runs `echo
ready` as an `srun --overlap` step. Its own overlay and job name keep it apart from the rx-slurm
container. After each wake the job is ended and gone before the next one, and the sides take
turns.
"""

from __future__ import annotations

import os
import subprocess
import time
from datetime import UTC
from pathlib import Path
from typing import Any

from bench.exec_latency import RXCTL, raw_env, raw_step
from bench.harness import (
    USER,
    BenchError,
    Result,
    Row,
    as_user,
    compare,
    must,
    run_as,
    summarize,
    wait_until,
)
from bench.rig import Container, new_container, suffix, tag_of
from bench.suite import Context

SQUEUE_POLL_S = 0.1
STATUS_POLL_S = 0.05
WAKE_TIMEOUT_S = 300.0


def first_output(argv: list[str], env: dict[str, str] | None = None) -> float:
    """Seconds from starting argv (as the bench user) to the first byte on its stdout."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **as_user(USER, env),
    )
    assert proc.stdout is not None
    first = proc.stdout.read(1)
    took = time.perf_counter() - started
    _, err = proc.communicate(timeout=WAKE_TIMEOUT_S)
    if not first or proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {proc.returncode}: {err.decode().strip()}")
    return took


class ByHand:
    """A holder job submitted, waited for and used by hand, as a user would script it."""

    def __init__(self, container: Container, row: dict[str, Any]) -> None:
        from rxslurm.daemon.config import load_config
        from rxslurm.daemon.runtime import apptainer
        from rxslurm.slurm.runas import RunAs

        rxd = container.rxd
        self.config = load_config(rxd.config)
        self.project = container.project
        self.rx_row = row
        self.name = f"bench-raw-{suffix()}"
        base = rxd.root / "raw"
        base.mkdir(mode=0o755, exist_ok=True)
        self.state_dir = base / self.name
        self.state_dir.mkdir(mode=0o700)
        owner = RunAs.for_user(row["runtime_user"])
        os.chown(self.state_dir, owner.uid, owner.gid)
        self.overlay = self.state_dir / "overlay.img"
        apptainer.create_overlay(
            self.overlay,
            self.config.containers.overlay_size_mb,
            owner,
            self.config.apptainer.binary,
        )
        self.script, self.spec = self._job()
        self.phases: list[dict[str, float]] = []

    def _job(self) -> tuple[str, Any]:
        """The holder script and sbatch options rxd would use for this project's container."""
        import sqlite3

        from rxslurm.daemon.containers.service import _gres
        from rxslurm.daemon.runtime import apptainer
        from rxslurm.daemon.runtime.agent_files import agent_params
        from rxslurm.daemon.settings import Settings, effective
        from rxslurm.slurm.adapter import JobSpec
        from rxslurm.slurm.runas import RunAs
        from rxslurm.slurm.script import render_batch_script

        conn = sqlite3.connect(f"file:{self.config.daemon.ledger}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        try:
            project = dict(
                conn.execute("SELECT * FROM projects WHERE name = ?", [self.project]).fetchone()
            )
        finally:
            conn.close()
        eff = effective(Settings.from_row(project), self.config.defaults)
        script = render_batch_script(
            "holder.sh",
            instance=self.name,
            image=self.rx_row["image"],
            overlay=self.overlay,
            workspace=project["workspace"],
            binds=",".join(self.config.containers.fixed_mounts),
            gpu_flag=apptainer.gpu_flag(eff.gpus, eff.gpu_driver),
            state_dir=self.state_dir,
            grace_s=self.config.containers.stop_grace_s,
            **apptainer.instance_options(
                self.config.apptainer, self.state_dir, RunAs.for_user(self.rx_row["runtime_user"])
            ),
            # The same exec agent as rx-slurm's holder starts before it reports the instance up.
            **agent_params(),
            # A bench project sets no variables (rxctl env) and runs no service: the holder
            # gets neither.
            env=apptainer.holder_env(()),
            service=apptainer.holder_words(()),
            port=0,
            output_cap=8 << 20,
            restarts=0,
        )
        spec = JobSpec(
            name=self.name,
            partition=eff.partition or None,
            cpus=eff.cpus or 1,
            mem_mb=eff.mem_mb or None,
            gres=_gres(eff),
            time_limit_min=eff.time_limit_min or None,
            workdir=str(self.state_dir),
            output=str(self.state_dir / "job-%j.out"),
            singleton=True,
            requeue=False,
        )
        return script, spec

    def argv(self) -> list[str]:
        return ["sbatch", "--parsable", *self.spec.sbatch_options()]

    def wake(self) -> float:
        """sbatch, poll until RUNNING, wait for the instance, `echo ready`: seconds to output."""
        started = time.perf_counter()
        sub = must(run_as(self.argv(), input=self.script), "sbatch by hand")
        job_id = int(sub.stdout.strip().split(";")[0])
        submitted = time.perf_counter()
        try:
            deadline = time.monotonic() + WAKE_TIMEOUT_S
            while True:
                state = run_as(["squeue", "-h", "-j", str(job_id), "-o", "%T"]).stdout.strip()
                if state == "RUNNING":
                    break
                if state not in ("PENDING", "CONFIGURING", "") or time.monotonic() > deadline:
                    raise BenchError(f"the by-hand job {job_id} is {state or 'gone'}")
                time.sleep(SQUEUE_POLL_S)
            running = time.perf_counter()
            status = self.state_dir / f"job-{job_id}.status"
            line = wait_until(
                lambda: _ready(status), WAKE_TIMEOUT_S, STATUS_POLL_S, "the by-hand instance"
            )
            if line.startswith("error"):
                raise BenchError(f"the by-hand holder failed: {line}")
            ready = time.perf_counter()
            row = {
                **self.rx_row,
                "job_id": job_id,
                "instance": line.split(" ", 1)[1],
                "state_dir": str(self.state_dir),
            }
            step = raw_step(row, self.project, ["echo", "ready"])
            first_output(step, raw_env(row))
            done = time.perf_counter()
        finally:
            run_as(["scancel", str(job_id)])
        self.phases.append(
            {
                "sbatch_s": submitted - started,
                "to_running_s": running - submitted,
                "to_instance_s": ready - running,
                "step_s": done - ready,
            }
        )
        wait_until(lambda: _gone(job_id), 120, 0.2, f"by-hand job {job_id} to end")
        return done - started


def transitions(container: Container, t0: float, took: float) -> dict[str, float]:
    """When rxd recorded each state of this wake (its ledger events), in seconds from the start
    of `rxctl exec`; and from RUNNING to the first output."""
    import sqlite3
    from datetime import datetime

    conn = sqlite3.connect(f"file:{container.rxd.ledger}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            "SELECT at, json_extract(detail, '$.to'), json_extract(detail, '$.reason') "
            "FROM events WHERE action = 'container.state' AND target_id = ? ORDER BY id",
            [f"rx-{container.project}"],
        ).fetchall()
    finally:
        conn.close()
    out: dict[str, float] = {}
    for at, to, reason in rows:
        when = datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
        if when < t0:
            continue
        key = f"to_{to}" + (f" ({reason})" if to == "starting" and reason else "")
        out.setdefault(key, when - t0)
    if "to_running" in out:
        out["running_to_output"] = took - out["to_running"]
    return out


def _ready(status: Path) -> str | None:
    try:
        line = status.read_text().strip()
    except OSError:
        return None
    return line if line.startswith(("running", "error")) else None


def _gone(job_id: int) -> bool:
    state = run_as(["squeue", "-h", "-j", str(job_id), "-o", "%T"]).stdout.strip()
    return state in ("", "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT")


def run(ctx: Context) -> Result:
    sizes = ctx.sizes
    rxd = ctx.rxd()
    container = new_container(rxd, "bx-wake")
    result = Result(
        "wake", "Wake latency: rxctl exec on a stopped container vs sbatch by hand", ctx.quick
    )
    try:
        row = container.enable()
        container.stop()
        hand = ByHand(container, row)
        rx_argv = [
            RXCTL,
            "--socket",
            str(rxd.socket),
            "exec",
            "--project",
            container.project,
            "--",
            "echo",
            "ready",
        ]

        rx_phases: list[dict[str, float]] = []

        def rx() -> float:
            t0 = time.time()
            took = first_output(rx_argv)
            rx_phases.append(transitions(container, t0, took))
            container.stop()
            return took

        xs: list[float] = []
        ys: list[float] = []
        for i in range(sizes.wake_n):
            if i % 2 == 0:
                xs.append(rx())
                ys.append(hand.wake())
            else:
                ys.append(hand.wake())
                xs.append(rx())
        cmp = compare(xs, ys)
        phases = {key: summarize([p[key] for p in hand.phases]) for key in hand.phases[0]}
        rx_keys = sorted({k for p in rx_phases for k in p})
        rx_summary = {k: summarize([p[k] for p in rx_phases if k in p]) for k in rx_keys}
        result.params = {
            "tag": tag_of(rxd),
            "n": sizes.wake_n,
            "rx_command": ["rxctl", "exec", "--project", container.project, "--", "echo", "ready"],
            "baseline": "sbatch holder.sh (rxd's template and options); poll squeue -h -j J "
            f"every {SQUEUE_POLL_S}s until RUNNING; poll the holder's status file every "
            f"{STATUS_POLL_S}s until the instance runs; srun --overlap ... echo ready",
            "baseline_sbatch": hand.argv(),
            # The by-hand holder jobs carry no tag: their name is how to find them.
            "baseline_job_name": hand.name,
            "reconcile_interval_s": hand.config.containers.reconcile_interval,
            "user": USER,
        }
        result.results = {"wake": cmp, "baseline_phases": phases, "rx_phases": rx_summary}
        result.rows = [
            Row(
                "wake",
                "wake to first output p50",
                cmp["rx"]["p50_ms"] / 1000,
                cmp["baseline"]["p50_ms"] / 1000,
                "s",
                "sbatch + poll + srun",
                note=f"{cmp['overhead_p50_ms'] / 1000:+.2f} s",
                headline=True,
            ),
            Row(
                "wake",
                "wake to first output p95",
                cmp["rx"]["p95_ms"] / 1000,
                cmp["baseline"]["p95_ms"] / 1000,
                "s",
                "sbatch + poll + srun",
            ),
        ]
        result.notes = [
            "rx-slurm learns that the job started from Slurm's controller hook (PrologSlurmctld "
            "pokes rxd), and that the instance is up from the holder's status file, read by a "
            "reconcile pass every 0.5 s while the container starts; rx_phases shows when.",
        ]
    finally:
        container.stop_noting(result.notes)
    return result
