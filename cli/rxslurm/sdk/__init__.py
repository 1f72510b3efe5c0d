"""rx-slurm from Python: a project's container, its commands and typed errors (docs/sdk.md).

Talks to rxd exactly as rxctl does (the same doors and authentication), importing nothing of
the daemon's.
"""

from rxslurm.sdk.builds import BuildFailed
from rxslurm.sdk.container import Container
from rxslurm.sdk.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    QuotaExceeded,
    RxError,
    Timeout,
    Unavailable,
)
from rxslurm.sdk.image import Image
from rxslurm.sdk.process import ExecProcess, ExecResult, Output
from rxslurm.sdk.secret import Secret
from rxslurm.sdk.volume import Volume

__all__ = [
    "BadRequest",
    "BuildFailed",
    "Conflict",
    "Container",
    "ExecProcess",
    "ExecResult",
    "Forbidden",
    "Image",
    "NotFound",
    "Output",
    "QuotaExceeded",
    "RxError",
    "Secret",
    "Timeout",
    "Unavailable",
    "Volume",
]
