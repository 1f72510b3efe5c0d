"""What the container service needs from the world, as ports: Slurm, the container runtime, a
clock. The service, the reconciler and the exec server talk to these only; ``SlurmCli``
(slurm/adapter.py) and ``ApptainerRuntime`` (runtime/apptainer.py) implement them on a cluster,
tests/support/fakes.py in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from rxslurm.daemon.runtime.agent_files import AgentSessions
from rxslurm.daemon.runtime.holder_status import HolderStatus
from rxslurm.protocol.agent_wire import Endpoint
from rxslurm.slurm.adapter import JobSpec
from rxslurm.slurm.jobs import Listing
from rxslurm.slurm.runas import RunAs
from rxslurm.slurm.steps import StepInfo
from rxslurm.slurm.usage import JobUsage

# The time now, timezone-aware UTC (ledger.records.utcnow); a fake one moves when told to.
Clock = Callable[[], datetime]


class Scheduler(Protocol):
    """The batch system: holder jobs and the steps that run in them."""

    def submit(self, script: str, spec: JobSpec, as_user: RunAs) -> int:
        """Submit ``script`` as ``as_user``; the job id. SlurmError when it was not."""
        ...

    def queue(self, name_prefix: str | None = None) -> Listing:
        """Every job whose name starts with ``name_prefix`` (one call)."""
        ...

    def history(self, job_ids: Iterable[int]) -> Listing:
        """Final records of jobs that left the queue."""
        ...

    def cancel(self, job_id: int) -> None:
        """End the job; one that already ended is not an error."""
        ...

    def step_argv(
        self,
        job_id: int,
        argv: Sequence[str],
        *,
        tty: bool,
        step_name: str,
        portable: bool = False,
    ) -> list[str]:
        """The command that runs ``argv`` as a step inside the running job ``job_id``."""
        ...

    def steps(self, job_ids: Iterable[int]) -> list[StepInfo]:
        """The numbered steps still running in ``job_ids`` (one call)."""
        ...

    def step_exits(self, job_id: int) -> dict[str, int]:
        """How the job's ended steps ended (exit status by step name), from accounting."""
        ...

    def signal_step(self, step_id: str, signal: str, as_user: RunAs | None = None) -> None:
        """Signal one step's processes; a step that already ended is not an error."""
        ...

    def signal_inside(
        self, job_id: int, argv: Sequence[str], *, as_user: RunAs, env: Mapping[str, str]
    ) -> bool:
        """Run ``argv`` (a runtime's ``signal_argv`` and the signal) as a short step of
        ``job_id``; whether it found the command to signal."""
        ...

    def usage(self, job_id: int, timeout: float = 5.0) -> JobUsage:
        """What the running job uses now (CPU time, memory, GPUs held)."""
        ...


@dataclass(frozen=True)
class HolderRequest:
    """What the holder script of one container is made from."""

    instance: str
    image: str
    overlay: str
    workspace: str
    state_dir: Path
    user: RunAs
    binds: tuple[str, ...] = ()
    gpus: int = 0
    gpu_driver: str = ""
    grace_s: int = 10
    # Service projects all run as one account: each gets a home and a /tmp of its own.
    own_home_and_tmp: bool = False
    # The project's environment variables (name, value), for the instance's start.
    env: tuple[tuple[str, str], ...] = ()
    # The project's service (docs/services.md): its command's words, run in the instance once it
    # is up, and the port it listens on (0: none), which the holder reports.
    service: tuple[str, ...] = ()
    port: int = 0
    # The most bytes of the service's output file before it starts anew (one older part kept),
    # and how many times a service that fails is started again (0: never).
    output_cap: int = 8 * 1024 * 1024
    restarts: int = 0


@dataclass(frozen=True)
class BuildRequest:
    """What the batch script of one image build is made from (every path absolute)."""

    build_dir: str  # the build's own folder, the runtime user's: the job works and writes there
    context: str  # the workspace folder copied (minus exclusions) as the build's working folder
    definition: str  # the Apptainer definition built
    ignore: str = ""  # .dockerignore lines
    plain_http: bool = False  # its base comes from a registry served over plain HTTP


@dataclass(frozen=True)
class OneShotRequest:
    """What the batch script of one one-shot command (`rxctl run-once`) is made from."""

    image: str
    snapshot: str  # the newest overlay snapshot, mounted read-only; "": the bare image
    workspace: str
    command: tuple[str, ...]  # the words of the command, each one argv item
    state_dir: str  # the container's folder: its home when the deployment gives one its own
    user: RunAs  # the runtime identity the job runs as
    binds: tuple[str, ...] = ()
    gpus: int = 0
    gpu_driver: str = ""
    # Service projects all run as one account: each gets a home and a /tmp of its own.
    own_home_and_tmp: bool = False


class ContainerRuntime(Protocol):
    """The container runtime on the nodes: how a container is held, watched and entered."""

    def program(self) -> str:
        """The runtime's program as the nodes run it (an absolute path when known)."""
        ...

    def version(self) -> str | None:
        """The installed version; None when there is none that runs."""
        ...

    def create_overlay(self, path: Path, size_mb: int, as_user: RunAs) -> None:
        """The container's persistent writable layer, made as (and owned by) ``as_user``."""
        ...

    def holder_script(self, holder: HolderRequest) -> str:
        """The batch script that starts the instance and holds it for the job's life."""
        ...

    def holder_status(self, state_dir: str, job_id: int, uid: int) -> HolderStatus:
        """What the holder of ``job_id`` reports, read safely from ``uid``'s folder."""
        ...

    def agent_endpoint(self, state_dir: str, job_id: int, uid: int) -> Endpoint | None:
        """Where the exec agent of ``job_id`` listens and its key; None when it has none."""
        ...

    def agent_sessions(self, state_dir: str, job_id: int, uid: int) -> AgentSessions | None:
        """The exec agent's open sessions and when they last changed; None when unknown."""
        ...

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
        """The command that runs ``argv`` (or a shell) in the running ``instance``; with
        ``launcher`` (the step's name) in a process group of its own that ``signal_argv``
        reaches."""
        ...

    def signal_argv(self, instance: str, launcher: str) -> list[str]:
        """The command that passes a signal (its last word, added by the sender) to the command
        of the step called ``launcher``."""
        ...

    def has_launcher(self, state_dir: str, job_id: int, uid: int) -> bool:
        """Whether steps of ``job_id`` can run their command under the launcher."""
        ...

    def exec_env(self, state_dir: str, variables: Mapping[str, str]) -> dict[str, str]:
        """What the exec command's environment needs to find the holder's instance and to give
        the command `variables` (never on its command line)."""
        ...

    def build_script(self, build: BuildRequest) -> str:
        """The batch script that builds an image from a definition, as the job's user."""
        ...

    def one_shot_script(self, one_shot: OneShotRequest) -> str:
        """The batch script that runs one command in the image and ends with its exit code."""
        ...
