"""rxd's TOML configuration: defaults, loading and validation.

An unknown section or key is an error: a typo in a root daemon's config must not silently fall back
to a default.
"""

from __future__ import annotations

import grp
import ipaddress
import logging
import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from rxslurm.daemon.errors import ApiError
from rxslurm.daemon.identity.linux_accounts import linux_account_by_name
from rxslurm.daemon.settings import PROJECT_ONLY, Settings
from rxslurm.protocol import paths
from rxslurm.protocol.settings import GPU_DRIVERS, SETTINGS

DEFAULT_CONFIG_PATH = Path(paths.DAEMON_CONFIG)
CONFIG_ENV = "RXD_CONFIG"
# Keys an older rxd read and this one does not: a config written for it still loads, and the
# key is ignored with a warning (an unknown key is still an error).
RETIRED_KEYS = {"defaults.gpu_mem_gb": "GPU memory was never applied to jobs"}

log = logging.getLogger("rxslurm.config")


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or invalid."""


@dataclass(frozen=True)
class DaemonConfig:
    socket: Path = Path(paths.DEFAULT_SOCKET)
    ledger: Path = Path(paths.DEFAULT_LEDGER)
    log_level: str = "info"
    # Members of this Unix group (and root) are rx-slurm admins.
    admin_group: str = "rxadmin"
    # "host:port" to serve the cluster over TCP, each request proved by MUNGE; empty: off.
    listen: str = ""
    # "host:port" to serve GET /metrics over plain HTTP to anyone who can connect; empty: off
    # (the Unix socket serves it always). Loopback only, unless metrics_remote is true.
    metrics_listen: str = ""
    metrics_remote: bool = False


@dataclass(frozen=True)
class IdentityConfig:
    # "local": every Linux user is their own platform user, bound on first use.
    # "platform": bindings come only from one-time codes issued for platform users.
    mode: str = "local"
    min_uid: int = 1000
    # How long a one-time binding code may be redeemed, in minutes.
    code_ttl_min: int = 10


@dataclass(frozen=True)
class SlurmConfig:
    # Empty: find sbatch, squeue, ... on PATH.
    bin_dir: str = ""
    timeout: float = 30.0
    # Marks this deployment's jobs (their comment is "<tag>:container=<id>"): the reconciler
    # adopts or cancels only jobs with its own tag, so two deployments can share a cluster.
    tag: str = "rx"
    # Who may poke rxd about job starts and ends (PrologSlurmctld/EpilogSlurmctld run as SlurmUser).
    hook_users: tuple[str, ...] = ("root", "slurm")


@dataclass(frozen=True)
class ApptainerConfig:
    # Absolute path of the Apptainer program that the holder job, exec steps and overlay creation
    # all run (the same path on every node); empty: `apptainer` looked up on rxd's PATH once.
    binary: str = ""
    # Containers start with --fakeroot: root inside, mapped to the runtime user, so apt-get, dpkg
    # and pip write into the persistent overlay. Without it only what the user owns is writable.
    fakeroot: bool = True
    # "project": the container's home is a folder of its own (in its state folder);
    # "host": the runtime user's home from the node is bound, Apptainer's default.
    home: str = "project"
    # /tmp and /var/tmp are the container's own (in its overlay), not the node's.
    private_tmp: bool = True


@dataclass(frozen=True)
class RuntimeConfig:
    # The Linux account project work runs as when a project chooses run_as = "service";
    # empty: no service account, so every project runs as its owner's bound identity.
    service_account: str = ""
    # Whether owners may run project work as their own bound Linux identity.
    allow_run_as_bound: bool = True


@dataclass(frozen=True)
class WorkspacesConfig:
    # Each project's workspace is <root>/<project>; root must be a local, root-owned folder.
    root: Path = Path("/srv/rxslurm/workspaces")


@dataclass(frozen=True)
class VolumesConfig:
    # Each named volume is <root>/<volume>; root-owned like the workspaces root, on the filesystem
    # the nodes share (docs/volumes.md).
    root: Path = Path("/srv/rxslurm/volumes")


# What a project setting of 0 or "" means ([defaults]): a project's settings, the deployment's
# values. Left at 0 or "": no image, no GPU, Slurm's default partition, the partition's own time
# limit.
DEPLOYMENT_DEFAULTS = Settings(cpus=1, mem_mb=1000, gpu_driver="nvidia", idle_timeout_min=60)


@dataclass(frozen=True)
class ContainersConfig:
    # Per-container folders (overlay, job status and logs, instance records): <state_root>/<name>.
    # On a real cluster both this and workspaces.root must be on a filesystem the nodes share.
    state_root: Path = Path("/srv/rxslurm/containers")
    # Images pulled from docker://, oras:// or library:// references land here.
    image_dir: Path = Path("/srv/rxslurm/images")
    overlay_size_mb: int = 1024
    # Admin's mounts in every container, "src[:dest[:ro|rw]]".
    fixed_mounts: tuple[str, ...] = ()
    # Seconds the instance gets after SIGTERM before it is killed.
    stop_grace_s: int = 10
    # Seconds between reconciler passes.
    reconcile_interval: float = 5.0
    # Holder job logs (job-<id>.out) kept per container: the newest this many of its jobs.
    job_logs_kept: int = 10
    # Read-only overlay snapshots kept per container for batch steps: its newest this many.
    snapshots_kept: int = 3
    # A service's and a detached command's output file holds at most this many MiB; then it
    # becomes <file>.1 (an older .1 goes) and a new one starts: at most twice this on disk.
    output_cap_mb: int = 8


@dataclass(frozen=True)
class PullsConfig:
    """Image pulls by reference (docker://, oras://, library://): never as root, never unbounded."""

    # The dedicated system account pulls run as (uid below identity.min_uid, never a researcher
    # or the service account); empty: no pulls, projects must name an image file.
    user: str = "rxpull"
    # Root-owned; each pull works in a fresh folder below it that only the pull account may write.
    work_dir: Path = Path("/var/lib/rxslurm/pulls")
    timeout_s: int = 1800
    # Disk one pull may use: downloaded layers, the unpacked tree and the image together.
    max_mb: int = 20480
    # Pulls running at once; more wait for a slot.
    concurrency: int = 2
    # Distinct images one Linux user may have pulling or waiting to pull at once.
    max_per_user: int = 2
    # How long `enable` waits for a pull to finish before it answers "pulling".
    enable_wait_s: float = 3.0
    # Registries ("host:port") reached over plain HTTP, e.g. a test registry on loopback.
    plain_http: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuildsConfig:
    """Image builds (`rxctl image build`): Slurm jobs run as a project's runtime identity."""

    # Off until an admin turns builds on; a project's owner must also turn on its dev mode.
    enabled: bool = False
    # Where build jobs run and what they get, unless `rxctl image build` asks for other values;
    # "": the deployment's default partition ([defaults] partition, else Slurm's).
    partition: str = ""
    cpus: int = 2
    mem_mb: int = 4096
    time_limit_min: int = 60
    # The largest draft (Dockerfile or definition) a project may keep, in KiB.
    max_draft_kb: int = 64
    # The most one build context uploaded through the API (the SDK's add_local_file/dir) may
    # hold, in MiB: it is written into the project's workspace.
    max_context_mb: int = 2048


@dataclass(frozen=True)
class QuotasConfig:
    # "queue": a start that does not fit waits and starts by itself when leases free up;
    # "reject": it fails at once with the bottleneck in words.
    policy: str = "queue"


@dataclass(frozen=True)
class PlatformConfig:
    # "host:port" to serve the API to the research platform over TCP; empty: off.
    listen: str = ""
    # A root-owned file, mode 0600, holding the platform's bearer token.
    token_file: Path = Path(paths.PLATFORM_TOKEN)
    # TLS for the listener (PEM files; the key root-owned, mode 0600). Without both, only a
    # loopback address may be served: the token travels in every request.
    tls_cert: str = ""
    tls_key: str = ""


@dataclass(frozen=True)
class LimitsConfig:
    # Open connections one caller (a uid; a peer address over TCP) may hold on each socket.
    connections_per_uid: int = 128
    # Seconds an API connection may sit idle (before its first request, or between requests).
    keepalive_s: float = 15.0
    # How long an exec session waits for its container to wake when the client names no limit
    # of its own (clients older than `rxctl exec --timeout`). rxctl always names one: its
    # --timeout, or none (wait as long as the user does).
    wake_wait_s: float = 600.0


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    apptainer: ApptainerConfig = field(default_factory=ApptainerConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    workspaces: WorkspacesConfig = field(default_factory=WorkspacesConfig)
    volumes: VolumesConfig = field(default_factory=VolumesConfig)
    defaults: Settings = field(default_factory=lambda: DEPLOYMENT_DEFAULTS)
    platform: PlatformConfig = field(default_factory=PlatformConfig)
    containers: ContainersConfig = field(default_factory=ContainersConfig)
    quotas: QuotasConfig = field(default_factory=QuotasConfig)
    pulls: PullsConfig = field(default_factory=PullsConfig)
    builds: BuildsConfig = field(default_factory=BuildsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    source: Path | None = None


# Each section of rxd.toml with its defaults: every field of Config but where it was read from.
_SECTIONS: dict[str, Any] = {
    f.name: getattr(Config(), f.name) for f in fields(Config) if f.name != "source"
}


def config_path(flag: str | os.PathLike[str] | None) -> Path:
    """The config file to read: the flag, else $RXD_CONFIG, else the default."""
    if flag:
        return Path(flag)
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG_PATH


def load_config(path: Path, *, missing_ok: bool = False) -> Config:
    """Read and validate a config file; with missing_ok, a missing default file means defaults."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        if missing_ok:
            return Config()
        raise ConfigError(f"config file {path} not found") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    return parse_config(raw, source=path)


def parse_config(raw: dict[str, Any], *, source: Path | None = None) -> Config:
    where = str(source) if source else "config"
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown section [{unknown[0]}]; valid sections: {', '.join(_SECTIONS)}"
        )
    sections = {
        name: _parse_section(name, defaults, raw.get(name, {}), where)
        for name, defaults in _SECTIONS.items()
    }
    config = Config(**sections, source=source)
    _validate(config, where)
    return config


def _parse_section(name: str, defaults: Any, values: Any, where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: [{name}] must be a table")
    known = {f.name: f for f in fields(defaults)}
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if f"{name}.{key}" in RETIRED_KEYS:
            why = RETIRED_KEYS[f"{name}.{key}"]
            log.warning(f"{where}: {name}.{key} is no longer used ({why}); remove it")
            continue
        if key not in known:
            raise ConfigError(f"{where}: unknown key {name}.{key}; valid keys: {', '.join(known)}")
        default = getattr(defaults, key)
        changes[key] = _coerce(f"{name}.{key}", value, default, where)
    return replace(defaults, **changes)


def _coerce(key: str, value: Any, default: Any, where: str) -> Any:
    if isinstance(default, Path):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: {key} must be a non-empty path string")
        return Path(value)
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: {key} must be a list of strings")
        return tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: {key} must be a number")
        return float(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key} must be an integer")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string")
    return value


def _validate(config: Config, where: str) -> None:
    if config.identity.mode not in ("local", "platform"):
        raise ConfigError(f'{where}: identity.mode must be "local" or "platform"')
    if config.identity.min_uid < 1:
        raise ConfigError(f"{where}: identity.min_uid must be at least 1 (root is never bound)")
    if config.daemon.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"{where}: daemon.log_level must be debug, info, warning or error")
    if config.slurm.timeout <= 0:
        raise ConfigError(f"{where}: slurm.timeout must be positive")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", config.slurm.tag):
        raise ConfigError(f"{where}: slurm.tag must be 1-32 letters, digits, '.', '_' or '-'")
    if config.identity.code_ttl_min < 1:
        raise ConfigError(f"{where}: identity.code_ttl_min must be at least 1")
    for setting in SETTINGS:
        if setting.kind is int and getattr(config.defaults, setting.name) < 0:
            raise ConfigError(f"{where}: defaults.{setting.name} must not be negative")
    for name in PROJECT_ONLY:
        if getattr(config.defaults, name):
            raise ConfigError(
                f"{where}: defaults.{name} is a project's own setting (rxctl project set); "
                "it has no deployment default"
            )
    if config.defaults.gpu_driver not in (*GPU_DRIVERS, ""):
        raise ConfigError(f'{where}: defaults.gpu_driver must be "nvidia", "amd" or ""')
    if not config.workspaces.root.is_absolute():
        raise ConfigError(f"{where}: workspaces.root must be an absolute path")
    volumes_root = str(config.volumes.root)
    # A volume's bind is "<root>/<name>:<target>:<ro|rw>", joined with "," for Apptainer's -B.
    if not config.volumes.root.is_absolute() or any(c in volumes_root for c in ",:"):
        raise ConfigError(f"{where}: volumes.root must be an absolute path without ',' or ':'")
    containers = config.containers
    for key in ("state_root", "image_dir"):
        if not getattr(containers, key).is_absolute():
            raise ConfigError(f"{where}: containers.{key} must be an absolute path")
    if containers.overlay_size_mb < 64:
        raise ConfigError(
            f"{where}: containers.overlay_size_mb must be at least 64 (Apptainer's minimum)"
        )
    if containers.stop_grace_s < 0 or containers.reconcile_interval <= 0:
        raise ConfigError(
            f"{where}: containers.stop_grace_s and reconcile_interval must be positive"
        )
    if containers.job_logs_kept < 1:
        raise ConfigError(f"{where}: containers.job_logs_kept must be at least 1")
    if containers.snapshots_kept < 1:
        raise ConfigError(f"{where}: containers.snapshots_kept must be at least 1")
    if not 1 <= containers.output_cap_mb <= 1024 * 1024:
        raise ConfigError(f"{where}: containers.output_cap_mb must be from 1 to 1048576")
    for mount in containers.fixed_mounts:
        parts = mount.split(":")
        if (
            not mount.startswith("/")
            or "," in mount
            or len(parts) > 3
            or (len(parts) == 3 and parts[2] not in ("ro", "rw"))
        ):
            raise ConfigError(
                f"{where}: containers.fixed_mounts entry {mount!r} must be /src[:/dest[:ro|rw]] "
                "without commas"
            )
    apptainer = config.apptainer
    if apptainer.binary and not apptainer.binary.startswith("/"):
        raise ConfigError(f"{where}: apptainer.binary must be an absolute path (or empty: PATH)")
    if apptainer.home not in ("project", "host"):
        raise ConfigError(f'{where}: apptainer.home must be "project" or "host"')
    if config.quotas.policy not in ("queue", "reject"):
        raise ConfigError(f'{where}: quotas.policy must be "queue" or "reject"')
    _validate_pulls(config.pulls, where)
    _validate_builds(config.builds, where)
    listen = config.daemon.listen
    if listen and (":" not in listen or not listen.rsplit(":", 1)[1].isdigit()):
        raise ConfigError(f'{where}: daemon.listen must be "host:port"')
    if config.daemon.listen and config.daemon.listen == config.platform.listen:
        raise ConfigError(f"{where}: daemon.listen and platform.listen must differ")
    _validate_platform(config.platform, where)
    _validate_metrics(config, where)
    if config.runtime.service_account:
        _check_service_account(config, where)
    limits = config.limits
    if limits.connections_per_uid < 1 or limits.keepalive_s <= 0 or limits.wake_wait_s <= 0:
        raise ConfigError(
            f"{where}: limits.connections_per_uid, limits.keepalive_s and limits.wake_wait_s "
            "must be positive"
        )


def _validate_pulls(pulls: PullsConfig, where: str) -> None:
    if pulls.user and not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", pulls.user):
        raise ConfigError(f"{where}: pulls.user must be a Linux user name")
    if not pulls.work_dir.is_absolute():
        raise ConfigError(f"{where}: pulls.work_dir must be an absolute path")
    for key in ("timeout_s", "max_mb", "concurrency", "max_per_user"):
        if getattr(pulls, key) < 1:
            raise ConfigError(f"{where}: pulls.{key} must be at least 1")
    if pulls.enable_wait_s < 0:
        raise ConfigError(f"{where}: pulls.enable_wait_s must not be negative")
    for registry in pulls.plain_http:
        if not re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?", registry):
            raise ConfigError(f'{where}: pulls.plain_http entry {registry!r} must be "host[:port]"')


def _validate_builds(builds: BuildsConfig, where: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{0,64}", builds.partition):
        raise ConfigError(f"{where}: builds.partition may hold only letters, digits, '.', '_', '-'")
    for key in ("cpus", "mem_mb", "time_limit_min"):
        if getattr(builds, key) < 1:
            raise ConfigError(f"{where}: builds.{key} must be at least 1")
    if not 1 <= builds.max_draft_kb <= 256:
        raise ConfigError(f"{where}: builds.max_draft_kb must be 1-256")
    if builds.max_context_mb < 1:
        raise ConfigError(f"{where}: builds.max_context_mb must be at least 1")


def listen_address(listen: str) -> tuple[str, int]:
    """platform.listen as (host, port); IPv6 hosts may be bracketed."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def _validate_platform(platform: PlatformConfig, where: str) -> None:
    listen = platform.listen
    if not listen:
        return
    if ":" not in listen or not listen.rsplit(":", 1)[1].isdigit():
        raise ConfigError(f'{where}: platform.listen must be "host:port"')
    if bool(platform.tls_cert) != bool(platform.tls_key):
        raise ConfigError(f"{where}: platform.tls_cert and platform.tls_key go together")
    host, _ = listen_address(listen)
    if not platform.tls_cert and not is_loopback(host):
        raise ConfigError(
            f"{where}: platform.listen {listen!r} is not a loopback address; serving the "
            "platform token over plain HTTP there is refused (set platform.tls_cert and "
            "platform.tls_key, or listen on 127.0.0.1)"
        )


def _validate_metrics(config: Config, where: str) -> None:
    listen = config.daemon.metrics_listen
    if not listen:
        return
    if ":" not in listen or not listen.rsplit(":", 1)[1].isdigit():
        raise ConfigError(f'{where}: daemon.metrics_listen must be "host:port"')
    if listen in (config.daemon.listen, config.platform.listen):
        raise ConfigError(f"{where}: daemon.metrics_listen must differ from the other listeners")
    host, _ = listen_address(listen)
    if not config.daemon.metrics_remote and not is_loopback(host):
        raise ConfigError(
            f"{where}: daemon.metrics_listen {listen!r} is not a loopback address; serving "
            "metrics there is refused unless daemon.metrics_remote = true"
        )


def _check_service_account(config: Config, where: str) -> None:
    """The shared account projects may run as must pass every check a bound identity passes
    (not root, not a system account, a real login shell) and hold no power in rx-slurm itself:
    everyone who creates a project runs code as it."""
    name = config.runtime.service_account
    refused = f"{where}: runtime.service_account {name!r} is refused:"
    try:
        entry = linux_account_by_name(name, config.identity.min_uid)
    except ApiError as exc:
        raise ConfigError(f"{refused} {exc.message}") from None
    if name in config.slurm.hook_users:
        raise ConfigError(f"{refused} it is one of slurm.hook_users")
    try:
        admin_gid = grp.getgrnam(config.daemon.admin_group).gr_gid
    except KeyError:
        admin_gid = None
    if admin_gid is not None and admin_gid in os.getgrouplist(name, entry.pw_gid):
        raise ConfigError(f"{refused} it is in the admin group {config.daemon.admin_group}")
