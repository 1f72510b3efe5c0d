"""The container runtime: Apptainer, everything rx-slurm knows of it, in one place.

``ApptainerRuntime`` implements ``containers.ports.ContainerRuntime``: the holder script's values
and its rendering, the holder's status file, the ``apptainer exec instance://...`` argv of an
exec step and its environment, overlays, the version, and which program runs (``find_binary``,
the one lookup: ``[apptainer] binary``, else PATH; the holder script, exec steps, overlays and
the health check all get its answer; pulls, which run as the pull account with a fixed PATH, get
``pull_binary``). No other module spells an ``apptainer`` argv (tests/test_layers.py checks).

Pulls run as an unprivileged account with their own limits (images/pull.py, containers/pulls.py);
this module gives them their argv only.

``overlay create`` runs as the container's runtime user (the overlay lives in their folder and
must be theirs), an argv run through ``rxslurm.slurm.runas``.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from rxslurm.daemon.config import ApptainerConfig
from rxslurm.daemon.ports import BuildRequest, HolderRequest, OneShotRequest
from rxslurm.daemon.runtime.agent_files import AgentFiles, AgentSessions, agent_params
from rxslurm.daemon.runtime.holder_status import HolderStatus, StatusReader
from rxslurm.daemon.text_checks import reported_line
from rxslurm.protocol.agent_wire import Endpoint
from rxslurm.protocol.env_vars import apptainer_env
from rxslurm.slurm.runas import SAFE_PATH, RunAs, run
from rxslurm.slurm.script import render_batch_script

OVERLAY_TIMEOUT = 600.0  # mkfs.ext3 of a large sparse file takes a while on slow disks
VERSION_TIMEOUT = 30.0
MIN_OVERLAY_MB = 64  # Apptainer refuses smaller overlays
# The step path's launcher (its text is passed to the container's python3).
LAUNCHER_MODULE = "rxslurm.agent.launcher"


class ApptainerError(RuntimeError):
    """Apptainer failed; the message is the tool's last FATAL line (or its last output line)."""

    def __init__(self, message: str, returncode: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.returncode = returncode


def last_fatal(output: str) -> str:
    """The text of the last ``FATAL:`` line, else the last non-empty line; it becomes a
    container's last_error, and may quote what a registry or an image said: no control or bidi
    characters, at most a few hundred characters."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("FATAL:"):
            return reported_line(line[len("FATAL:") :].strip())
    return reported_line(lines[-1]) if lines else "no output"


def apptainer_version(binary: str = "") -> str | None:
    """The installed version (``1.4.5``), or None when there is no Apptainer that runs."""
    try:
        program = find_binary(binary)
        result = subprocess.run(
            [program, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT
        )
    except (ApptainerError, OSError, subprocess.TimeoutExpired):
        return None
    text = result.stdout.strip()
    if result.returncode != 0 or not text:
        return None
    match = re.match(r"(?:apptainer|singularity)(?:-ce)? version (\S+)", text)
    return match.group(1) if match else text


@functools.lru_cache(maxsize=4)
def _on_path(path: str) -> str | None:
    return shutil.which("apptainer", path=path) or shutil.which("singularity", path=path)


def find_binary(configured: str = "") -> str:
    """The one Apptainer program rxd runs everywhere (holder script, exec steps, overlays):
    ``[apptainer] binary`` when set, else ``apptainer`` (or ``singularity``) on rxd's PATH,
    looked up once. An absolute path, because the holder and the steps run with a fixed PATH."""
    if configured:
        return configured
    found = _on_path(os.environ.get("PATH", os.defpath))
    if found is None:
        raise ApptainerError("apptainer not found on PATH; set [apptainer] binary in rxd's config")
    return os.path.abspath(found)


def program(settings: ApptainerConfig) -> str:
    """find_binary for the holder script and exec steps. When nothing is found they still get a
    command, ``apptainer``, and fail on the node with its error (rxd's health check names the
    cause): a missing program must not stop a reconciler pass or crash a request."""
    try:
        return find_binary(settings.binary)
    except ApptainerError:
        return "apptainer"


def instance_options(settings: ApptainerConfig, state_dir: Path, user: RunAs) -> dict[str, str]:
    """The holder script's Apptainer parameters for a container, from ``[apptainer]``: the
    program, --fakeroot, the home bound into the container, and whether /tmp is its own."""
    home = ""
    if settings.home == "project":
        # Under --fakeroot the user is root inside, whose home is /root.
        dest = "/root" if settings.fakeroot else user.home or f"/home/{user.user}"
        home = f"{state_dir}/home:{dest}"
    return {
        "apptainer": program(settings),
        "fakeroot": "--fakeroot" if settings.fakeroot else "",
        "home": home,
        "private_tmp": "yes" if settings.private_tmp else "",
    }


def create_overlay(
    path: str | os.PathLike[str], size_mb: int, as_user: RunAs, binary: str = ""
) -> None:
    """``apptainer overlay create`` as ``as_user``: the file is theirs, made with their rights.
    Sparse, so a large overlay costs no disk until it is written. ``binary``: the configured
    program (see find_binary)."""
    target = os.fspath(path)
    if not os.path.isabs(target):
        raise ValueError(f"overlay path must be absolute: {target!r}")
    if size_mb < MIN_OVERLAY_MB:
        raise ApptainerError(f"overlay size must be at least {MIN_OVERLAY_MB} MiB, not {size_mb}")
    argv = [find_binary(binary), "overlay", "create", "--sparse", "--size", str(size_mb), target]
    try:
        result = run(argv, as_user=as_user, timeout=OVERLAY_TIMEOUT)
    except OSError as exc:
        raise ApptainerError(f"cannot run {argv[0]}: {exc.strerror}") from None
    except subprocess.TimeoutExpired:
        raise ApptainerError(f"overlay create timed out after {OVERLAY_TIMEOUT:.0f} s") from None
    if result.returncode != 0:
        raise ApptainerError(last_fatal(result.stderr or result.stdout), result.returncode)


def pull_binary(configured: str) -> str:
    """The program a pull runs: ``[apptainer] binary``, else looked up on the fixed system PATH
    the pull account gets (not rxd's)."""
    if os.path.isabs(configured):
        return configured
    name = configured or "apptainer"
    return shutil.which(name, path=SAFE_PATH) or name


def pull_command(binary: str, uri: str, output: str, *, plain_http: bool = False) -> list[str]:
    """``apptainer pull`` of ``uri`` into ``output``; ``plain_http`` for a registry without TLS."""
    argv = [binary, "pull"]
    if plain_http:
        argv.append("--no-https")
    return [*argv, output, uri]


def gpu_flag(gpus: int, driver: str) -> str:
    """The flag that binds the host's GPU driver into the container ("" for none)."""
    if gpus <= 0:
        return ""
    return {"nvidia": "--nv", "amd": "--rocm"}.get(driver, "")


class ApptainerRuntime:
    """``ContainerRuntime`` on Apptainer, configured by ``[apptainer]``."""

    def __init__(self, settings: ApptainerConfig, status_reader: StatusReader | None = None):
        self.settings = settings
        # Replaceable: the hostile tests give it a reader that hangs.
        self.status_reader = status_reader or StatusReader()
        self.agent_files = AgentFiles()

    def program(self) -> str:
        return program(self.settings)

    def version(self) -> str | None:
        return apptainer_version(self.settings.binary)

    def create_overlay(self, path: Path, size_mb: int, as_user: RunAs) -> None:
        create_overlay(path, size_mb, as_user, self.settings.binary)

    def holder_script(self, holder: HolderRequest) -> str:
        settings = self.settings
        if holder.own_home_and_tmp:
            settings = replace(settings, home="project", private_tmp=True)
        return render_batch_script(
            "holder.sh",
            instance=holder.instance,
            image=holder.image,
            overlay=holder.overlay,
            workspace=holder.workspace,
            binds=",".join(holder.binds),
            gpu_flag=gpu_flag(holder.gpus, holder.gpu_driver),
            state_dir=holder.state_dir,
            grace_s=holder.grace_s,
            env=holder_env(holder.env),
            service=holder_words(holder.service),
            port=holder.port,
            output_cap=holder.output_cap,
            restarts=holder.restarts,
            **instance_options(settings, holder.state_dir, holder.user),
            **agent_params(),
        )

    def holder_status(self, state_dir: str, job_id: int, uid: int) -> HolderStatus:
        return self.status_reader.read(state_dir, job_id, uid)

    def agent_endpoint(self, state_dir: str, job_id: int, uid: int) -> Endpoint | None:
        return self.agent_files.endpoint(state_dir, job_id, uid)

    def agent_sessions(self, state_dir: str, job_id: int, uid: int) -> AgentSessions | None:
        return self.agent_files.sessions(state_dir, job_id, uid)

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
        """Every word of ``argv`` is one item after the instance, never a shell line.

        ``launcher`` (the step's name): the command runs under the launcher (agent/launcher.py)
        on the container's python3, in a process group of its own that signals reach through
        ``signal_argv`` (in front of the terminal with ``tty``). Not for a shell: an interactive
        shell puts each job in front of the terminal itself."""
        command = [self.program(), "shell" if shell else "exec"]
        if cwd:
            command += ["--pwd", cwd]
        if launcher is None or shell:
            return [*command, f"instance://{instance}", *argv]
        own = ["--tty"] if tty else []
        return [
            *command,
            f"instance://{instance}",
            *launcher_argv("run", launcher),
            *own,
            "--",
            *argv,
        ]

    def signal_argv(self, instance: str, launcher: str) -> list[str]:
        """The command that signals the launcher of the step called ``launcher`` in
        ``instance``; the signal's name (``INT``) is its last word, added by whoever sends it."""
        return [
            self.program(),
            "exec",
            f"instance://{instance}",
            *launcher_argv("signal", launcher),
        ]

    def has_launcher(self, state_dir: str, job_id: int, uid: int) -> bool:
        """Whether the job's container runs the launcher: its python3 runs there, known because
        the holder started the exec agent (an image without python3 has none)."""
        return self.agent_files.endpoint(state_dir, job_id, uid) is not None

    def exec_env(self, state_dir: str, variables: Mapping[str, str]) -> dict[str, str]:
        # The holder started the instance with this config folder; exec finds it there. The
        # variables travel in the environment (APPTAINERENV_NAME), never in argv: other users
        # read a process's argv in /proc, only its own user and root its environment.
        return {**apptainer_env(variables), "APPTAINER_CONFIGDIR": config_dir(state_dir)}

    def build_script(self, build: BuildRequest) -> str:
        """build.sh: copy the context (minus exclusions) into the build folder, then
        ``apptainer build --fakeroot`` there. The definition and the exclusions travel as
        base64, one word each (a template value never holds a newline)."""
        return render_batch_script(
            "build.sh",
            build_dir=build.build_dir,
            context=build.context,
            definition=base64.b64encode(build.definition.encode()).decode(),
            ignore=base64.b64encode(build.ignore.encode()).decode(),
            apptainer=self.program(),
            no_https="--no-https" if build.plain_http else "",
        )

    def one_shot_script(self, one_shot: OneShotRequest) -> str:
        """oneshot.sh: ``apptainer exec`` of the command, each word one argv item, contained as
        the container's instance is (its home, its own /tmp) but never under --fakeroot: the
        snapshot is read-only, and the command runs as the runtime user."""
        settings = replace(self.settings, fakeroot=False)
        if one_shot.own_home_and_tmp:
            settings = replace(settings, home="project", private_tmp=True)
        options = instance_options(settings, Path(one_shot.state_dir), one_shot.user)
        return render_batch_script(
            "oneshot.sh",
            image=one_shot.image,
            overlay=one_shot.snapshot,
            workspace=one_shot.workspace,
            binds=",".join(one_shot.binds),
            gpu_flag=gpu_flag(one_shot.gpus, one_shot.gpu_driver),
            apptainer=options["apptainer"],
            home=options["home"],
            private_tmp=options["private_tmp"],
            command=one_shot.command,
        )


@functools.cache
def launcher_source() -> str:
    """The launcher's text, run by the container's python3 (nothing of the host is mounted)."""
    spec = importlib.util.find_spec(LAUNCHER_MODULE)
    if spec is None or spec.origin is None:
        raise ApptainerError(f"{LAUNCHER_MODULE} is not installed")
    return Path(spec.origin).read_text(encoding="utf-8")


def launcher_argv(mode: str, name: str) -> list[str]:
    """The launcher on the container's python3, isolated (-I: no user site, no PYTHON*
    variables; -S: no site module; -B: writes nothing)."""
    return ["python3", "-I", "-S", "-B", "-c", launcher_source(), mode, name]


def holder_env(variables: Sequence[tuple[str, str]]) -> str:
    """The holder's variables as one template word: base64 of NUL-ended APPTAINERENV_NAME=value
    entries (a value may hold newlines and quotes; it never holds NUL)."""
    entries = "".join(f"{k}={v}\0" for k, v in apptainer_env(dict(variables)).items())
    return base64.b64encode(entries.encode()).decode()


def holder_words(words: Sequence[str]) -> str:
    """A command as one template word: base64 of NUL-ended words ("" for none); the holder reads
    them into an array, so no word is ever parsed by a shell."""
    return base64.b64encode("".join(f"{w}\0" for w in words).encode()).decode()


def config_dir(state_dir: str) -> str:
    """Where the holder keeps the instance's records (holder.sh sets the same)."""
    return f"{state_dir}/apptainer"
