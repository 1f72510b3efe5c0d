"""The daemon's shared parts, built once at start and handed to every route."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from rxslurm.daemon.api.peercred import Caller
from rxslurm.daemon.config import Config
from rxslurm.daemon.containers.builds import BuildService
from rxslurm.daemon.containers.gc import GcService
from rxslurm.daemon.containers.one_shots import OneShotService
from rxslurm.daemon.containers.reconciler import Reconciler
from rxslurm.daemon.containers.service import ContainerService
from rxslurm.daemon.containers.sessions import DetachedCommands
from rxslurm.daemon.ledger.store import Ledger
from rxslurm.daemon.projects.partitions import PartitionCache
from rxslurm.daemon.runtime.command_output import start_keeper
from rxslurm.slurm.adapter import SlurmCli


@dataclass
class Daemon:
    config: Config
    ledger: Ledger
    slurm: SlurmCli
    partitions: PartitionCache = field(init=False)
    containers: ContainerService = field(init=False)
    reconciler: Reconciler = field(init=False)
    builds: BuildService = field(init=False)
    commands: DetachedCommands = field(init=False)
    gc: GcService = field(init=False)
    one_shots: OneShotService = field(init=False)

    def __post_init__(self) -> None:
        self.partitions = PartitionCache(self.slurm)
        self.containers = ContainerService(
            self.ledger,
            self.config,
            scheduler=self.slurm,
            default_partition=self.partitions.default_name,
            mirror_quotas=self._mirror_quotas,
        )
        self.reconciler = Reconciler(self.containers, self.config.containers.reconcile_interval)
        self.containers.poke = self.reconciler.poke
        self.builds = BuildService(self.containers)
        self.builds.validate_resources = self.partitions.validate
        self.reconciler.extra_passes.append(self.builds.reconcile)
        self.commands = DetachedCommands(
            self.containers,
            self.reconciler.sessions,
            keeper=functools.partial(start_keeper, cap=self.config.containers.output_cap_mb << 20),
        )
        self.gc = GcService(self.ledger, self.config, self.containers.clock)
        self.gc.remove_build = self.builds.remove_unused
        self.one_shots = OneShotService(self.containers)
        self.one_shots.validate_resources = self.partitions.validate
        self.reconciler.extra_passes.append(self.one_shots.reconcile)

    def is_admin(self, caller: Caller) -> bool:
        return caller.is_root or self.config.daemon.admin_group in caller.groups

    def _mirror_quotas(self) -> list[dict[str, Any]]:
        """Bring the Slurm QOSes in line with the quotas marked for mirroring (if that is on)."""
        from rxslurm.daemon.quotas import qos_mirror

        return qos_mirror.sync(self.ledger, self.slurm, tag=self.config.slurm.tag)


DAEMON: web.AppKey[Daemon] = web.AppKey("daemon", Daemon)


def daemon_of(request: web.Request) -> Daemon:
    return request.app[DAEMON]
