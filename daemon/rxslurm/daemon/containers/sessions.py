"""What runs in a container besides its holder: interactive exec sessions and detached commands
(`rxctl exec --detach`, `rxctl ps`, `rxctl kill`).

A detached command is one `srun --overlap` step of the container's job, the same step an exec
session runs (the Scheduler's `step_argv` around the runtime's `exec_argv`), started by rxd as
the runtime user and tied to no client: a keeper process of that user
(runtime/command_output.py) copies its output into `exec-<id>.out` in the container's state
folder, capped, and tells rxd how it ended. The ledger keeps each one (`exec_sessions`) with who
started it; while one runs, its container does not go idle; it ends with the job.

Interactive sessions are counted while their connection lasts (`Live`), never stored.

`ps` joins these records with `squeue --steps` for the container's job: a step that squeue no
longer lists has ended, even if rxd missed it (a restart loses the keeper's last word: the exit
status is then what sacct has of the step, if anything). `kill` gives the signal to the
command's process group through its launcher (a short signal step, as the runtime user), so its
trap runs; KILL, and any signal to a command without a launcher, is `scancel --signal` on the
step.
"""

from __future__ import annotations

import json
import logging
import secrets
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rxslurm.daemon.containers.open_work import OpenSession, OpenWork, RunningCommand
from rxslurm.daemon.containers.reconciler import Sessions
from rxslurm.daemon.containers.service import Access, ContainerService, ExecTarget
from rxslurm.daemon.errors import BadRequest, Conflict, NotFound, Unavailable
from rxslurm.daemon.identity.actors import Actor, record_actor_event
from rxslurm.daemon.ledger.store import LedgerDatabase
from rxslurm.daemon.ledger.timestamps import to_timestamp
from rxslurm.daemon.projects.environment import with_exec_variables
from rxslurm.daemon.runtime.command_output import output_name, start_keeper
from rxslurm.daemon.runtime.job_output import MAX_BYTES, OutputError
from rxslurm.daemon.runtime.rotated_output import read_rotated
from rxslurm.protocol import env_vars
from rxslurm.protocol.commands import COMMAND_ID, KILL_SIGNALS
from rxslurm.protocol.states import State
from rxslurm.slurm.errors import SlurmError, SlurmUnavailable
from rxslurm.slurm.runas import RunAs, RunAsError
from rxslurm.slurm.step_signal import INSIDE_SIGNALS, STEP_NAME_PREFIX, new_step_name
from rxslurm.slurm.steps import StepInfo

log = logging.getLogger(__name__)

MAX_ARGV_BYTES = 64 * 1024
# How many ended detached commands `ps` lists (the newest).
ENDED_SHOWN = 20
# How many ended detached commands of a container the ledger keeps (older ones are forgotten).
KEPT_RECORDS = 100
# How long a start waits for the keeper to say that the step started.
START_TIMEOUT_S = 10.0
# How much of a detached command's program name a stop's refusal shows.
FIRST_WORD_CHARS = 32

Keeper = Callable[[str, str, Sequence[str], RunAs | None, dict[str, str]], "subprocess.Popen[str]"]


@dataclass(frozen=True)
class LiveSession:
    """An interactive exec or shell session while its connection lasts."""

    container_id: int
    job_id: int
    step_name: str
    started_by: str
    argv: tuple[str, ...]
    started_at: str
    shell: bool


@dataclass
class Live:
    """Interactive sessions open now, by step name (the exec server adds and removes them)."""

    _open: dict[str, LiveSession] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, session: LiveSession) -> None:
        with self._lock:
            self._open[session.step_name] = session

    def remove(self, step_name: str) -> None:
        with self._lock:
            self._open.pop(step_name, None)

    def of(self, container_id: int) -> list[LiveSession]:
        with self._lock:
            return [s for s in self._open.values() if s.container_id == container_id]


def check_argv(argv: Any) -> tuple[str, ...]:
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise BadRequest("argv must be a non-empty list of strings")
    if any("\0" in a for a in argv):
        raise BadRequest("argv must not contain NUL bytes")
    try:
        size = sum(len(a.encode()) for a in argv)
    except UnicodeEncodeError:
        raise BadRequest("argv must be valid Unicode (no lone surrogates)") from None
    if size > MAX_ARGV_BYTES:
        raise BadRequest(f"argv is longer than {MAX_ARGV_BYTES} bytes")
    return tuple(argv)


