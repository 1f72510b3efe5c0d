"""The exec service: a command in a project's running container, on the caller's own terminal.

A second Unix socket beside the API's (`rxd-exec.sock`), because a session hands rxd file
descriptors and HTTP cannot carry them. The client sends ONE JSON line with its stdin, stdout and
stderr attached (SCM_RIGHTS); rxd answers with JSON lines: progress while the container wakes,
then `{"exit": N}` or `{"error": "..."}`. Meanwhile the client may send `{"signal": "INT"}`.
docs/exec.md has the protocol and why it is safe.

The command is a step in the container's job, `srun --jobid J --overlap ... apptainer exec
instance://...`, started as the job's user. The caller's descriptors stay in rxd: srun gets pipes
or a pty, and rxd relays (exec_relay), dropping srun's reports of ended tasks from its stderr (see
strip_srun_task_lines). One thread per session, at most `limits.connections_per_uid` sessions per
uid; ledger calls go to a small fixed pool because the ledger keeps one connection per thread that
ever touched it, for the life of the daemon.
"""

from __future__ import annotations

import array
import contextlib
import logging
import os
import re
import select
import signal
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rxslurm.daemon.api.conn_caps import ConnectionCap, caller_key
from rxslurm.daemon.api.context import Daemon
from rxslurm.daemon.api.peercred import Caller, UnknownCaller, peer_credentials, resolve_caller
from rxslurm.daemon.api.socket_files import claim_socket_path, open_to_everyone
from rxslurm.daemon.containers import service as containers
from rxslurm.daemon.containers.sessions import LiveSession
from rxslurm.daemon.containers.state_changes import Watch
from rxslurm.daemon.containers.states import State
from rxslurm.daemon.containers.views import ContainerView
from rxslurm.daemon.errors import ApiError, BadRequest, Conflict, Unavailable
from rxslurm.daemon.exec import port_relay
from rxslurm.daemon.exec.relay import Plumbing, dispatch, poll_interest
from rxslurm.daemon.identity.actors import Actor
from rxslurm.daemon.identity.bindings import auto_bind_local, binding_of_uid
from rxslurm.daemon.ledger.timestamps import to_timestamp, utcnow
from rxslurm.daemon.ports import ContainerRuntime, Scheduler
from rxslurm.daemon.projects.environment import with_exec_variables
from rxslurm.protocol import agent_wire, env_vars
from rxslurm.protocol.durations import duration
from rxslurm.protocol.exec_wire import (
    EXEC_SOCKET_NAME,
    MAX_MESSAGE,
    MAX_REQUEST,
    SIGNALS,
    LineReader,
    ProtocolError,
    decode,
    encode,
)
from rxslurm.slurm.errors import SlurmUnavailable
from rxslurm.slurm.runas import clean_env
from rxslurm.slurm.step_signal import (
    StepSignaller,
    new_signal_step_name,
    new_step_name,
    strip_srun_task_lines,
    subprocess_alive,
)

log = logging.getLogger("rxslurm.exec")

T = TypeVar("T")

REQUEST_TIMEOUT_S = 10.0  # for the whole request, however it trickles in
# A client that does not read its answers holds a thread only this long per message.
REPLY_TIMEOUT_S = 10.0
# A client's --timeout is at most a year: a bound on the number, not on waiting (None waits on).
MAX_WAKE_TIMEOUT_S = 366 * 86400
READY_TIMEOUT_S = 10.0
# srun cancels its step on SIGTERM; only if it hangs is it killed (which leaves the step running).
KILL_AFTER_S = 30.0
# After srun exits, how long its last output may wait for a caller who takes none of it.
DRAIN_S = 10.0
DEFAULT_CWD = "/workspace"
_TERM = re.compile(r"[A-Za-z0-9._+-]{1,64}")


class ClientGone(Exception):
    """The client disconnected or asked to stop before the command started; `note` tells it
    what the container does now."""

    def __init__(self, exit_code: int | None = None, note: str | None = None) -> None:
        super().__init__("client gone")
        self.exit_code = exit_code
        self.note = note


def exec_socket_path(api_socket: Path) -> Path:
    return api_socket.parent / EXEC_SOCKET_NAME


