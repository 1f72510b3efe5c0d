"""A command running in a container: its output as it comes, then its result.

Each session runs in a child process (session_child.py) whose stdout and stderr are pipes read
here; the child speaks rxctl's exec protocol, so the output is the command's and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from rxslurm.sdk.errors import RxError, Timeout, error_for

# After the deadline the command gets SIGTERM (rxctl forwards it: srun cancels the step); this
# long later the session's process is killed, and rxd ends the step as for a client that left.
KILL_AFTER_S = 10.0
READ_SIZE = 65536


@dataclass(frozen=True)
class Output:
    """One piece of a command's output, as it arrived."""

    stream: Literal["stdout", "stderr"]
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode(errors="replace")


@dataclass(frozen=True)
class ExecResult:
    """A finished command: its exit code (128+N when signal N ended it) and all its output."""

    exit_code: int
    stdout_bytes: bytes
    stderr_bytes: bytes

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode(errors="replace")


def _namespace_roots() -> str:
    """Where the rxslurm portions live, so the child imports the same code as this process."""
    import rxslurm

    roots = {os.path.dirname(p) for p in rxslurm.__path__}
    inherited = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join([*sorted(roots), *([inherited] if inherited else [])])


class ExecProcess:
    """A command started in a container. Iterate it for its output as it comes (`Output`
    pieces of stdout and stderr, in arrival order); `wait()` for the ExecResult.

    `timeout` (seconds) bounds the whole session, waking included: past it the command is sent
    SIGTERM and Timeout is raised.
    """

    def __init__(
        self,
        spec: dict[str, Any],
        *,
        timeout: float | None = None,
        stdin: bytes | None = None,
    ) -> None:
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.timeout = timeout
        self.exit_code: int | None = None
        self._stdout: list[bytes] = []
        self._stderr: list[bytes] = []
        self._timed_out = False
        ours, theirs = socket.socketpair()
        with theirs:
            try:
                self._proc = subprocess.Popen(  # noqa: S603 - argv list, this Python
                    [sys.executable, "-m", "rxslurm.sdk.session_child", str(theirs.fileno())],
                    stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    pass_fds=(theirs.fileno(),),
                    env={**os.environ, "PYTHONPATH": _namespace_roots()},
                )
            except OSError as exc:
                ours.close()
                raise RxError(f"cannot start the SDK's session runner: {exc}") from None
        self._answers = ours
        ours.sendall(json.dumps(spec).encode())
        ours.shutdown(socket.SHUT_WR)
        if stdin is not None:
            # Fed beside the reading: input longer than a pipe holds must not wait on output
            # nobody reads yet.
            threading.Thread(target=self._feed, args=(stdin,), daemon=True).start()
        self._chunks = self._read()

    def _feed(self, data: bytes) -> None:
        assert self._proc.stdin is not None
        with contextlib.suppress(OSError):  # the command did not read it all: as a pipe
            self._proc.stdin.write(data)
        with contextlib.suppress(OSError):
            self._proc.stdin.close()

    def __iter__(self) -> Iterator[Output]:
        return self._chunks

    def _read(self) -> Iterator[Output]:
        assert self._proc.stdout is not None and self._proc.stderr is not None
        selector = selectors.DefaultSelector()
        selector.register(self._proc.stdout, selectors.EVENT_READ, "stdout")
        selector.register(self._proc.stderr, selectors.EVENT_READ, "stderr")
        try:
            while selector.get_map():
                left = None if self.deadline is None else self.deadline - time.monotonic()
                if left is not None and left <= 0:
                    self._give_up()
                    return
                for key, _ in selector.select(left):
                    data = os.read(key.fd, READ_SIZE)
                    if not data:
                        selector.unregister(key.fileobj)
                        continue
                    (self._stdout if key.data == "stdout" else self._stderr).append(data)
                    yield Output(key.data, data)
        finally:
            selector.close()

    def _give_up(self) -> None:
        self._timed_out = True
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(KILL_AFTER_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()

    def wait(self) -> ExecResult:
        """Read whatever output is left and wait for the command; its result, or the SDK's
        exception for why it did not run (or Timeout)."""
        try:
            for _ in self._chunks:
                pass
            self._proc.wait()
            answer = self._answer()
        finally:
            for pipe in (self._proc.stdout, self._proc.stderr):
                if pipe is not None:
                    pipe.close()
        if self._timed_out:
            raise Timeout(f"the command did not finish within {self.timeout:g} s; it was ended")
        if "exit" in answer:
            self.exit_code = int(answer["exit"])
            return ExecResult(self.exit_code, b"".join(self._stdout), b"".join(self._stderr))
        raise error_for(str(answer.get("error")), answer.get("code"), answer.get("status"))

    def _answer(self) -> dict[str, Any]:
        with self._answers:
            raw = b""
            while data := self._answers.recv(65536):
                raw += data
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            if self._timed_out:
                return {}
            raise RxError(
                f"the SDK's session ended without an answer (status {self._proc.returncode})"
            )
        return answer