def check_cwd(cwd: Any) -> str | None:
    if cwd is None:
        return None
    if (
        not isinstance(cwd, str)
        or not cwd.startswith("/")
        or "\0" in cwd
        or len(cwd) > 4096
        or not cwd.isprintable()
    ):
        raise BadRequest("cwd must be an absolute path")
    return cwd


def check_command_id(command_id: str) -> str:
    if not COMMAND_ID.fullmatch(command_id):
        raise BadRequest("a command id is 8 hexadecimal digits, as `rxctl ps` shows it")
    return command_id


@dataclass
class FirstWord:
    """The keeper's first line: the step started, or `error` says why not."""

    ready: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


class DetachedCommands:
    """Detached commands and the sessions list of a project's container. One per daemon."""

    def __init__(
        self,
        service: ContainerService,
        sessions: Sessions,
        keeper: Keeper = start_keeper,
    ) -> None:
        self.service = service
        self.sessions = sessions
        self.live = Live()
        self.keeper = keeper
        # Detached commands whose keeper this rxd started and still waits for.
        self._watched: set[str] = set()
        self._lock = threading.Lock()
        service.open_work = self.open_work

    def open_work(self, db: LedgerDatabase, container_id: int) -> OpenWork:
        """The container's open interactive sessions and the detached commands the ledger says
        still run in its current job (a stop refuses while there are any, unless forced). A
        step ends with its job: a row of an older job still `running` only waits for `ps` to
        settle it."""
        found = db.execute(
            "SELECT id, argv, started_by FROM exec_sessions WHERE container_id = ? AND "
            "state = 'running' AND job_id = (SELECT job_id FROM containers WHERE id = ?) "
            "ORDER BY started_at",
            [container_id, container_id],
        ).fetchall()
        return OpenWork(
            sessions=tuple(
                OpenSession("shell" if s.shell else "exec", s.started_by)
                for s in self.live.of(container_id)
            ),
            commands=tuple(
                RunningCommand(command_id, _first_word(argv), started_by)
                for command_id, argv, started_by in found
            ),
        )

    # -- starting --------------------------------------------------------------------------

    def start(
        self, actor: Actor, project: str, argv: Any, cwd: Any = "/workspace", env: Any = None
    ) -> dict[str, Any]:
        """Start `argv` in the running container as a detached step; its record. `env`: this
        command's own variables (`rxctl exec -e`), over the project's."""
        words = check_argv(argv)
        folder = check_cwd(cwd)
        try:
            own = env_vars.check_variables({} if env is None else env)
        except env_vars.BadVariable as exc:
            raise BadRequest(str(exc)) from None
        service = self.service
        access = service.authorize_exec(actor, project)
        target = service.target_of(access)
        if target is None:
            view = service.view_of(access)
            raise Conflict(
                f"the container of {project} is not running ({view.state}); "
                f"`rxctl start --project {project} --wait` first"
            )
        command_id = secrets.token_hex(4)
        step_name = new_step_name()
        # Under the launcher where the container runs it: `kill` then reaches the command.
        launcher = service.runtime.has_launcher(target.state_dir, target.job_id, target.runas.uid)
        inside = service.runtime.exec_argv(
            target.instance,
            words,
            shell=False,
            cwd=folder,
            launcher=step_name if launcher else None,
        )
        try:
            step = service.scheduler.step_argv(
                target.job_id, inside, tty=False, step_name=step_name
            )
        except SlurmUnavailable as exc:
            raise Unavailable(f"{exc.message}; Slurm is unavailable") from None
        now = to_timestamp(service.clock())
        row = {
            "id": command_id,
            "container_id": target.container_id,
            "project_id": access.project["id"],
            "job_id": target.job_id,
            "step_name": step_name,
            "argv": json.dumps(list(words)),
            "cwd": folder,
            "started_by": actor.name,
            "started_at": now,
            "state": "running",
        }
        with service.ledger.transaction() as db:
            while db.execute("SELECT 1 FROM exec_sessions WHERE id = ?", [row["id"]]).fetchone():
                row["id"] = command_id = secrets.token_hex(4)  # 32 bits: a clash is rare
            db.table("exec_sessions").insert(row)
            # The ledger keeps a container's newest KEPT_RECORDS ended commands.
            db.execute(
                "DELETE FROM exec_sessions WHERE container_id = ? AND state != 'running' AND "
                "id NOT IN (SELECT id FROM exec_sessions WHERE container_id = ? AND "
                "state != 'running' ORDER BY started_at DESC LIMIT ?)",
                [target.container_id, target.container_id, KEPT_RECORDS],
            )
            record_actor_event(
                db,
                actor,
                "exec.detached",
                "project",
                project,
                # The names of its own variables, never their values.
                {
                    "id": command_id,
                    "argv": list(words),
                    "job_id": target.job_id,
                    **({"env": sorted(own)} if own else {}),
                },
            )
        self.sessions.opened(target.container_id)
        try:
            proc = self.keeper(
                target.state_dir,
                command_id,
                step,
                target.runas,
                # The project's variables and secrets and its own, as an exec session gets
                # them: in the keeper's environment (which the step inherits), never in argv.
                service.runtime.exec_env(
                    target.state_dir, with_exec_variables(target.variables, own)
                ),
            )
        except (OSError, RunAsError) as exc:
            self.sessions.closed(target.container_id)
            self._ended(command_id, None)
            raise Unavailable(f"cannot start the command: {exc}") from None
        with self._lock:
            self._watched.add(command_id)
        first = FirstWord()
        threading.Thread(
            target=self._watch,
            args=(command_id, target, proc, first),
            name=f"rxd-detached-{command_id}",
            daemon=True,
        ).start()
        # The keeper says at once whether the step started (or why not): an answer that names
        # the id of a command that never ran would send its caller looking for nothing.
        if first.ready.wait(START_TIMEOUT_S) and first.error is not None:
            raise Unavailable(f"cannot start the command: {first.error}")
        log.info(
            "detached command started",
            extra={"project": project, "id": command_id, "job_id": target.job_id},
        )
        return self._record(self._row(command_id), None)

    def _watch(
        self,
        command_id: str,
        target: ExecTarget,
        proc: subprocess.Popen[str],
        first: FirstWord,
    ) -> None:
        """Until the keeper ends: its first word says whether the step started, its last the
        step's exit status."""
        code: int | None = None
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                try:
                    said = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not isinstance(said, dict):
                    continue
                if isinstance(said.get("exit"), int):
                    code = said["exit"]
                elif "error" in said:
                    first.error = str(said["error"])[:300]
                    log.warning(
                        "detached command failed to start",
                        extra={"id": command_id, "error": first.error},
                    )
                first.ready.set()
            proc.wait()
        except Exception:
            log.exception("watching a detached command failed", extra={"id": command_id})
        finally:
            if not first.ready.is_set():
                first.error = first.error or "the keeper ended without a word"
                first.ready.set()
            with self._lock:
                self._watched.discard(command_id)
            self.sessions.closed(target.container_id)
            try:
                # Activity first: whoever sees the command ended also sees the idle timer restarted.
                self.service.touch_activity(target.container_id)
                self._ended(command_id, code)
            except Exception:
                log.exception("cannot record a detached command's end", extra={"id": command_id})

    def _ended(self, command_id: str, code: int | None) -> None:
        with self.service.ledger.transaction() as db:
            db.execute(
                "UPDATE exec_sessions SET state = 'ended', ended_at = ?, exit_code = ? "
                "WHERE id = ? AND state = 'running'",
                [to_timestamp(self.service.clock()), code, command_id],
            )

    # -- looking -----------------------------------------------------------------------------

    def _row(self, command_id: str) -> dict[str, Any]:
        with self.service.ledger.read() as db:
            found = db.execute("SELECT * FROM exec_sessions WHERE id = ?", [command_id])
            columns = [c[0] for c in found.description]
            row = found.fetchone()
        if row is None:
            raise NotFound(f"no detached command {command_id}")
        return dict(zip(columns, row, strict=True))

    @staticmethod
    def _record(row: dict[str, Any], step_id: str | None) -> dict[str, Any]:
        return {
            "id": row["id"],
            "kind": "detached",
            "started_by": row["started_by"],
            "argv": json.loads(row["argv"]),
            "started_at": row["started_at"],
            "state": row["state"],
            "ended_at": row["ended_at"],
            "exit_code": row["exit_code"],
            "step_id": step_id,
            "job_id": row["job_id"],
            "signalled": row["signalled"],
        }

    def sessions_of(self, actor: Actor, project: str) -> dict[str, Any]:
        """`rxctl ps`: the container's interactive sessions and detached commands (running, and
        the newest ended ones), each with its step as squeue lists it now."""
        access = self.service.authorize_exec(actor, project)
        with self.service.ledger.read() as db:
            container = db.execute(
                "SELECT id, job_id, state, runtime_user FROM containers WHERE project_id = ?",
                [access.project["id"]],
            ).fetchone()
            if container is None:
                return {"project": project, "sessions": [], "steps_known": True}
            container_id, job_id, state, runtime_user = container
            found = db.execute(
                "SELECT * FROM exec_sessions WHERE container_id = ? AND "
                "(state = 'running' OR id IN (SELECT id FROM exec_sessions WHERE "
                "container_id = ? AND state != 'running' ORDER BY started_at DESC LIMIT ?)) "
                "ORDER BY started_at",
                [container_id, container_id, ENDED_SHOWN],
            )
            columns = [c[0] for c in found.description]
            rows = [dict(zip(columns, r, strict=True)) for r in found.fetchall()]
        steps, known = self._steps(
            {r["job_id"] for r in rows if r["state"] == "running"}
            | ({job_id} if job_id and state == State.RUNNING else set())
        )
        rows = self._settle(rows, steps, known)
        listed = [self._record(r, _step_id(steps, r["step_name"])) for r in rows]
        claimed = {r["step_name"] for r in rows}
        for live in self.live.of(container_id):
            claimed.add(live.step_name)
            listed.append(
                _interactive(
                    live.step_name,
                    "shell" if live.shell else "exec",
                    live.started_by,
                    list(live.argv),
                    live.started_at,
                    _step_id(steps, live.step_name),
                    live.job_id,
                )
            )
        for name, step in steps.items():
            if step.job_id == job_id and name.startswith(STEP_NAME_PREFIX) and name not in claimed:
                # An exec step rxd does not run: the runtime user started it on their own host
                # (the network door's direct steps). Only they can start a step in the job.
                started = (
                    to_timestamp(datetime.fromtimestamp(step.start, UTC))
                    if step.start is not None
                    else None
                )
                listed.append(
                    _interactive(name, "exec", runtime_user, [], started, step.step_id, job_id)
                )
        listed.sort(key=lambda r: str(r["started_at"]))
        return {"project": project, "sessions": listed, "steps_known": known}

    def _steps(self, job_ids: set[int]) -> tuple[dict[str, StepInfo], bool]:
        """{step name: step} of the jobs' running steps; whether squeue answered."""
        if not job_ids:
            return {}, True
        try:
            return {s.name: s for s in self.service.scheduler.steps(job_ids)}, True
        except SlurmError as exc:
            log.info("squeue --steps did not answer", extra={"error": str(exc)[:200]})
            return {}, False

    def _settle(
        self, rows: list[dict[str, Any]], steps: dict[str, StepInfo], known: bool
    ) -> list[dict[str, Any]]:
        """Rows still `running` whose step squeue no longer lists and whose keeper this rxd
        does not wait for (it was restarted meanwhile) have ended: how, sacct says if it
        knows."""
        if not known:
            return rows
        with self._lock:
            watched = set(self._watched)
        gone = [
            r["id"]
            for r in rows
            if r["state"] == "running" and r["step_name"] not in steps and r["id"] not in watched
        ]
        exits: dict[int, dict[str, int]] = {}
        for command_id in gone:
            row = next(r for r in rows if r["id"] == command_id)
            job = row["job_id"]
            if job not in exits:
                try:
                    exits[job] = self.service.scheduler.step_exits(job)
                except SlurmError:
                    exits[job] = {}  # accounting did not say: the status stays unknown
            self._ended(command_id, exits[job].get(row["step_name"]))
        return [self._row(r["id"]) if r["id"] in gone else r for r in rows]

    # -- ending ------------------------------------------------------------------------------

    def kill(
        self, actor: Actor, project: str, command_id: str, signal: str = "TERM"
    ) -> dict[str, Any]:
        """The signal to the command (through its launcher, else `scancel --signal` on its
        step), as the runtime user; audited."""
        check_command_id(command_id)
        name = str(signal).upper().removeprefix("SIG")
        if name not in KILL_SIGNALS:
            raise BadRequest(f"signal must be one of {', '.join(KILL_SIGNALS)}")
        access = self.service.authorize_exec(actor, project)
        row = self._own_row(access, command_id)
        if row["state"] != "running":
            raise Conflict(f"command {command_id} has already ended")
        steps, known = self._steps({row["job_id"]})
        step_id = _step_id(steps, row["step_name"])
        if step_id is None:
            if known:
                raise Conflict(f"command {command_id} is not running in Slurm any more")
            raise Unavailable("Slurm is unavailable; cannot find the command's step")
        target = self.service.target_of(access)
        who = target.runas if target is not None else _runtime_user(self.service, row)
        try:
            if not self._signal_inside(target, row, name):
                self.service.scheduler.signal_step(step_id, name, as_user=who)
        except SlurmError as exc:
            raise Unavailable(f"cannot signal command {command_id}: {exc}") from None
        with self.service.ledger.transaction() as db:
            db.execute("UPDATE exec_sessions SET signalled = ? WHERE id = ?", [name, command_id])
            record_actor_event(
                db,
                actor,
                "exec.signalled",
                "project",
                project,
                {"id": command_id, "signal": name, "step": step_id},
            )
        return self._record(self._row(command_id), step_id)

    def _signal_inside(self, target: ExecTarget | None, row: dict[str, Any], name: str) -> bool:
        """The signal to the command's process group through its launcher (a short step), so
        its trap runs; a TERM is followed by a SIGKILL 30 s later, as Slurm's KillWait would.
        False when there is no launcher to ask (KILL, a command started without one, a job
        that is no longer the container's): then slurmstepd signals the step."""
        service = self.service
        if name not in INSIDE_SIGNALS or target is None or target.job_id != row["job_id"]:
            return False
        if not service.runtime.has_launcher(target.state_dir, target.job_id, target.runas.uid):
            return False
        argv = service.runtime.signal_argv(target.instance, row["step_name"])
        return service.scheduler.signal_inside(
            target.job_id,
            [*argv, name],
            as_user=target.runas,
            env=service.runtime.exec_env(target.state_dir, {}),
        )

    def _own_row(self, access: Access, command_id: str) -> dict[str, Any]:
        try:
            row = self._row(command_id)
        except NotFound:
            row = None
        if row is None or row["project_id"] != access.project["id"]:
            raise NotFound(f"no detached command {command_id} in {access.project['name']}")
        return row

    # -- output ------------------------------------------------------------------------------

    def output(
        self,
        actor: Actor,
        project: str,
        command_id: str,
        offset: int | None = None,
        max_bytes: int = MAX_BYTES,
    ) -> dict[str, Any]:
        """A piece of a detached command's output, in the shape of `rxctl logs`' answers."""
        check_command_id(command_id)
        access = self.service.authorize_exec(actor, project)
        row = self._own_row(access, command_id)
        with self.service.ledger.read() as db:
            found = db.execute(
                "SELECT state_dir, runtime_user, state FROM containers WHERE id = ?",
                [row["container_id"]],
            ).fetchone()
        if found is None or not found[0] or not found[1]:
            raise Conflict(f"the container of {project} has no folder")
        state_dir, runtime_user, _ = found
        try:
            who = RunAs.for_user(runtime_user)
            name = output_name(command_id)
            read = read_rotated(state_dir, name, who, offset=offset, max_bytes=max_bytes)
        except RunAsError as exc:
            raise Conflict(f"cannot read the output of {command_id}: {exc}") from None
        except OutputError as exc:
            raise Unavailable(f"cannot read the output of {command_id}: {exc}") from None
        return {
            "project": project,
            "exec": command_id,
            "job_id": row["job_id"],
            "state": row["state"],
            "live": row["state"] == "running",
            "exit_code": row["exit_code"],
            **read.fields(),
            "cleaned": False,
        }


