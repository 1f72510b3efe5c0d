"""What Slurm says about partitions, cached briefly: settings are validated against it."""

from __future__ import annotations

import threading
import time
from typing import Protocol

from rxslurm.daemon.errors import Unavailable
from rxslurm.daemon.settings import Settings, check_against_slurm
from rxslurm.slurm.adapter import PartitionInfo
from rxslurm.slurm.errors import SlurmError


class PartitionSource(Protocol):
    """Where partitions come from: Slurm's adapter (``SlurmCli``), or a test's stand-in."""

    def partitions(self) -> dict[str, PartitionInfo]: ...


class PartitionCache:
    def __init__(self, slurm: PartitionSource, ttl: float = 30.0) -> None:
        self._slurm = slurm
        self._ttl = ttl
        self._lock = threading.Lock()
        self._value: dict[str, PartitionInfo] | None = None
        self._at = 0.0

    def get(self) -> dict[str, PartitionInfo]:
        with self._lock:
            if self._value is None or time.monotonic() - self._at > self._ttl:
                try:
                    self._value = self._slurm.partitions()
                except SlurmError as exc:
                    raise Unavailable(
                        f"Slurm did not answer ({exc}); nothing was changed"
                    ) from None
                self._at = time.monotonic()
            return self._value

    def default_name(self) -> str:
        for name, part in self.get().items():
            if part.default:
                return name
        return ""

    def validate(self, settings: Settings) -> None:
        check_against_slurm(settings, self.get(), self.default_name())