def receive_request(
    conn: socket.socket, timeout: float = REQUEST_TIMEOUT_S
) -> tuple[dict[str, Any], list[int], bytes]:
    """The first line and the three descriptors that came with its first byte; plus any bytes
    after the line (a signal may follow at once). The whole line must arrive within `timeout`:
    a deadline per recv would let a client trickle a byte at a time and hold the connection."""
    deadline = time.monotonic() + timeout

    def wait() -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ProtocolError(f"the request did not arrive within {timeout:g} s")
        conn.settimeout(left)

    fds = array.array("i")
    try:
        wait()
        # Not socket.recv_fds: before Python 3.12 it drops the flags, and the descriptors must
        # be close-on-exec until a child is given them on purpose.
        data, ancillary, flags, _ = conn.recvmsg(
            MAX_MESSAGE, socket.CMSG_SPACE(3 * fds.itemsize), socket.MSG_CMSG_CLOEXEC
        )
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        if flags & socket.MSG_CTRUNC or len(fds) != 3:
            raise ProtocolError("send exactly three file descriptors (stdin, stdout, stderr)")
        while b"\n" not in data:
            if len(data) > MAX_REQUEST:
                raise ProtocolError(f"the request is longer than {MAX_REQUEST} bytes")
            wait()
            more = conn.recv(MAX_MESSAGE)
            if not more:
                raise ProtocolError("the connection closed before the request ended")
            data += more
    except TimeoutError:
        for fd in fds:
            os.close(fd)
        raise ProtocolError(f"the request did not arrive within {timeout:g} s") from None
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    line, _, rest = data.partition(b"\n")
    try:
        return decode(line), list(fds), rest
    except ProtocolError:
        for fd in fds:
            os.close(fd)
        raise


@dataclass(frozen=True)
class ExecRequest:
    project: str
    argv: tuple[str, ...] = ()
    shell: bool = False
    tty: bool = False
    wake: bool = True
    cwd: str | None = DEFAULT_CWD
    term: str | None = None
    # How long to wait for a wake, in seconds; None: as long as the client stays.
    timeout: float | None = None
    # False: the client named no limit either way (an older client): the deployment's applies.
    timeout_given: bool = False
    # No command: wait until the container runs, then exit 0 (`rxctl start --wait`).
    wait: bool = False
    # This exec's own variables (`rxctl exec -e KEY=VALUE`), over the project's.
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    # Relay the session's stdin and stdout to the service's port on the node, not a command
    # (`rxctl port-forward`, exec/port_relay.py).
    forward: bool = False

    # The client can talk to the container's exec agent: answer where it is, with a ticket.
    agent: bool = False
    # ... and only to it ("agent": "only"): without an agent, an error rather than a step.
    agent_only: bool = False

    @classmethod
    def parse(cls, data: dict[str, Any]) -> ExecRequest:
        known = {
            "project",
            "argv",
            "shell",
            "tty",
            "wake",
            "cwd",
            "term",
            "timeout",
            "wait",
            "env",
            "agent",
            "forward",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadRequest(f"unknown request field {unknown[0]!r}")
        project = data.get("project")
        if not isinstance(project, str) or not project or "\0" in project:
            raise BadRequest("project must be a non-empty string without NUL bytes")
        argv = data.get("argv", [])
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise BadRequest("argv must be a list of strings")
        if any("\0" in a for a in argv):
            raise BadRequest("argv must not contain NUL bytes")
        if not all(_encodable(a) for a in (project, *argv)):
            raise BadRequest("project and argv must be valid Unicode (no lone surrogates)")
        agent = data.get("agent", False)
        if not isinstance(agent, bool) and agent != "only":
            raise BadRequest('agent must be true, false or "only"')
        flags = {"agent": agent is not False, "agent_only": agent == "only"}
        for key, default in (
            ("shell", False),
            ("tty", False),
            ("wake", True),
            ("wait", False),
            ("forward", False),
        ):
            value = data.get(key, default)
            if not isinstance(value, bool):
                raise BadRequest(f"{key} must be true or false")
            flags[key] = value
        if flags["shell"] and argv:
            raise BadRequest("a shell takes no argv")
        if flags["wait"] and (argv or flags["shell"]):
            raise BadRequest("a wait runs nothing: no argv, no shell")
        if flags["forward"] and (argv or flags["shell"] or flags["wait"] or flags["tty"]):
            raise BadRequest("a forward runs no command, shell, wait or terminal")
        if not flags["shell"] and not flags["wait"] and not flags["forward"] and not argv:
            raise BadRequest("argv must name a command")
        timeout = data.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 <= timeout <= MAX_WAKE_TIMEOUT_S
        ):
            raise BadRequest(
                f"timeout must be null or a number of seconds from 0 to {MAX_WAKE_TIMEOUT_S}"
            )
        cwd = data.get("cwd", DEFAULT_CWD)
        if cwd is not None and (
            not isinstance(cwd, str)
            or not cwd.startswith("/")
            or "\0" in cwd
            or len(cwd) > 4096
            or not _encodable(cwd)
        ):
            raise BadRequest("cwd must be an absolute path")
        term = data.get("term")
        if term is not None and (not isinstance(term, str) or not _TERM.fullmatch(term)):
            raise BadRequest("term must be a terminal type name")
        try:
            env = env_vars.check_variables(data.get("env", {}))
        except env_vars.BadVariable as exc:
            raise BadRequest(str(exc)) from None
        return cls(
            project,
            tuple(argv),
            cwd=cwd,
            term=term,
            timeout=None if timeout is None else float(timeout),
            timeout_given="timeout" in data,
            env=env,
            **flags,
        )


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def step_command(
    scheduler: Scheduler,
    runtime: ContainerRuntime,
    target: containers.ExecTarget,
    request: ExecRequest,
    step_name: str,
    *,
    portable: bool = False,
    launcher: bool = False,
) -> list[str]:
    """The step: the runtime's command in the instance, as a step of the container's job. Every
    user-given word is one argv item after the instance, never a shell line. A forward's step is
    the relay to the service's port, on the node (exec/port_relay.py). ``launcher``: the command
    runs under the runtime's launcher, named as the step, which ``signal_step_command`` reaches."""
    if request.forward:
        if not target.service_port:
            raise Conflict(
                f"the container of {request.project} runs no service with a port; "
                "`rxctl project set --service CMD --port N`, then a start"
            )
        inside = port_relay.relay_argv(target.service_port)
    else:
        inside = runtime.exec_argv(
            target.instance,
            request.argv,
            shell=request.shell,
            cwd=request.cwd,
            launcher=step_name if launcher else None,
            tty=request.tty,
        )
    return scheduler.step_argv(
        target.job_id, inside, tty=request.tty, step_name=step_name, portable=portable
    )