def _first_word(argv_json: str) -> str:
    """The program a detached command runs, short, for a one-line message."""
    try:
        words = json.loads(argv_json)
        word = str(words[0]).rsplit("/", 1)[-1]
    except (ValueError, TypeError, IndexError, KeyError):
        return "?"
    return word[:FIRST_WORD_CHARS]


def _step_id(steps: dict[str, StepInfo], name: str) -> str | None:
    step = steps.get(name)
    return step.step_id if step is not None else None


def _interactive(
    step_name: str,
    kind: str,
    started_by: str,
    argv: list[str],
    started_at: str | None,
    step_id: str | None,
    job_id: int,
) -> dict[str, Any]:
    """An interactive session as `ps` lists it: its id is its step name's first 8 digits."""
    return {
        "id": step_name.removeprefix(STEP_NAME_PREFIX)[:8],
        "kind": kind,
        "started_by": started_by,
        "argv": argv,
        "started_at": started_at,
        "state": "running",
        "ended_at": None,
        "exit_code": None,
        "step_id": step_id,
        "job_id": job_id,
        "signalled": None,
    }


def _runtime_user(service: ContainerService, row: dict[str, Any]) -> RunAs:
    with service.ledger.read() as db:
        found = db.execute(
            "SELECT runtime_user FROM containers WHERE id = ?", [row["container_id"]]
        ).fetchone()
    if found is None or not found[0]:
        raise Conflict("the container has no runtime user")
    return RunAs.for_user(found[0])


__all__ = ["DetachedCommands", "Live", "LiveSession"]
