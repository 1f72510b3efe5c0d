"""The daemon's shared parts, built once at start and handed to every route."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from rxslurm.daemon.api.peercred import Caller
from rxslurm.daemon.config import Config
from rxslurm.daemon.containers.reconciler import Reconciler
from rxslurm.daemon.containers.service import Runtime
from rxslurm.daemon.ledger.store import Ledger
from rxslurm.daemon.projects.partitions import PartitionCache
from rxslurm.slurm.adapter import SlurmCli


@dataclass
class Daemon:
    config: Config
    ledger: Ledger
    slurm: SlurmCli
    partitions: PartitionCache = field(init=False)
    runtime: Runtime = field(init=False)
    reconciler: Reconciler = field(init=False)

    def __post_init__(self) -> None:
        self.partitions = PartitionCache(self.slurm)
        self.runtime = Runtime(self.ledger, self.config, self.slurm)
        self.runtime.default_partition = self.partitions.default_name
        self.reconciler = Reconciler(self.runtime, self.config.containers.reconcile_interval)
        self.runtime.poke = self.reconciler.poke

    def is_admin(self, caller: Caller) -> bool:
        return caller.is_root or self.config.daemon.admin_group in caller.groups


DAEMON: web.AppKey[Daemon] = web.AppKey("daemon", Daemon)


def daemon_of(request: web.Request) -> Daemon:
    return request.app[DAEMON]
