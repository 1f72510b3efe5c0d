"""In-memory stand-ins for the container service's ports (ports.py): a scheduler
whose queue a test writes, a runtime whose holders report what a test says, a clock that moves
when told. With a temp-dir ledger they run the reconciler and the service without root or Slurm.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from rxslurm.daemon.ledger.timestamps import utcnow
from rxslurm.daemon.ports import BuildRequest, HolderRequest, OneShotRequest
from rxslurm.daemon.runtime.agent_files import AgentSessions
from rxslurm.daemon.runtime.holder_status import HolderStatus, Kind
from rxslurm.protocol.agent_wire import Endpoint
from rxslurm.slurm.adapter import JobSpec
from rxslurm.slurm.errors import SlurmUnavailable
from rxslurm.slurm.jobs import JobInfo, Listing
from rxslurm.slurm.runas import RunAs
from rxslurm.slurm.steps import StepInfo
from rxslurm.slurm.usage import JobUsage


class FakeClock:
    """The time now, as ``utcnow``; it starts at the real now and moves only by ``advance``."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class FakeScheduler:
    """A Slurm that does what a test says: ``jobs`` is the queue (squeue), ``history`` what
    sacct knows; cancels end the job in the queue; ``answering`` False: no call is answered."""

    def __init__(self, clock: FakeClock, first_id: int = 1000) -> None:
        self.clock = clock
        self.jobs: dict[int, JobInfo] = {}
        self.finished: dict[int, JobInfo] = {}
        self.submitted: list[tuple[str, JobSpec, RunAs]] = []
        self.cancelled: list[int] = []
        self.answering = True
        self.next_id = first_id
        # Exec steps squeue lists, signals sent to steps, what sstat says per job.
        self.running_steps: list[StepInfo] = []
        self.step_signals: list[tuple[str, str]] = []
        # Signal steps run (signal_inside): the argv; whether one finds its command.
        self.inside_signals: list[list[str]] = []
        self.launcher_answers = True
        self.usages: dict[int, JobUsage] = {}
        self.ended_steps: dict[int, dict[str, int]] = {}  # sacct: job -> {step name: status}
        self.usage_calls = 0

    def _answer(self) -> None:
        if not self.answering:
            raise SlurmUnavailable("slurm_load_jobs error: Unable to contact slurm controller")

    def submit(self, script: str, spec: JobSpec, as_user: RunAs) -> int:
        self._answer()
        job_id = self.next_id
        self.next_id += 1
        self.submitted.append((script, spec, as_user))
        self.jobs[job_id] = JobInfo(
            job_id=job_id,
            name=spec.name,
            user=as_user.user,
            state="PENDING",
            reason="Priority",
            comment=spec.comment,
            submit_time=int(self.clock().timestamp()),
        )
        return job_id

    def queue(self, name_prefix: str | None = None) -> Listing:
        self._answer()
        prefix = name_prefix or ""
        return Listing({i: j for i, j in self.jobs.items() if j.name.startswith(prefix)})

    def history(self, job_ids: Iterable[int]) -> Listing:
        self._answer()
        return Listing({i: self.finished[i] for i in job_ids if i in self.finished})

    def cancel(self, job_id: int) -> None:
        self._answer()
        self.cancelled.append(job_id)
        if job_id in self.jobs and not self.jobs[job_id].is_finished:
            self.end(job_id, "CANCELLED")

    def step_argv(
        self,
        job_id: int,
        argv: Sequence[str],
        *,
        tty: bool,
        step_name: str,
        portable: bool = False,
    ) -> list[str]:
        return ["srun", f"--jobid={job_id}", f"--job-name={step_name}", "--", *argv]

    def steps(self, job_ids: Iterable[int]) -> list[StepInfo]:
        self._answer()
        wanted = set(job_ids)
        return [s for s in self.running_steps if s.job_id in wanted]

    def step_exits(self, job_id: int) -> dict[str, int]:
        self._answer()
        return dict(self.ended_steps.get(job_id, {}))

    def signal_step(self, step_id: str, signal: str, as_user: RunAs | None = None) -> None:
        self._answer()
        self.step_signals.append((step_id, signal))

    def signal_inside(
        self, job_id: int, argv: Sequence[str], *, as_user: RunAs, env: Mapping[str, str]
    ) -> bool:
        self._answer()
        self.inside_signals.append(list(argv))
        return self.launcher_answers

    def usage(self, job_id: int, timeout: float = 5.0) -> JobUsage:
        self._answer()
        self.usage_calls += 1
        if job_id not in self.usages:
            raise SlurmUnavailable(f"sstat: no steps of job {job_id}")
        return self.usages[job_id]

    # -- what a test makes Slurm do ------------------------------------------------------------

    def run(self, job_id: int, node: str = "n1") -> None:
        self.jobs[job_id] = replace(self.jobs[job_id], state="RUNNING", reason="None", nodes=node)

    def pend(self, job_id: int, reason: str) -> None:
        self.jobs[job_id] = replace(self.jobs[job_id], state="PENDING", reason=reason)

    def end(self, job_id: int, state: str, *, in_queue: bool = True) -> None:
        """The job ends in ``state``; still listed by squeue (within MinJobAge) or only by
        sacct (``in_queue`` False)."""
        ended = replace(self.jobs[job_id], state=state, base_state=state)
        self.finished[job_id] = ended
        if in_queue:
            self.jobs[job_id] = ended
        else:
            del self.jobs[job_id]

    def forget(self, job_id: int) -> None:
        """Neither squeue nor sacct knows the job (slurmctld's state was lost)."""
        self.jobs.pop(job_id, None)
        self.finished.pop(job_id, None)

    def of(self, name: str) -> list[int]:
        return sorted(i for i, j in self.jobs.items() if j.name == name)


