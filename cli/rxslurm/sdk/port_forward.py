"""`Container.port_forward`: a project's service reached on 127.0.0.1 of this host, by rxctl's own
`port-forward` (docs/services.md) run as a child process for as long as the forward is open.

Each connection is one exec session of that child (rxctl forks one per connection), so the
forward has rxctl's rights and transport, no more.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from types import TracebackType

from rxslurm.sdk.errors import BadRequest, RxError

# rxctl's own entry point, run by this interpreter (the one the SDK is installed in).
RXCTL = "import sys; from rxslurm.cli.fastpath import main; sys.exit(main())"
CLOSE_WAIT_S = 10.0


class PortForward:
    """Open while rxctl's forward runs: `with box.port_forward(8080) as forward: ...`.
    `local_port` and `url` say where; close() (or the with block's end) stops it."""

    def __init__(self, project: str, local_port: int, socket: str | None) -> None:
        if isinstance(local_port, bool) or not isinstance(local_port, int):
            raise BadRequest(f"a local port is a number 1-65535, not {local_port!r}")
        if not 1 <= local_port <= 65535:
            raise BadRequest(f"a local port is a number 1-65535, not {local_port}")
        self.local_port = local_port
        argv = [sys.executable, "-c", RXCTL]
        if socket:
            argv += ["--socket", socket]
        argv += ["port-forward", "--project", project, str(local_port)]
        self._process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self._process.stdout is not None and self._process.stderr is not None
        # rxctl says "Forwarding ..." once it listens; a refusal ends it with one line instead.
        first = self._process.stdout.readline()
        if not first.startswith("Forwarding"):
            why = self._process.stderr.read().strip()
            self._process.wait()
            last = why.splitlines()[-1] if why else f"rxctl port-forward ended: {first.strip()}"
            raise RxError(last.removeprefix("Error: "))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}"

    def close(self) -> None:
        """Stop listening (as Ctrl-C stops rxctl port-forward); open connections end on their
        own."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(timeout=CLOSE_WAIT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for stream in (self._process.stdout, self._process.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> PortForward:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