def uses_launcher(
    runtime: ContainerRuntime, target: containers.ExecTarget, request: ExecRequest
) -> bool:
    """A command (not a shell, not a forward) runs under the launcher where the container can
    run it: then a Ctrl-C reaches the command, not Apptainer's process (step_signal.py)."""
    if request.shell or request.forward:
        return False
    return runtime.has_launcher(target.state_dir, target.job_id, target.runas.uid)


def signal_step_command(
    scheduler: Scheduler,
    runtime: ContainerRuntime,
    target: containers.ExecTarget,
    step_name: str,
    *,
    portable: bool = False,
) -> list[str]:
    """The short step that passes a signal (its name added last) to the launcher of the step
    called ``step_name``."""
    inside = runtime.signal_argv(target.instance, step_name)
    return scheduler.step_argv(
        target.job_id, inside, tty=False, step_name=new_signal_step_name(), portable=portable
    )


def child_env(
    runtime: ContainerRuntime, target: containers.ExecTarget, request: ExecRequest
) -> dict[str, str]:
    """The step's whole environment: the runtime user's identity, what Apptainer needs, and the
    variables the command gets (the project's, its secrets, this exec's -e), which travel in the
    environment only, never in an argv (docs/security.md#secrets)."""
    variables = with_exec_variables(target.variables, request.env)
    extra = runtime.exec_env(target.state_dir, variables)
    if request.tty and request.term:
        extra["TERM"] = request.term
    return clean_env(target.runas, extra)


def actor_for(daemon: Daemon, caller: Caller) -> Actor:
    """The same rule as actors.actor_of, for a caller of the exec socket or the network door."""
    if daemon.config.identity.mode == "local":
        platform_user = auto_bind_local(daemon.ledger, daemon.config, caller.uid)
    else:
        row = binding_of_uid(daemon.ledger.db, caller.uid)
        platform_user = row.platform_user_id if row else None
    return Actor(
        platform_user=platform_user,
        uid=caller.uid,
        user=caller.user,
        # Admin powers only through the service host's socket (api/munge_door.py says why).
        admin=caller.door == "socket" and daemon.is_admin(caller),
        origin=caller.door,
    )