class FakeRuntime:
    """A container runtime whose holders report what ``report`` said; nothing runs."""

    def __init__(self) -> None:
        self.lines: dict[int, str] = {}
        self.overlays: list[Path] = []
        self.holders: list[HolderRequest] = []
        self.builds: list[BuildRequest] = []
        self.endpoints: dict[int, Endpoint] = {}
        self.agent_reports: dict[int, AgentSessions] = {}
        self.one_shots: list[OneShotRequest] = []

    def program(self) -> str:
        return "/fake/apptainer"

    def version(self) -> str | None:
        return "0.0-fake"

    def create_overlay(self, path: Path, size_mb: int, as_user: RunAs) -> None:
        self.overlays.append(path)

    def holder_script(self, holder: HolderRequest) -> str:
        self.holders.append(holder)
        return f"#!/bin/sh\n# holder of {holder.instance}\n"

    def holder_status(self, state_dir: str, job_id: int, uid: int) -> HolderStatus:
        line = self.lines.get(job_id)
        return HolderStatus(Kind.LINE, line) if line else HolderStatus(Kind.MISSING)

    def report(self, job_id: int, line: str) -> None:
        """What the holder of ``job_id`` writes in its status file ("running rx-p-7", ...)."""
        self.lines[job_id] = line

    def agent_endpoint(self, state_dir: str, job_id: int, uid: int) -> Endpoint | None:
        return self.endpoints.get(job_id)

    def agent_sessions(self, state_dir: str, job_id: int, uid: int) -> AgentSessions | None:
        """What the holder of ``job_id`` says of its agent's sessions (set agent_reports)."""
        return self.agent_reports.get(job_id)

    def exec_argv(
        self,
        instance: str,
        argv: Sequence[str],
        *,
        shell: bool,
        cwd: str | None,
        launcher: str | None = None,
        tty: bool = False,
    ) -> list[str]:
        under = [] if launcher is None or shell else ["/fake/launcher", launcher, "--"]
        return ["/fake/apptainer", "exec", f"instance://{instance}", *under, *argv]

    def signal_argv(self, instance: str, launcher: str) -> list[str]:
        return ["/fake/apptainer", "exec", f"instance://{instance}", "/fake/signal", launcher]

    def has_launcher(self, state_dir: str, job_id: int, uid: int) -> bool:
        return job_id in self.endpoints

    def exec_env(self, state_dir: str, variables: Mapping[str, str]) -> dict[str, str]:
        return {f"APPTAINERENV_{k}": v for k, v in variables.items()}

    def build_script(self, build: BuildRequest) -> str:
        self.builds.append(build)
        return f"#!/bin/sh\n# build in {build.build_dir}\n"

    def one_shot_script(self, one_shot: OneShotRequest) -> str:
        self.one_shots.append(one_shot)
        return f"#!/bin/sh\n# one shot of {len(one_shot.command)} words\n"


def fakes(**extra: Any) -> tuple[FakeClock, FakeScheduler, FakeRuntime]:
    clock = FakeClock(**extra)
    return clock, FakeScheduler(clock), FakeRuntime()
