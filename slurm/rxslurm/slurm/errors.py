"""What can go wrong when talking to Slurm, split by what the caller should do about it.

``SlurmUnavailable``: Slurm did not answer (time-out, controller or slurmdbd unreachable, munge
down, a command missing). The job may well still exist: callers must treat this as UNKNOWN and
retry later, never as "the job is gone".
``SlurmRejected``: Slurm answered and said no (bad partition, invalid GRES, no association,
permission denied). Retrying the same request will not help; show ``message`` to the user.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence


class SlurmError(Exception):
    """A Slurm command failed. ``message`` is Slurm's own text, cleaned of program prefixes."""

    def __init__(
        self,
        message: str,
        *,
        argv: Sequence[str] = (),
        returncode: int | None = None,
        stderr: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr

    @property
    def one_line(self) -> str:
        """Slurm's message as one line (its lines joined by "; "): for a state's reason."""
        return "; ".join(line for line in self.message.splitlines() if line.strip())


class SlurmUnavailable(SlurmError):
    """Slurm did not answer; the state of the job is unknown, not gone. Retry later."""


class SlurmRejected(SlurmError):
    """Slurm answered no; ``message`` carries its reason."""


class AccountingDisabled(SlurmUnavailable):
    """sacct cannot answer because this cluster runs without slurmdbd.

    A kind of ``SlurmUnavailable`` on purpose: the final state of a job that left the queue is
    unknown here, which must never be read as "failed" or "gone".
    """


# Texts Slurm's client library prints when the controller (or slurmdbd, or munge) did not
# answer. Matched case-insensitively anywhere in stderr.
_UNAVAILABLE_PATTERNS = (
    r"unable to contact slurm controller",
    r"socket timed out on send/recv",
    r"communication connection failure",
    r"zero bytes were transmitted or received",
    r"connection refused",
    r"connection timed out",
    r"no route to host",
    r"network is unreachable",
    r"slurm backup controller in standby mode",
    r"slurmctld is busy",
    r"slurm controller not responding",
    r"resource temporarily unavailable",
    r"munge encode failed",
    r"munge decode failed",
    r"invalid authentication credential",
    r"protocol authentication error",
    r"authentication failure",
    r"problem talking to the database",
    r"could not establish a configuration source",
    r"unable to establish controller machine",
    r"slurmdbd.*(?:not responding|unavailable|connection)",
)
_UNAVAILABLE_RE = re.compile("|".join(_UNAVAILABLE_PATTERNS), re.IGNORECASE)
_ACCOUNTING_DISABLED_RE = re.compile(r"accounting storage is disabled", re.IGNORECASE)
# "sbatch: error: ", "squeue: error: ", "slurm_load_jobs error: " ... in front of the reason.
_PREFIX_RE = re.compile(r"^(?:[\w.-]+:\s*)?(?:error|fatal):\s*", re.IGNORECASE)


def slurm_message(stderr: str) -> str:
    """The meaningful lines of a Slurm command's stderr, without ``prog: error:`` prefixes."""
    lines = []
    for raw in stderr.splitlines():
        line = raw.strip()
        if not line:
            continue
        line = _PREFIX_RE.sub("", line)
        # Once more for "sbatch: error: Batch job submission failed: ..." style double prefixes.
        line = _PREFIX_RE.sub("", line)
        lines.append(line)
    return "\n".join(lines)


def classify(
    argv: Sequence[str], returncode: int, stdout: str, stderr: str
) -> SlurmUnavailable | SlurmRejected:
    """The exception for a Slurm command that exited with ``returncode`` != 0."""
    text = stderr.strip() or stdout.strip()
    message = slurm_message(text) or f"{_prog(argv)} exited with status {returncode}"
    kind: type[SlurmUnavailable | SlurmRejected] = SlurmRejected
    if _ACCOUNTING_DISABLED_RE.search(text):
        kind = AccountingDisabled
    elif returncode < 0:
        # Killed by a signal: it never gave an answer.
        kind, message = SlurmUnavailable, f"{_prog(argv)} was killed by signal {-returncode}"
    elif _UNAVAILABLE_RE.search(text):
        kind = SlurmUnavailable
    return kind(message, argv=argv, returncode=returncode, stderr=stderr)


def from_timeout(exc: subprocess.TimeoutExpired) -> SlurmUnavailable:
    argv = exc.cmd if isinstance(exc.cmd, list | tuple) else [str(exc.cmd)]
    stderr = exc.stderr if isinstance(exc.stderr, str) else ""
    return SlurmUnavailable(
        f"{_prog(argv)} did not answer within {exc.timeout:g} s", argv=argv, stderr=stderr
    )


def from_oserror(argv: Sequence[str], exc: OSError) -> SlurmUnavailable:
    return SlurmUnavailable(f"cannot run {_prog(argv)}: {exc.strerror or exc}", argv=argv)


def _prog(argv: Sequence[str]) -> str:
    return str(argv[0]).rsplit("/", 1)[-1] if argv else "slurm command"
