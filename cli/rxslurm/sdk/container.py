"""`Container`: a project's container driven from Python, as rxctl drives it.

A project (docs/api.md) has one container; the SDK names both by the project's name. Requests go
through rxctl's client (the local socket or the MUNGE network door, found the same way), and
commands through rxctl's exec session (process.py), so the SDK has rxctl's rights, no more.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from rxslurm.cli.client import ApiError, Client
from rxslurm.protocol import routes
from rxslurm.protocol.job_comment import JOB_PREFIX
from rxslurm.protocol.states import State
from rxslurm.sdk.builds import (
    BuildFailed,
    find_build,
    remove_context,
    start_build,
    upload_context,
    wait_build,
)
from rxslurm.sdk.errors import BadRequest, RxError, Timeout, translated
from rxslurm.sdk.image import Image
from rxslurm.sdk.port_forward import PortForward
from rxslurm.sdk.process import ExecProcess, ExecResult
from rxslurm.sdk.secret import Secret, checked
from rxslurm.sdk.volume import Volume

# Between looks at a stopping container's status (no change notice exists for stops).
STOP_POLL_S = 0.5
WAIT_GUARD_S = 30.0


def memory_mb(memory: str | int) -> int:
    """`"16Gi"`, `"16G"`, `"512M"` or a number of MiB -> MiB, as sbatch counts (G = 1024 M)."""
    from rxslurm.cli.units import memory_mb as sbatch_mb

    if isinstance(memory, int) and not isinstance(memory, bool):
        return memory
    if not isinstance(memory, str):
        raise BadRequest(f"memory must be a size like '16Gi' or a number of MiB, not {memory!r}")
    text = re.sub(r"(?i)(?<=[KMGT])i(?=B?$)", "", memory.strip())
    try:
        return sbatch_mb(text)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def gpu_settings(gpu: int | str | None) -> dict[str, Any]:
    """`1` -> 1 GPU of any type; `"a100:2"` -> 2 of type a100; `"a100"` -> 1 of type a100."""
    if gpu is None:
        return {}
    if isinstance(gpu, bool) or not isinstance(gpu, int | str):
        raise BadRequest(f"gpu must be a count or 'TYPE:COUNT', not {gpu!r}")
    if isinstance(gpu, int):
        return {"gpus": gpu}
    kind, _, count = gpu.partition(":")
    if not kind or (count and not count.isdigit()):
        raise BadRequest(f"gpu must be a count or 'TYPE:COUNT', not {gpu!r}")
    return {"gpus": int(count or 1), "gpu_type": kind}


def service_settings(port: int | None, entrypoint: Sequence[str] | None) -> dict[str, Any]:
    """`port=` and `entrypoint=` as the project's service settings (docs/services.md)."""
    settings: dict[str, Any] = {}
    if port is not None:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise BadRequest(f"port must be a number 1-65535, not {port!r}")
        settings["port"] = port
    if entrypoint is not None:
        words = [entrypoint] if isinstance(entrypoint, str) else list(entrypoint)
        if not words or not all(isinstance(w, str) and w and "\0" not in w for w in words):
            raise BadRequest(
                f"entrypoint must be a command: one or more non-empty words, not {entrypoint!r}"
            )
        # The API keeps the words as JSON text (docs/api.md): never joined into a shell line.
        settings["service"] = json.dumps(words)
    return settings


def exec_request(
    cmd: Sequence[str], env: Mapping[str, str] | None, **fields: Any
) -> dict[str, Any]:
    """The exec protocol's request: argv as given (each word one item) and `env` in its own
    field, as `rxctl exec -e` sends it, so no value is part of a command line."""
    if not cmd or not all(isinstance(word, str) for word in cmd):
        raise BadRequest("exec needs a command: one or more strings")
    request: dict[str, Any] = {"argv": list(cmd), **fields}
    if env:
        request["env"] = checked(dict(env), "variable")
    return request


