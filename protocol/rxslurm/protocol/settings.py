"""The one table of a project's settings: what each is called, holds and means, and its option.

rxd validates settings against it (daemon/settings.py), rxctl builds the options of
`project create` and `project set` and the table of `project show` from it. A setting of 0 or ""
means "the deployment's default" (rxd.toml's [defaults]). Flags, units and time formats are
sbatch's.
"""

from __future__ import annotations

from dataclasses import dataclass

# The settings that are sbatch's own flags, each passed to the holder job as one argv item.
JOB_FLAGS = ("account", "qos", "constraint", "reservation")

# The drivers gpu_driver may name; "" is none.
GPU_DRIVERS = ("nvidia", "amd")


@dataclass(frozen=True)
class Setting:
    name: str  # as the API, the ledger and `project show` name it
    kind: type[int] | type[str]  # what the API takes: a whole number or a string
    flags: tuple[str, ...]  # rxctl's options; the last one is what `project show` names
    metavar: str
    help: str
    unit: str = ""  # of a number as stored and shown: "MB", "min"
    # How rxctl reads a value: "memory" and "time" take sbatch's forms (16G, 1-00:00:00).
    reads: str = ""
    # A string's longest value in UTF-8 bytes: keeps the ledger, events and the holder's argv small.
    max_bytes: int = 0

    @property
    def option(self) -> str:
        return self.flags[-1]


# In the order people think about them.
SETTINGS: tuple[Setting, ...] = (
    Setting(
        "image",
        str,
        ("--image",),
        "REF",
        "Image: an absolute path, or a reference (python:3.12-slim means docker://python:3.12-slim).",
        max_bytes=4096,
    ),
    Setting("cpus", int, ("--cpus",), "N", "CPUs (0: the deployment default)."),
    Setting(
        "mem_mb",
        int,
        ("--mem",),
        "SIZE",
        "Memory: 16G, 512M, or MB as a bare number (0: the deployment default).",
        unit="MB",
        reads="memory",
    ),
    Setting("gpus", int, ("--gpus",), "N", "GPUs (0: no GPU)."),
    Setting("gpu_type", str, ("--gpu-type",), "T", 'GPU type, e.g. a100 ("": any).', max_bytes=32),
    Setting(
        "gpu_driver",
        str,
        ("--gpu-driver",),
        "nvidia|amd|none",
        "GPU driver to bind into the container.",
        max_bytes=16,
    ),
    Setting(
        "partition",
        str,
        ("-p", "--partition"),
        "PARTITION",
        'Slurm partition ("": the deployment default).',
        max_bytes=64,
    ),
    Setting(
        "time_limit_min",
        int,
        ("-t", "--time", "--time-limit"),
        "TIME",
        "Job time limit: minutes, or [D-]HH:MM:SS as sbatch takes it (0: the default).",
        unit="min",
        reads="time",
    ),
    # sbatch's own flags, passed to the holder job as they are (Slurm checks what they name).
    Setting(
        "account",
        str,
        ("-A", "--account"),
        "ACCOUNT",
        'Slurm account the job is charged to ("": the user\'s default).',
        max_bytes=64,
    ),
    Setting("qos", str, ("-q", "--qos"), "QOS", 'Slurm QOS ("": the default).', max_bytes=64),
    Setting(
        "constraint",
        str,
        ("-C", "--constraint"),
        "LIST",
        'Node features the job needs, as sbatch\'s --constraint, e.g. a100&ib ("": none).',
        max_bytes=256,
    ),
    Setting(
        "reservation",
        str,
        ("--reservation",),
        "NAME",
        'Slurm reservation to run in ("": none).',
        max_bytes=64,
    ),
    Setting(
        "idle_timeout_min",
        int,
        ("--idle-timeout",),
        "TIME",
        "Stop after this long idle: minutes, or [D-]HH:MM:SS (0: never).",
        unit="min",
        reads="time",
    ),
    # A service (docs/services.md): what the holder runs in the instance once it is up, stored
    # as a JSON list of words (rxctl splits --service as a shell would; nothing ever joins it).
    Setting(
        "service",
        str,
        ("--service",),
        "CMD",
        'Command the container runs as a service once started, e.g. "python3 -m http.server '
        '8000" ("": none).',
        reads="words",
        max_bytes=4096,
    ),
    Setting("port", int, ("--port",), "N", "Port the service listens on (0: none)."),
    Setting(
        "restart",
        str,
        ("--restart",),
        "POLICY",
        "When the service fails: never, or on-failure[:N], started again up to N times "
        '(default 3, at most 100) after a growing pause ("": never).',
        max_bytes=16,
    ),
)
BY_NAME = {setting.name: setting for setting in SETTINGS}
NAMES = tuple(BY_NAME)