def stopped_waiting(project: str, view: ContainerView) -> str:
    """What a client that stopped waiting is told: whether the container stays queued or keeps
    starting (and why it waits), and how to give up on it."""
    state = f"{view.state}: {view.reason}" if view.reason else str(view.state)
    if view.state == State.RUNNING:
        return f"stopped waiting; the container of {project} is running"
    if view.state == State.WAITING:
        what = "stays queued"
    elif view.state in (State.STARTING, State.PULLING):
        what = "keeps starting"
    else:
        return f"stopped waiting; the container of {project} is {state}"
    return (
        f"stopped waiting; the container {what} ({state}); "
        f"`rxctl stop --project {project}` to give up"
    )


def gave_up(project: str, view: ContainerView, limit: float) -> str:
    """The one line of a wait that reached its timeout; the container is left as it is."""
    state = f"{view.state}: {view.reason}" if view.reason else str(view.state)
    return (
        f"the container of {project} did not start within {duration(limit)} ({state}); "
        f"it keeps trying: `rxctl stop --project {project}` to give up"
    )


def wait_for(fd: int, events: int, timeout: float | None) -> bool:
    """Whether fd is ready (or hung up) within timeout seconds; poll, as select() stops at
    descriptor 1024."""
    poller = select.poll()
    poller.register(fd, events)
    return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))


def exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