class Container:
    """The container of project `name`.

    `Container(name=..., image=..., cpu=..., memory="16Gi", gpu=1 or "a100:1")` describes one;
    `run()` creates the project if it does not exist (you become its owner), wakes the container
    and waits until it runs. `Container.from_name(project)` is one that exists already.
    `socket` names rxd's socket as `rxctl --socket` does (default: rxctl's own choice).
    """

    def __init__(
        self,
        name: str,
        *,
        image: str | Image | None = None,
        cpu: int | None = None,
        memory: str | int | None = None,
        gpu: int | str | None = None,
        partition: str | None = None,
        env: Mapping[str, str] | None = None,
        secrets: Sequence[Secret] = (),
        volumes: Sequence[tuple[Volume, str]] = (),
        port: int | None = None,
        entrypoint: Sequence[str] | None = None,
        socket: str | None = None,
        request_timeout: float = 60.0,
    ) -> None:
        self.name = name
        self._client = Client(socket, timeout=request_timeout)
        self._socket = socket
        self.env = checked(dict(env or {}), "variable")
        self.secrets = list(secrets)
        self.volumes: list[tuple[Volume, str, bool]] = []
        for volume, target in volumes:
            if not isinstance(volume, Volume) or not isinstance(target, str):
                raise BadRequest(f"volumes are (Volume, '/path') pairs, not {(volume, target)!r}")
            read_only = target.endswith(":ro")
            volume.attach(name, self._client)
            self.volumes.append((volume, target.removesuffix(":ro"), read_only))
        settings: dict[str, Any] = {}
        self.image = image
        if isinstance(image, Image):
            if not image.needs_build:
                settings["image"] = image.reference()
        elif image is not None:
            settings["image"] = image
        if cpu is not None:
            settings["cpus"] = cpu
        if memory is not None:
            settings["mem_mb"] = memory_mb(memory)
        if partition is not None:
            settings["partition"] = partition
        settings.update(gpu_settings(gpu))
        settings.update(service_settings(port, entrypoint))
        self.settings = settings
        self._status: dict[str, Any] | None = None

    @classmethod
    def from_name(cls, project: str, *, socket: str | None = None) -> Container:
        """The container of an existing project you are a member of; NotFound otherwise."""
        container = cls(project, socket=socket)
        container.refresh()
        return container

    @classmethod
    def from_id(cls, container_id: str, *, socket: str | None = None) -> Container:
        """The container whose `id` is `container_id` (`rx-<project>`); NotFound otherwise."""
        project = container_id.removeprefix(JOB_PREFIX) if isinstance(container_id, str) else ""
        if not project or project == container_id:
            raise BadRequest(f"a container id is {JOB_PREFIX}<project>, not {container_id!r}")
        return cls.from_name(project, socket=socket)

    # -- state -------------------------------------------------------------------------------

    def refresh(self) -> Container:
        """Read the container's status from rxd again."""
        with translated():
            self._status = self._client.get(routes.path(routes.CONTAINER_STATUS, self.name))
        return self

    @property
    def info(self) -> dict[str, Any]:
        """rxd's whole status answer (docs/api.md, Containers), as of the last refresh."""
        if self._status is None:
            self.refresh()
        assert self._status is not None
        return self._status

    @property
    def status(self) -> str:
        """The container's state (`running`, `stopped`, `waiting_for_resources`, ...), as of
        the last refresh: call refresh() to look again."""
        return str(self.info["state"])

    @property
    def id(self) -> str:
        """The container's name as rxd and Slurm know it (`rx-<project>`)."""
        return str(self.info.get("name") or f"rx-{self.name}")

    def __repr__(self) -> str:
        state = self._status["state"] if self._status else "?"
        return f"Container({self.name!r}, status={state!r})"

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self, timeout: float | None = None) -> Container:
        """Create the project if needed, wake its container and wait until it runs.

        An existing project keeps its settings (`rxctl project set` changes them). `timeout`
        (seconds) bounds the wait, not the request: past it Timeout is raised and the container
        keeps trying (stop() to give up). None waits as long as it takes.
        """
        deadline = time.monotonic() + (timeout or 0)
        with translated():
            project = self._project_or_none()
            if project is None:
                body: dict[str, Any] = {"name": self.name}
                if self.settings:
                    body["settings"] = self.settings
                project = self._client.post(routes.PROJECTS, body)
            self._apply_environment()
            built = isinstance(self.image, Image) and self.image.needs_build
            if isinstance(self.image, Image) and built:
                self._use_build(self.image, project, None if timeout is None else deadline)
            # Never enabled: `enable` (the owner's) makes the overlay; else `start` wakes it.
            container = project.get("container")
            action = "start" if container and container.get("state") != "disabled" else "enable"
            self._client.post(routes.path(routes.CONTAINER_ACTION, self.name, action))
        # rxd ends the wait at `timeout`; the SDK's own deadline, a little later, only guards
        # against an rxd that never answers.
        if timeout is not None and built:
            # The build took its share of the time.
            timeout = max(0, math.ceil(deadline - time.monotonic()))
        guard = None if timeout is None else timeout + WAIT_GUARD_S
        self._session({"wait": True, "timeout": timeout}, timeout=guard).wait()
        return self.refresh()

    def _apply_environment(self) -> None:
        """env, secrets and volumes as project settings, before the container starts: through
        the API rxctl env/secret/volume use (values travel in request bodies, never argv)."""
        if self.env:
            self._client.request(
                "PATCH", routes.path(routes.PROJECT_ENV, self.name), {"set": self.env}
            )
        for secret in self.secrets:
            for key, value in secret.values().items():
                self._client.request(
                    "PUT", routes.path(routes.PROJECT_SECRET, self.name, key), {"value": value}
                )
        if not self.volumes:
            return
        known = self._client.get(routes.path(routes.PROJECT_VOLUMES, self.name))
        owned = {v["name"] for v in known["volumes"]}
        mounted = {m["volume"]: m for m in known["mounts"]}
        for volume, target, read_only in self.volumes:
            if volume.name not in owned and volume.name not in mounted:
                owner = routes.path(routes.PROJECT_VOLUMES, self.name)
                self._client.post(owner, {"name": volume.name})
            mount = mounted.get(volume.name)
            if mount and (mount["target"], mount["read_only"]) == (target, read_only):
                continue
            self._client.request(
                "PUT",
                routes.path(routes.PROJECT_MOUNT, self.name, volume.name),
                {"target": target, "read_only": read_only},
            )

    def _use_build(self, image: Image, project: dict[str, Any], deadline: float | None) -> None:
        """The chain's succeeded build (built now if there is none) as the project's image."""
        build = find_build(self._client, self.name, image.build_name)
        if build is None:
            upload_context(self._client, self.name, image)
            build = start_build(self._client, self.name, image)
            try:
                build = wait_build(self._client, self.name, build, deadline)
            except BuildFailed:
                remove_context(self._client, self.name, image)
                raise
            # Ours, and ended: its job copied the uploaded files when it started.
            remove_context(self._client, self.name, image)
        else:
            build = wait_build(self._client, self.name, build, deadline)
        if (project.get("settings") or {}).get("image") != build.get("image"):
            self._client.request(
                "PUT",
                routes.path(routes.PROJECT_IMAGE, self.name),
                {"image": f"build:{build['id']}"},
            )

    def _project_or_none(self) -> dict[str, Any] | None:
        try:
            project: dict[str, Any] = self._client.get(routes.path(routes.PROJECT, self.name))
        except ApiError as exc:
            if exc.code == "not_found":
                return None
            raise
        return project

    def stop(self, grace_period_seconds: float = 30, force: bool = False) -> Container:
        """Stop the container (its overlay and workspace stay) and wait until it has stopped.

        rxd sends the instance SIGTERM, then ends the job after its own grace
        (`[containers] stop_grace_s`); this waits at most `grace_period_seconds` for that and
        raises Timeout (the container still stopping) if it takes longer. While exec sessions
        or detached commands are open in it rxd refuses (a conflict naming them) unless
        `force`.
        """
        with translated():
            self._status = self._client.post(
                routes.path(routes.CONTAINER_ACTION, self.name, "stop"),
                {"force": True} if force else None,
            )
        deadline = time.monotonic() + grace_period_seconds
        while self.status in (State.STOPPING, State.STARTING, State.WAITING, State.RUNNING):
            if time.monotonic() >= deadline:
                raise Timeout(
                    f"the container of {self.name} is still {self.status} after "
                    f"{grace_period_seconds:g} s; rxd goes on stopping it"
                )
            time.sleep(STOP_POLL_S)
            self.refresh()
        return self

    def port_forward(self, local_port: int) -> PortForward:
        """Reach the container's service (`port=`) on 127.0.0.1:`local_port` of this host until
        the forward is closed: `with box.port_forward(8080) as forward: urlopen(forward.url)`.
        It is `rxctl port-forward` (the exec role; a running container, never woken)."""
        return PortForward(self.name, local_port, self._socket)

    # -- commands ----------------------------------------------------------------------------

    def exec(
        self,
        *cmd: str,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str = "/workspace",
        stdin: bytes | None = None,
        wake: bool = True,
    ) -> ExecResult:
        """Run a command in the container (waking it unless `wake=False`) and wait for it: its
        ExecResult (`exit_code`, `stdout`, `stderr` as text, `stdout_bytes`, `stderr_bytes`).
        A non-zero exit is a result, not an exception; the SDK's exceptions say it did not run.
        """
        process = self.exec_stream(*cmd, timeout=timeout, env=env, cwd=cwd, stdin=stdin, wake=wake)
        return process.wait()

    def exec_stream(
        self,
        *cmd: str,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str = "/workspace",
        stdin: bytes | None = None,
        wake: bool = True,
    ) -> ExecProcess:
        """Start a command as exec() does; iterate the answer for its output as it comes
        (`Output(stream, data)`), then `wait()` for its ExecResult."""
        request = exec_request(cmd, env, cwd=cwd, wake=wake, timeout=timeout)
        return self._session(request, timeout=timeout, stdin=stdin)

    def _session(
        self, request: dict[str, Any], *, timeout: float | None, stdin: bytes | None = None
    ) -> ExecProcess:
        if self._client.door is None:
            raise RxError(self._client.door_error)
        spec = {"socket": self._socket, "project": self.name, "request": request}
        return ExecProcess(spec, timeout=timeout, stdin=stdin)
