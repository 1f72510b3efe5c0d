"""Ctrl-C for an exec step: one SIGINT to the step's processes, as a terminal gives its foreground.

srun has no way to pass a single SIGINT on and leave the step alive: with `--quit-on-interrupt`
its first SIGINT kills the step, without it the first only prints a status and a second within a
second forwards SIGINT and then aborts the step (SIGKILL). Either way a command's `trap ... INT`
(a checkpoint on interrupt) races a SIGKILL. So srun never gets SIGINT. The step is named when it
is started (`srun --job-name=NAME`), found by that name in squeue, and signalled with
`scancel --signal=INT JOB.STEP`, which slurmstepd delivers to the step's processes once and does
not end the step: the command decides how it ends, as it would at a local terminal.

That is right for a step's own processes, but not for a command `apptainer exec instance://`
runs: Apptainer's runtime parent is one of the step's processes, does not handle the signal, ends,
and takes the command with it before its trap runs. So such a step runs its command under the
launcher (rxslurm.agent.launcher) and is given `inside`: the argv of a second, short step that
passes the signal to the launcher, which gives it to the command's process group only.

Used by rxd for the steps it runs and by rxctl for the steps it starts itself (exec across hosts).
Runs the Slurm commands as the step's own user; no shell, argv only.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from rxslurm.slurm.runas import SAFE_PATH, RunAs, run

log = logging.getLogger("rxslurm.step_signal")

# A step appears in squeue shortly after srun starts it; a Ctrl-C that comes first waits this long.
FIND_TIMEOUT_S = 15.0
FIND_POLL_S = 0.1
COMMAND_TIMEOUT_S = 10.0
STEP_NAME_PREFIX = "rx-exec-"
# A signal step (see `inside`): named apart, so that `rxctl ps` never lists it as a session.
SIGNAL_STEP_PREFIX = "rx-signal-"
# srun, Apptainer joining the instance, python3 starting, and the launcher's own wait for a
# command that has not started yet (10 s at most).
SIGNAL_STEP_TIMEOUT_S = 30.0
# srun reports every task that ends non-zero ("srun: error: n1: task 0: Exited with exit code
# 3") and has no switch for it: -QQ would also hide its real errors. The exit code says the same,
# so whoever runs an exec step (rxd, or rxctl across hosts) drops these lines from srun's
# stderr; an out-of-memory report is kept.
_SRUN_TASK_END = re.compile(
    rb"(?m)^srun: error: [^\s:]+: tasks? [0-9,-]+: (?!Out Of Memory)[^\n]*\n"
)


# The same, for a script of rxd's that cannot import this module (runtime/command_output.py).
SRUN_TASK_END_PATTERN = _SRUN_TASK_END.pattern.decode()


def strip_srun_task_lines(chunk: bytes) -> bytes:
    return _SRUN_TASK_END.sub(b"", chunk)


def new_step_name() -> str:
    """A name no other step has: the step is found by it."""
    return STEP_NAME_PREFIX + secrets.token_hex(8)


def new_signal_step_name() -> str:
    return SIGNAL_STEP_PREFIX + secrets.token_hex(8)


def parse_steps(text: str, name: str) -> str | None:
    """The id ("J.S") of the step called `name` in `squeue --steps -o %i|%j` output."""
    for line in text.splitlines():
        step_id, sep, step_name = line.strip().partition("|")
        if sep and step_name == name and _is_step_id(step_id):
            return step_id
    return None


def _is_step_id(text: str) -> bool:
    job, sep, step = text.partition(".")
    return bool(sep) and job.isdigit() and step.isdigit()


class StepSignaller:
    """Delivers signals to one named step of one job, in order, off the caller's thread.

    `alive` says whether the srun that runs the step is still there: once it is gone, nothing is
    left to signal and pending signals are dropped.

    `inside`: the argv of the step that passes a signal to the step's launcher (the signal's
    name is added as its last word), run with `env` for the signals in `INSIDE_SIGNALS`; others
    go to the step with scancel. `fallback` gets a TERM or HUP the signal step could not deliver
    (no launcher found) while srun runs: the session must still end.
    """

    def __init__(
        self,
        job_id: int,
        step_name: str,
        *,
        as_user: RunAs | None = None,
        bin_dir: str | None = None,
        alive: Callable[[], bool] = lambda: True,
        inside: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        fallback: Callable[[str], None] | None = None,
    ) -> None:
        self.job_id = job_id
        self.inside = list(inside) if inside is not None else None
        self.env = dict(env or {})
        self.fallback = fallback
        self.step_name = step_name
        self.as_user = as_user
        self.bin_dir = bin_dir
        self.alive = alive
        self.step_id: str | None = None
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    def send(self, signal_name: str) -> None:
        """Queue one signal (a name such as "INT"); returns at once."""
        with self._lock:
            self._pending.append(signal_name)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(
                    target=self._deliver, name="rx-step-signal", daemon=True
                )
                self._worker.start()

    def wait(self, timeout: float | None = None) -> None:
        """For tests and orderly ends: until the queued signals are delivered or dropped."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)

    def _deliver(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    self._worker = None
                    return
                name = self._pending.pop(0)
            try:
                if self.inside is not None and name in INSIDE_SIGNALS:
                    self._signal_inside(name)
                    continue
                step_id = self.step_id or self._find()
                if step_id is None:
                    continue  # srun ended before its step showed up: nothing to interrupt
                self.step_id = step_id
                self._scancel(name, step_id)
            except Exception:
                log.exception("cannot signal the exec step", extra={"job_id": self.job_id})

    def _binary(self, name: str) -> str:
        found = shutil.which(name, path=self.bin_dir or os.environ.get("PATH") or SAFE_PATH)
        if found is None:
            raise FileNotFoundError(f"{name} not found")
        return found

    def _find(self) -> str | None:
        argv = [
            self._binary("squeue"),
            "--steps",
            f"--jobs={self.job_id}",
            "--noheader",
            "--format=%i|%j",
        ]
        deadline = time.monotonic() + FIND_TIMEOUT_S
        while self.alive() and time.monotonic() < deadline:
            result = run(argv, self.as_user, timeout=COMMAND_TIMEOUT_S)
            if result.returncode == 0:
                found = parse_steps(result.stdout, self.step_name)
                if found is not None:
                    return found
            time.sleep(FIND_POLL_S)
        return None

    def _signal_inside(self, name: str) -> None:
        assert self.inside is not None
        if not self.alive():
            return
        argv = [self._binary(self.inside[0]), *self.inside[1:], name]
        result = run(argv, self.as_user, timeout=SIGNAL_STEP_TIMEOUT_S, env_extra=self.env)
        if result.returncode != 0 and self.alive():
            log.warning(
                "the signal step found no command to signal",
                extra={"job_id": self.job_id, "error": result.stderr.strip()[-200:]},
            )
            if self.fallback is not None and name in ENDING_SIGNALS:
                self.fallback(name)

    def _scancel(self, name: str, step_id: str) -> None:
        argv = [self._binary("scancel"), "--quiet", f"--signal={name}", step_id]
        result = run(argv, self.as_user, timeout=COMMAND_TIMEOUT_S)
        if result.returncode != 0 and self.alive():
            log.warning(
                "scancel could not signal the exec step",
                extra={"step": step_id, "error": result.stderr.strip()[:200]},
            )


# What a launcher passes on (agent/launcher.py FORWARDED): the keys a terminal sends, TERM and
# HUP (the launcher kills the command's group 30 s later), and what `rxctl kill` sends.
INSIDE_SIGNALS = ("INT", "QUIT", "TERM", "HUP", "USR1", "USR2")
# Those that must end a session even when no launcher took them: srun then cancels the step. (Never
# INT: srun's own SIGINT handling would end the step on a second Ctrl-C.)
ENDING_SIGNALS = ("TERM", "HUP")


def subprocess_alive(proc: subprocess.Popen[bytes]) -> Callable[[], bool]:
    return lambda: proc.poll() is None