class Session:
    """One connection: authorize, wake if asked, run the step, report how it ended."""

    def __init__(self, server: ExecServer, conn: socket.socket) -> None:
        self.server = server
        self.daemon = server.daemon
        self.conn = conn
        self.reader = LineReader()
        self.fds: list[int] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.plumbing: Plumbing | None = None
        self.interrupter: StepSignaller | None = None
        self.stopping = False
        self.actor: Actor | None = None

    # -- the conversation ------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            self.conn.sendall(encode(message))

    def serve(self) -> None:
        """A session of the exec socket: the caller is the kernel's answer for the peer."""

        def converse() -> None:
            try:
                caller = resolve_caller(*peer_credentials(self.conn))
            except (OSError, UnknownCaller) as exc:
                raise ProtocolError(str(exc)) from None
            data, self.fds, rest = receive_request(self.conn)
            self.converse(caller, data, rest)

        self.guarded(converse)

    def serve_network(self, caller: Caller, data: dict[str, Any], fds: list[int]) -> None:
        """A session of the network door (exec/door.py): the caller proved by MUNGE, the
        descriptors rxd's own ends of the stream's channels. A caller who is the container's
        runtime user is told the step to start itself (`direct`) and rxd holds nothing."""
        self.fds = fds
        self.guarded(lambda: self.converse(caller, data, b"", direct_allowed=True))

    def serve_for(self, actor: Actor, data: dict[str, Any], fds: list[int]) -> None:
        """A session for an actor some door proved otherwise (the research platform acting for
        a member): the same authorization by role, the descriptors rxd's own as for the network
        door; rxd always runs the step."""
        self.fds = fds
        self.guarded(lambda: self.converse(None, data, b"", actor=actor))

    def converse(
        self,
        caller: Caller | None,
        data: dict[str, Any],
        rest: bytes,
        direct_allowed: bool = False,
        actor: Actor | None = None,
    ) -> None:
        request = ExecRequest.parse(data)
        pending = self.reader.feed(rest)
        # Reads happen only when poll says so; this bounds a send to a client not reading.
        self.conn.settimeout(REPLY_TIMEOUT_S)
        if request.tty and not os.isatty(self.fds[0]):
            raise BadRequest("a terminal session needs a terminal on stdin")
        if actor is None:
            assert caller is not None
            actor = self.server.call(actor_for, self.daemon, caller)
        self.actor = actor
        # The one authorization of this request; waking and waiting carry it.
        access = self.server.call(self.daemon.containers.authorize_exec, actor, request.project)
        target = self.server.call(self.daemon.containers.target_of, access)
        if target is None:
            target = self.wait_running(access, request, pending)
            pending = []  # read while waiting
        if request.wait:
            self.send({"exit": 0})
            return
        # A step handed to its caller carries its environment over the network: never secrets.
        direct_allowed = direct_allowed and not target.has_secrets
        # The agent runs commands with the environment its holder gave it: a project's
        # variables and secrets, and this exec's -e, go through a step rxd runs instead; a port
        # forward is a relay step on the node, never a command for the agent.
        if (
            request.agent
            and not request.forward
            and caller is not None
            and not target.variables
            and not request.env
        ):
            grant = self.agent_grant(target, caller)
            if grant is not None:
                # The client runs the command through the agent; rxd holds nothing of it, and
                # the agent's sessions keep the container awake (the holder reports them).
                log.info(
                    "exec handed to the container's agent",
                    extra={"project": request.project, "job_id": target.job_id, "uid": caller.uid},
                )
                self.send({"agent": grant})
                return
            if request.agent_only:
                raise Conflict(f"the container of {request.project} has no exec agent")
        if direct_allowed and caller is not None and caller.uid == target.runas.uid:
            step = self.direct_step(target, request)
            log.info(
                "exec step handed to its caller",
                extra={"project": request.project, "job_id": target.job_id, "uid": caller.uid},
            )
            self.send({"direct": step})
            return
        if direct_allowed:
            # The client holds its stdin back until it knows rxd, not itself, runs the step.
            self.send({"relayed": True})
        self.run(target, request, pending)

    def direct_step(self, target: containers.ExecTarget, request: ExecRequest) -> dict[str, Any]:
        """What a caller who is the runtime user needs to start the step on their own host: the
        same argv (srun found on their PATH), environment and step name as rxd's own."""
        rt = self.daemon.containers
        step_name = new_step_name()
        launcher = uses_launcher(rt.runtime, target, request)
        argv = step_command(
            rt.scheduler, rt.runtime, target, request, step_name, portable=True, launcher=launcher
        )
        step: dict[str, Any] = {
            "argv": argv,
            "env": child_env(rt.runtime, target, request),
            "job_id": target.job_id,
            "step_name": step_name,
        }
        if launcher:
            # How its caller passes a Ctrl-C to the command (srun, Apptainer, then the signal).
            step["signal"] = signal_step_command(
                rt.scheduler, rt.runtime, target, step_name, portable=True
            )
        return step

    def agent_grant(self, target: containers.ExecTarget, caller: Caller) -> dict[str, Any] | None:
        """Where the container's agent listens and a ticket for this caller, signed with the
        job's key; None when the container has no agent (an older holder, an image without
        python3, not ready yet): the step path then runs the command."""
        runtime = self.daemon.containers.runtime
        endpoint = runtime.agent_endpoint(target.state_dir, target.job_id, target.runas.uid)
        if endpoint is None:
            return None
        ticket = agent_wire.sign(endpoint.key, caller.uid, target.job_id, now=time.time())
        return {
            "host": endpoint.host,
            "port": endpoint.port,
            "job_id": target.job_id,
            # Whose the agent is: the client checks the agent's own credential against it.
            "uid": target.runas.uid,
            "ticket": ticket,
        }

    def guarded(self, converse: Callable[[], None]) -> None:
        """Run the conversation; every way it ends is one `exit` or `error` message."""
        try:
            converse()
        except ClientGone as gone:
            if gone.exit_code is not None:
                # "stopped" first: a client that knows only "exit" still ends with the status.
                note = {"stopped": gone.note} if gone.note else {}
                self.send({**note, "exit": gone.exit_code})
        except ApiError as exc:
            # The API's code too, so a library can tell a refusal's kind without reading words.
            self.send({"error": exc.message, "code": exc.code})
        except (ProtocolError, TimeoutError) as exc:
            log.info("exec protocol error", extra={"error": str(exc) or "time-out"})
            self.send({"error": f"exec protocol error: {exc or 'time-out'}"})
        except Exception:
            log.exception("exec session failed")
            self.send({"error": "internal error; see rxd's log"})
        finally:
            for fd in self.fds:
                os.close(fd)
            self.fds = []

    def messages(self, timeout: float | None) -> list[dict[str, Any]]:
        """Messages the client sent within `timeout`; ClientGone when it hung up."""
        if not wait_for(self.conn.fileno(), select.POLLIN, timeout):
            return []
        try:
            data = self.conn.recv(MAX_MESSAGE)
        except OSError:
            data = b""
        if not data:
            raise ClientGone()
        return self.reader.feed(data)

    # -- waking ----------------------------------------------------------------------------

    def wait_running(
        self, access: containers.Access, request: ExecRequest, pending: list[dict[str, Any]]
    ) -> containers.ExecTarget:
        """Wake the container if it rests (unless the request only waits) and wait until it
        runs, telling the client each new state; woken by the container's state changes and the
        client's messages, not a timer. Waits as long as the request's timeout, or as long as
        the client stays when it names none."""
        service = self.daemon.containers
        project = request.project
        view = self.server.call(service.view_of, access)
        if not request.wake and not request.wait:
            raise Conflict(
                f"the container of {project} is not running ({view.state}); "
                "run without --no-wake to wake it"
            )
        if view.container_id is None and request.wait:
            raise Conflict(
                f"the container of {project} is not enabled; an owner runs `rxctl enable`"
            )
        if view.container_id is None:
            # Never enabled: wake says so in its words.
            self.server.call(service.wake_for, access)
            view = self.server.call(service.view_of, access)
        assert view.container_id is not None
        limit = request.timeout if request.timeout_given else self.daemon.config.limits.wake_wait_s
        deadline = None if limit is None else time.monotonic() + limit
        shown: tuple[str, str | None] | None = None
        wakes = 0
        # Watching before reading again: a change in between still wakes the loop.
        with service.changes.watch(view.container_id) as changed:
            view = self.server.call(service.view_of, access)
            while True:
                signalled = [m for m in pending if "signal" in m]
                if signalled:
                    # Ctrl-C while waiting: stop waiting, and say what the container does now.
                    signum = SIGNALS.get(str(signalled[0]["signal"]), signal.SIGINT)
                    view = self.server.call(service.view_of, access)
                    raise ClientGone(128 + signum, stopped_waiting(project, view))
                state, reason = view.state, view.reason
                if state == State.RUNNING:
                    target = self.server.call(service.target_of, access)
                    if target is not None:
                        break
                elif request.wait and state in (State.STOPPED, State.DISABLED, State.ERROR):
                    # Only waiting: nothing here wakes it again.
                    why = view.last_error or reason if state == State.ERROR else reason
                    raise Conflict(
                        f"the container of {project} is {state}" + (f" ({why})" if why else "")
                    )
                elif state in (State.STOPPED, State.DISABLED) or (
                    state == State.ERROR and not wakes
                ):
                    # A resting container is woken (wake says why not, for disabled and error);
                    # one that was stopping is woken once it has stopped. Starting ones are
                    # waited for.
                    if wakes >= 2:
                        raise Conflict(
                            f"the container of {project} stopped while waking ({reason})"
                        )
                    self.server.call(service.wake_for, access)
                    wakes += 1
                    view = self.server.call(service.view_of, access)
                    continue
                elif state == State.ERROR:
                    raise Conflict(
                        f"the container of {project} failed to start: {view.last_error or reason}"
                    )
                if (state, reason) != shown:
                    shown = (state, reason)
                    text = f"{state}: {reason}" if reason else str(state)
                    self.send({"progress": text, "state": state, "reason": reason})
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    assert limit is not None
                    raise Conflict(gave_up(project, view, limit), code="timeout")
                pending = self.messages_or_change(changed, left)
                view = self.server.call(service.view_of, access)
        if shown is not None:
            # Let the client finish its progress line before the command writes to the screen.
            self.send({"ready": True})
            answer: list[dict[str, Any]] = []
            until = time.monotonic() + READY_TIMEOUT_S
            while not any("go" in m for m in answer) and time.monotonic() < until:
                answer = self.messages(until - time.monotonic())
                pending = [m for m in answer if "signal" in m]
                if pending:
                    raise ClientGone(128 + SIGNALS.get(str(pending[0]["signal"]), signal.SIGINT))
        return target

    def messages_or_change(self, changed: Watch, timeout: float | None) -> list[dict[str, Any]]:
        """Whatever comes first within `timeout` (None: no limit): the client's messages, or a
        change of the container's state (then no messages); ClientGone when the client hung up.
        A hang-up makes the socket readable, so a client that leaves ends its wait at once."""
        poller = select.poll()
        poller.register(self.conn.fileno(), select.POLLIN)
        poller.register(changed.fileno(), select.POLLIN)
        ready = {
            fd for fd, _ in poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
        }
        if changed.fileno() in ready:
            changed.clear()
        if self.conn.fileno() in ready:
            return self.messages(0)
        return []

    # -- running ---------------------------------------------------------------------------

    def run(
        self, target: containers.ExecTarget, request: ExecRequest, pending: list[dict[str, Any]]
    ) -> None:
        rt = self.daemon.containers
        step_name = new_step_name()
        launcher = uses_launcher(rt.runtime, target, request)
        try:
            argv = step_command(
                rt.scheduler, rt.runtime, target, request, step_name, launcher=launcher
            )
            inside = (
                signal_step_command(rt.scheduler, rt.runtime, target, step_name)
                if launcher
                else None
            )
        except SlurmUnavailable as exc:
            raise Unavailable(f"{exc.message}; Slurm is unavailable") from None
        sessions = self.daemon.reconciler.sessions
        try:
            plumbing = Plumbing(self.fds, request.tty, strip_srun_task_lines)
        except OSError as exc:
            raise BadRequest(f"cannot use the descriptors sent: {exc.strerror}") from None
        # rxd's private views replace them: the caller's own descriptors go nowhere else.
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        self.plumbing = plumbing
        sessions.opened(target.container_id)
        self.daemon.commands.live.add(self.listed(target, request, step_name))
        try:
            try:
                self.proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
                    argv,
                    stdin=plumbing.child_stdin,
                    stdout=plumbing.child_stdout,
                    stderr=plumbing.child_stderr,
                    # chdir happens before the drop to the user: a root-squashed shared
                    # folder may refuse root. The command's folder is --pwd, inside.
                    cwd="/",
                    env=child_env(rt.runtime, target, request),
                    close_fds=True,
                    start_new_session=True,
                    umask=0o022,
                    user=target.runas.uid,
                    group=target.runas.gid,
                    extra_groups=list(target.runas.groups),
                )
            except OSError as exc:
                raise Unavailable(f"cannot start srun: {exc}") from None
            finally:
                plumbing.child_started()
            self.interrupter = StepSignaller(
                target.job_id,
                step_name,
                as_user=target.runas,
                bin_dir=self.daemon.config.slurm.bin_dir,
                alive=subprocess_alive(self.proc),
                inside=inside,
                env=rt.runtime.exec_env(target.state_dir, {}),
                fallback=lambda name: self.signal(SIGNALS[name]),
            )
            if plumbing.terminal is not None:
                plumbing.terminal.make_raw()  # srun --pty makes the pty raw, rxd the caller's
            self.server.track(self)
            try:
                code = self.supervise(plumbing, pending)
            finally:
                self.server.untrack(self)
            # The caller's descriptors close before the answer: once rxctl exits, nothing of
            # rxd's holds its terminal or pipes open.
            plumbing.close()
            if self.stopping:
                self.send({"error": "rxd is stopping; the command was ended"})
            else:
                self.send({"exit": code})
            log.debug(
                "exec ended",
                extra={"project": request.project, "exit": code, "job_id": target.job_id},
            )
            self.server.call(self.daemon.containers.touch_activity, target.container_id)
        finally:
            plumbing.close()
            sessions.closed(target.container_id)
            self.daemon.commands.live.remove(step_name)

    def listed(
        self, target: containers.ExecTarget, request: ExecRequest, step_name: str
    ) -> LiveSession:
        """This session as `rxctl ps` lists it while it lasts."""
        return LiveSession(
            container_id=target.container_id,
            job_id=target.job_id,
            step_name=step_name,
            started_by=self.actor.name if self.actor else "?",
            argv=("port-forward", str(target.service_port)) if request.forward else request.argv,
            started_at=to_timestamp(utcnow()),
            shell=request.shell,
        )

    def supervise(self, plumbing: Plumbing, pending: list[dict[str, Any]]) -> int:
        """Relay the streams and the client's signals until srun exits and its output is out;
        its exit status. Nothing here blocks on the caller: a stream that does not drain only
        stops its own copying, never the disconnect check or the kill timer."""
        proc = self.proc
        assert proc is not None
        pidfd = os.pidfd_open(proc.pid)
        conn = self.conn.fileno()
        kill_at: float | None = None
        drain_until: float | None = None
        moved = 0
        client = True
        try:
            for message in pending:
                self.on_message(message)
            while True:
                extra = {} if drain_until is not None else {pidfd: select.POLLIN}
                if client:
                    extra[conn] = select.POLLIN
                poller = poll_interest(plumbing.pumps, extra)
                deadlines = [t for t in (kill_at, drain_until) if t is not None]
                timeout = None
                if deadlines:
                    timeout = int(max(0.0, min(deadlines) - time.monotonic()) * 1000) + 1
                for fd, revents in poller.poll(timeout):
                    if fd == conn:
                        try:
                            for message in self.messages(0):
                                self.on_message(message)
                        except (ClientGone, ProtocolError):
                            # The caller is gone: end the step (srun cancels it on SIGTERM),
                            # and let nothing srun writes meanwhile wait for the caller.
                            client = False
                            for pump in plumbing.outputs:
                                pump.drop_when_full()
                            if drain_until is None:
                                self.signal(signal.SIGTERM)
                                kill_at = time.monotonic() + KILL_AFTER_S
                    elif fd != pidfd:
                        dispatch(plumbing.pumps, fd, revents)
                now = time.monotonic()
                if drain_until is None and proc.poll() is not None:
                    # srun has exited: what it wrote last is still in the pipes.
                    drain_until, kill_at = now + DRAIN_S, None
                elif drain_until is not None and plumbing.output_moved != moved:
                    # A caller who reads slowly still gets everything; one who stopped does not
                    # keep the session.
                    moved, drain_until = plumbing.output_moved, now + DRAIN_S
                if drain_until is not None and (plumbing.output_drained or now >= drain_until):
                    break
                if kill_at is not None and now >= kill_at:
                    log.warning("srun ignored SIGTERM; killing it", extra={"pid": proc.pid})
                    self.signal(signal.SIGKILL)
                    kill_at = None
        finally:
            os.close(pidfd)
        return exit_status(proc.wait())

    def on_message(self, message: dict[str, Any]) -> None:
        name = message.get("signal")
        if name is None:
            return
        signum = SIGNALS.get(str(name))
        if signum is None:
            raise ProtocolError(f"cannot forward signal {name!r}")
        if signum == signal.SIGWINCH and self.plumbing and self.plumbing.terminal:
            self.plumbing.terminal.copy_size_to(self.plumbing.pty)
        if signum == signal.SIGINT and self.interrupter is not None:
            # To the step's processes, once; srun would end the step (slurm: step_signal.py).
            # Under the launcher, to the command's process group only.
            self.interrupter.send("INT")
            return
        if (
            signum in (signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP)
            and self.interrupter is not None
            and self.interrupter.inside is not None
        ):
            # To the command's group as the agent gives them (its trap runs; the launcher kills
            # the group 30 s after TERM or HUP); without the launcher they go to srun, which
            # cancels the step. A caller who hangs up still ends the step through srun.
            self.interrupter.send(signal.Signals(signum).name.removeprefix("SIG"))
            return
        self.signal(signum)

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)


class _Handler(socketserver.BaseRequestHandler):
    server: _UnixServer

    def handle(self) -> None:
        key = caller_key(self.request)  # admitted under this key by verify_request
        try:
            Session(self.server.owner, self.request).serve()
        finally:
            self.server.owner.cap.release(key)


class _UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 64
    owner: ExecServer

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """At most `limits.connections_per_uid` sessions per uid; over it, one error line, at
        once and without waiting for the client (it never costs a thread)."""
        cap = self.owner.cap
        if cap.admit(caller_key(request)):
            return True
        with contextlib.suppress(OSError):
            request.send(encode({"error": cap.refusal()}), socket.MSG_DONTWAIT)
        return False


class ExecServer:
    """The exec socket, served by threads until stop()."""

    def __init__(self, daemon: Daemon, path: Path) -> None:
        self.daemon = daemon
        self.path = path
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="rxd-exec-ledger")
        self.cap = ConnectionCap(daemon.config.limits.connections_per_uid)
        self._sessions: set[Session] = set()
        self._lock = threading.Lock()
        self._server: _UnixServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def start(cls, daemon: Daemon) -> ExecServer:
        server = cls(daemon, exec_socket_path(daemon.config.daemon.socket))
        claim_socket_path(server.path)
        unix = _UnixServer(str(server.path), _Handler)
        unix.owner = server
        # Anyone may connect: each session is authorized from the peer's credentials.
        open_to_everyone(server.path)
        server._server = unix
        server._thread = threading.Thread(
            target=unix.serve_forever, kwargs={"poll_interval": 0.5}, name="rxd-exec", daemon=True
        )
        server._thread.start()
        log.info("exec socket serving", extra={"socket": str(server.path)})
        return server

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting, end running commands (their clients are told), remove the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            running = list(self._sessions)
        for session in running:
            session.stopping = True
            session.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._sessions:
                    break
            time.sleep(0.05)
        self.pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(FileNotFoundError):
            if self.path.is_socket():
                self.path.unlink()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        return self.pool.submit(fn, *args).result()

    def track(self, session: Session) -> None:
        with self._lock:
            self._sessions.add(session)

    def untrack(self, session: Session) -> None:
        with self._lock:
            self._sessions.discard(session)
