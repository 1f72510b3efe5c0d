"""The Slurm command-line adapter: every call rxd makes to Slurm goes through ``SlurmCli``.

Each method runs one Slurm command (an argv list, never a shell) with a time-out. Commands that
create or change a user's job run as that user (``runas``); read-only ones run as the daemon.
Failures raise ``SlurmUnavailable`` (no answer: the job's state is UNKNOWN, never "gone") or
``SlurmRejected`` (Slurm said no, with its message); see ``errors``.

Things Slurm 22.05 does that shape this module:
- ``squeue --json`` ignores ``-j``/``-u``/``-t`` and always dumps every job, and costs about
  ten times the text format; so ``queue()`` uses a delimited text format.
- ``sacct --json`` reports exit code 0 ("SUCCESS") for jobs that exited non-zero (the text
  field ExitCode is right), so ``history()`` reads sacct's parsable text format.
- ``scancel`` of an unknown or finished job exits 0 without a word.
- ``scontrol`` has no ``--json``; ``sinfo --json`` has nodes but no partition flags, so
  ``partitions()`` reads ``sinfo --Node`` text.
- ``squeue --array`` prints a pending array once per task, all under the array's job id; so
  ``queue()`` does not ask for it (without it every job id is on one line).

Every local user can read every process's argv (``/proc/PID/cmdline``), so nothing that has to
stay secret goes there: the squeue format with its per-call marker goes in the environment.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from . import errors, jobs, runas
from .errors import SlurmUnavailable
from .jobs import JobInfo, Listing, ParseError
from .runas import RunAs
from .step_signal import SIGNAL_STEP_TIMEOUT_S, new_signal_step_name
from .steps import (
    SACCT_STEP_FIELDS,
    STEP_FORMAT,
    StepInfo,
    parse_step_exits,
    parse_step_lines,
)
from .usage import SSTAT_FIELDS, JobUsage, parse_alloc_gpus, parse_sstat

Runner = Callable[..., subprocess.CompletedProcess[str]]

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_GRES = re.compile(r"[a-z][a-z0-9_]*(?::[A-Za-z0-9_.-]+)?(?::\d+)?")
# Slurm's names of accounts, QOS and reservations; a constraint is node features joined by
# sbatch's operators. Each reaches sbatch as one argv item; these keep it a name, not an option.
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_CONSTRAINT = re.compile(r"[A-Za-z0-9_.:&|,*()\[\]-]+")
_SIGNAL = re.compile(r"(?:SIG)?[A-Z][A-Z0-9+]*|\d{1,2}")


@dataclass(frozen=True)
class JobSpec:
    """What to ask sbatch for. Every field becomes one ``--option=value`` argv item.

    The job always gets one node and one task (a holder process); ``cpus`` is per task.
    ``gres`` is a per-node GRES request ("gpu:a100:1", "gpu:1") or None. ``time_limit_min``
    None means the partition's default. ``output`` may use sbatch's %j-style patterns; stderr
    goes to the same file. ``singleton`` adds ``--dependency=singleton``: at most one job of
    this name and user runs at a time. ``hold`` submits the job held.
    """

    name: str
    comment: str = ""
    partition: str | None = None
    cpus: int = 1
    mem_mb: int | None = None
    gres: str | None = None
    time_limit_min: int | None = None
    workdir: str | None = None
    output: str | None = None
    singleton: bool = False
    hold: bool = False
    export: str = "NONE"
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    reservation: str | None = None
    # False: --no-requeue, so a node failure ends the job instead of Slurm restarting it.
    requeue: bool = True

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a job needs a name")
        for label in ("name", "comment", "partition", "workdir", "output", "export"):
            value = getattr(self, label)
            if value is not None and _CONTROL_CHARS.search(value):
                raise ValueError(f"JobSpec.{label} contains a control character: {value!r}")
        if self.cpus < 1:
            raise ValueError("cpus must be at least 1")
        if self.mem_mb is not None and self.mem_mb < 1:
            raise ValueError("mem_mb must be at least 1")
        if self.time_limit_min is not None and self.time_limit_min < 1:
            raise ValueError("time_limit_min must be at least 1")
        if self.gres is not None and not all(_GRES.fullmatch(g) for g in self.gres.split(",")):
            raise ValueError(f"invalid GRES {self.gres!r} (expected e.g. gpu:a100:1 or gpu:1)")
        if self.workdir is not None and not os.path.isabs(self.workdir):
            raise ValueError("workdir must be an absolute path")
        for label in ("account", "qos", "reservation", "constraint"):
            value = getattr(self, label)
            rule = _CONSTRAINT if label == "constraint" else _NAME
            if value is not None and not rule.fullmatch(value):
                raise ValueError(f"invalid {label} {value!r}")

    def sbatch_options(self) -> list[str]:
        opts = [f"--job-name={self.name}", "--nodes=1", "--ntasks=1"]
        opts.append(f"--cpus-per-task={self.cpus}")
        if self.comment:
            opts.append(f"--comment={self.comment}")
        if self.partition:
            opts.append(f"--partition={self.partition}")
        for label in ("account", "qos", "constraint", "reservation"):
            value = getattr(self, label)
            if value:
                opts.append(f"--{label}={value}")
        if self.mem_mb is not None:
            opts.append(f"--mem={self.mem_mb}M")
        if self.gres:
            opts.append(f"--gres={self.gres}")
        if self.time_limit_min is not None:
            opts.append(f"--time={self.time_limit_min}")
        if self.workdir:
            opts.append(f"--chdir={self.workdir}")
        if self.output:
            opts.append(f"--output={self.output}")
        if self.singleton:
            opts.append("--dependency=singleton")
        if self.hold:
            opts.append("--hold")
        if not self.requeue:
            opts.append("--no-requeue")
        opts.append(f"--export={self.export}")
        return opts


@dataclass(frozen=True)
class ControllerStatus:
    role: str  # "primary", "backup", "backup1", ...
    host: str
    up: bool


@dataclass(frozen=True)
class PingResult:
    """``scontrol ping`` plus the client's version. True when a controller answered."""

    up: bool
    controllers: tuple[ControllerStatus, ...] = ()
    version: str | None = None
    message: str = ""

    def __bool__(self) -> bool:
        return self.up


@dataclass(frozen=True)
class PartitionInfo:
    """A partition as ``sinfo`` shows it. Per-node maxima are over the partition's nodes;
    ``gpu_types`` lists the GPU types found, those on a node with the most GPUs first."""

    name: str
    default: bool
    state: str  # "up", "down", "drain", "inact"
    nodes: tuple[str, ...]
    max_time_min: int | None  # None: unlimited
    total_cpus: int
    max_cpus_per_node: int
    max_mem_mb_per_node: int
    max_gpus_per_node: int
    gpu_types: tuple[str, ...] = ()
    node_states: Mapping[str, str] = field(default_factory=dict)

    @property
    def gpu_type(self) -> str | None:
        return self.gpu_types[0] if self.gpu_types else None


# sacct fields read by history(); parsed by parse_sacct_text(). Only fields Slurm fills from
# closed vocabularies, none of which can hold "|" or a newline: the job's name and comment (free
# text, any character) are left out, so no job can forge another's record. The delimiter
# would have to be a secret otherwise, and sacct takes it only in argv, which every user can read.
SACCT_FIELDS = (
    "JobIDRaw",
    "State",
    "Reason",
    "User",
    "Account",
    "Partition",
    "NodeList",
    "AllocTRES",
    "ReqTRES",
    "Timelimit",
    "Submit",
    "Start",
    "End",
    "ExitCode",
)
SINFO_FORMAT = "%N|%P|%a|%l|%c|%m|%G|%T"


class SlurmCli:
    """Slurm through its commands. ``bin_dir``: where sbatch & co. live (default: PATH)."""

    def __init__(
        self,
        bin_dir: str | None = None,
        timeout: float = 30.0,
        runner: Runner = runas.run,
    ) -> None:
        self.bin_dir = bin_dir
        self.timeout = timeout
        self._runner = runner

    # ------------------------------------------------------------------ plumbing

    def _binary(self, name: str) -> str:
        search = self.bin_dir if self.bin_dir is not None else os.environ.get("PATH", "")
        found = shutil.which(name, path=search or runas.SAFE_PATH)
        if found is None:
            where = self.bin_dir or "PATH"
            raise SlurmUnavailable(f"{name} not found in {where}", argv=[name])
        return os.path.abspath(found)

    def _call(
        self,
        argv: Sequence[str],
        *,
        as_user: RunAs | None = None,
        input: str | None = None,  # noqa: A002
        env_extra: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess[str]:
        argv = [self._binary(argv[0]), *argv[1:]]
        try:
            proc = self._runner(
                argv,
                as_user=as_user,
                input=input,
                timeout=timeout or self.timeout,
                env_extra=env_extra,
            )
        except subprocess.TimeoutExpired as exc:
            raise errors.from_timeout(exc) from None
        except OSError as exc:
            raise errors.from_oserror(argv, exc) from None
        if check and proc.returncode != 0:
            raise errors.classify(argv, proc.returncode, proc.stdout, proc.stderr)
        return proc

    @staticmethod
    def _unparseable(argv: Sequence[str], exc: ParseError) -> SlurmUnavailable:
        # Output we cannot read is no answer: the caller must not conclude anything from it.
        return SlurmUnavailable(f"could not read the output of {argv[0]}: {exc}", argv=argv)

    # ------------------------------------------------------------------ jobs

    def submit(self, script: str, spec: JobSpec, as_user: RunAs) -> int:
        """Submit ``script`` (sent on sbatch's stdin) as ``as_user``; returns the job id."""
        if not isinstance(as_user, RunAs):
            raise TypeError("submit() needs the RunAs of the job's owner")
        if "\0" in script:
            raise ValueError("the batch script contains a NUL byte")
        argv = ["sbatch", "--parsable", *spec.sbatch_options()]
        proc = self._call(argv, as_user=as_user, input=script)
        lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
        match = re.fullmatch(r"(\d+)(?:;\S+)?", lines[-1]) if lines else None
        if match is None:
            # sbatch exited 0, so the job may exist: this is "unknown", not "rejected".
            raise SlurmUnavailable(
                f"sbatch succeeded but printed no job id: {proc.stdout!r}",
                argv=argv,
                stderr=proc.stderr,
            )
        return int(match.group(1))

    def queue(
        self,
        name_prefix: str | None = None,
        user: str | None = None,
        all_states: bool = True,
    ) -> Listing:
        """Every job slurmctld knows (one squeue call), optionally only names starting with
        ``name_prefix`` and/or jobs of ``user``. With ``all_states`` (default), jobs that ended
        within MinJobAge are included with their final state. Records that cannot be read are
        left out and listed in ``skipped``; their ids are unknown, not gone."""
        nonce = secrets.token_hex(16)
        argv = ["squeue", "--noheader", "--all"]
        if all_states:
            argv.append("--states=all")
        if user is not None:
            if not re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*\$?", user):
                raise ValueError(f"invalid user name {user!r}")
            argv.append(f"--user={user}")
        # The marker must stay secret to keep names and comments from forging records: not in
        # argv (world-readable), but in squeue's environment (readable by its owner only).
        env = {**jobs.QUEUE_ENV, jobs.QUEUE_FORMAT_ENV: jobs.queue_format(nonce)}
        proc = self._call(argv, env_extra=env)
        try:
            return jobs.parse_queue_text(proc.stdout, nonce, name_prefix or "")
        except ParseError as exc:
            raise self._unparseable(argv, exc) from None

    def history(self, job_ids: Iterable[int]) -> Listing:
        """Final records of jobs from the accounting database (one sacct call). Ids sacct does
        not know are missing from the result. Raises ``AccountingDisabled`` without slurmdbd.
        Records carry no name or comment (see ``SACCT_FIELDS``)."""
        ids = jobs.ids_argument(job_ids)
        if not ids:
            return Listing()
        argv = [
            "sacct",
            "--noheader",
            "--parsable2",
            "--allocations",
            "--allusers",
            f"--jobs={ids}",
            f"--format={','.join(SACCT_FIELDS)}",
        ]
        proc = self._call(argv, env_extra=jobs.QUEUE_ENV)
        found = parse_sacct_text(proc.stdout)
        if any(s.job_id is None for s in found.skipped):
            # Only Slurm writes these fields: a line without a readable id is Slurm's own
            # trouble, and any asked-for job may be hidden in it.
            raise self._unparseable(argv, ParseError(found.skipped[0].reason))
        # Array tasks and heterogeneous components come back under ids not asked for.
        asked = {int(i) for i in ids.split(",")}
        for job_id in set(found) - asked:
            del found[job_id]
        return found

    def cancel(
        self,
        job_id: int,
        as_user: RunAs | None = None,
        signal: str | int | None = None,
        full: bool = False,
    ) -> None:
        """``scancel`` the job, as ``as_user`` when given. With ``signal`` the job's steps get
        that signal instead of being cancelled (``full``: the batch shell and every step too).
        Cancelling a job that already ended is not an error (Slurm says nothing then)."""
        argv = ["scancel"]
        if signal is not None:
            sig = str(signal).upper()
            if not _SIGNAL.fullmatch(sig):
                raise ValueError(f"invalid signal {signal!r}")
            argv.append(f"--signal={sig}")
        if full:
            argv.append("--full")
        argv.append(str(int(job_id)))
        proc = self._call(argv, as_user=as_user, check=False)
        if proc.returncode == 0:
            return
        if re.search(r"already completing or completed", proc.stderr, re.IGNORECASE):
            return
        raise errors.classify(argv, proc.returncode, proc.stdout, proc.stderr)

    def step_argv(
        self,
        job_id: int,
        argv: Sequence[str],
        *,
        tty: bool,
        step_name: str,
        portable: bool = False,
    ) -> list[str]:
        """The ``srun`` that runs ``argv`` as a step inside the running job ``job_id``, beside
        the job's own processes (``--overlap``). Every word of ``argv`` stays one argv item.

        ``portable``: the bare name ``srun``, for a caller who starts the step on their own host
        (found there on their PATH); otherwise the srun rxd runs, looked up as every command.
        """
        srun = "srun" if portable else self._binary("srun")
        step = [srun, f"--jobid={int(job_id)}", "--overlap", "--ntasks=1", "--quiet"]
        # Ctrl-C never reaches srun: rxd (or rxctl) gives SIGINT to the step's processes itself,
        # found by this name (step_signal.py). srun's own SIGINT handling would end the step:
        # with --quit-on-interrupt at once, otherwise (--disable-status) right after passing it on.
        step.append("--disable-status")
        step.append(f"--job-name={step_name}")
        if tty:
            step.append("--pty")
        return [*step, "--", *argv]

    def signal_inside(
        self, job_id: int, argv: Sequence[str], *, as_user: RunAs, env: Mapping[str, str]
    ) -> bool:
        """Run ``argv`` (a container runtime's signal command and the signal's name) as a short
        step of ``job_id``, as ``as_user``: the signal reaches the command inside the container
        and no other process (step_signal.py says why a step's own signal cannot). True when
        the command was found and signalled."""
        step = self.step_argv(job_id, argv, tty=False, step_name=new_signal_step_name())
        proc = self._call(
            step, as_user=as_user, env_extra=env, check=False, timeout=SIGNAL_STEP_TIMEOUT_S
        )
        return proc.returncode == 0

    def steps(self, job_ids: Iterable[int]) -> list[StepInfo]:
        """The numbered steps (exec steps, detached commands) running in ``job_ids``: one
        ``squeue --steps`` call. Unreadable lines are left out."""
        ids = jobs.ids_argument(job_ids)
        if not ids:
            return []
        argv = ["squeue", "--steps", f"--jobs={ids}", "--noheader", f"--format={STEP_FORMAT}"]
        proc = self._call(argv, env_extra=jobs.QUEUE_ENV)
        found, _ = parse_step_lines(proc.stdout)
        return found

    def step_exits(self, job_id: int) -> dict[str, int]:
        """How the job's ended steps ended, by step name (one ``sacct`` call)."""
        argv = [
            "sacct",
            "--noheader",
            "--parsable2",
            "--allusers",
            f"--jobs={int(job_id)}",
            f"--format={','.join(SACCT_STEP_FIELDS)}",
        ]
        proc = self._call(argv, env_extra=jobs.QUEUE_ENV)
        return parse_step_exits(proc.stdout, int(job_id))

    def signal_step(self, step_id: str, signal: str, as_user: RunAs | None = None) -> None:
        """``scancel --signal`` one step ("J.S"): slurmstepd signals the step's processes. A step
        that already ended is not an error."""
        if not re.fullmatch(r"[1-9][0-9]{0,17}\.[0-9]{1,10}", step_id):
            raise ValueError(f"invalid step id {step_id!r}")
        sig = str(signal).upper()
        if not _SIGNAL.fullmatch(sig):
            raise ValueError(f"invalid signal {signal!r}")
        argv = ["scancel", "--quiet", f"--signal={sig}", step_id]
        proc = self._call(argv, as_user=as_user, check=False)
        if proc.returncode != 0 and not re.search(
            r"already completing or completed|invalid job id", proc.stderr, re.IGNORECASE
        ):
            raise errors.classify(argv, proc.returncode, proc.stdout, proc.stderr)

    def usage(self, job_id: int, timeout: float = 5.0) -> JobUsage:
        """What the running job uses now: CPU time and memory per step (one ``sstat``), and the
        GPUs it holds (one ``squeue``); each call within ``timeout`` seconds (a view that shows
        it must not wait long)."""
        job = str(int(job_id))
        argv = [
            "sstat",
            "--noheader",
            "--parsable2",
            "--allsteps",
            f"--jobs={job}",
            f"--format={','.join(SSTAT_FIELDS)}",
        ]
        proc = self._call(argv, env_extra=jobs.QUEUE_ENV, timeout=timeout)
        found = parse_sstat(proc.stdout, int(job_id))
        alloc = self._call(
            ["squeue", "--noheader", f"--jobs={job}", "--Format=tres-alloc:500"],
            env_extra=jobs.QUEUE_ENV,
            check=False,
            timeout=timeout,
        )
        if alloc.returncode == 0:
            found.gpus = parse_alloc_gpus(alloc.stdout)
        return found

    # ------------------------------------------------------------------ cluster

    def ping(self) -> PingResult:
        """Whether a controller answers; never raises for an unreachable Slurm."""
        version = None
        try:
            out = self._call(["scontrol", "--version"]).stdout.split()
            version = out[-1] if out else None
        except SlurmUnavailable:
            pass
        try:
            proc = self._call(["scontrol", "ping"], check=False)
        except SlurmUnavailable as exc:
            return PingResult(False, version=version, message=exc.message)
        controllers = tuple(
            ControllerStatus(m.group(1), m.group(2), m.group(3).upper() == "UP")
            for m in re.finditer(
                r"Slurmctld\(([\w-]+)\) at (\S+) is (UP|DOWN)", proc.stdout, re.IGNORECASE
            )
        )
        up = any(c.up for c in controllers)
        message = (proc.stdout.strip() or errors.slurm_message(proc.stderr)).strip()
        return PingResult(up, controllers, version, message)

    def partitions(self) -> dict[str, PartitionInfo]:
        """Partitions with their nodes and per-node CPU, memory and GPU maxima (one sinfo call)."""
        argv = ["sinfo", "--noheader", "--all", "--Node", f"--format={SINFO_FORMAT}"]
        proc = self._call(argv)
        try:
            return parse_sinfo_nodes(proc.stdout)
        except ParseError as exc:
            raise self._unparseable(argv, exc) from None


# ---------------------------------------------------------------------- text parsers


def parse_sacct_text(text: str) -> Listing:
    """``sacct -X -n -P --format=SACCT_FIELDS`` (one record per line) -> JobInfo.

    A line that does not fit is skipped (``Listing.skipped``). Ids repeat when slurmctld's
    state was reset: the latest submission is the live one.
    """
    found = Listing()
    for line in text.split("\n"):
        if not line.strip():
            continue
        values = line.split("|")
        try:
            if len(values) != len(SACCT_FIELDS):
                raise ParseError(f"{len(values)} fields")
            info = _job_from_sacct_row(dict(zip(SACCT_FIELDS, values, strict=True)))
        except jobs.RECORD_ERRORS as exc:
            found.skipped.append(jobs.Skipped.of(f"sacct record: {exc}", line, values[0]))
            continue
        known = found.get(info.job_id)
        if known is None or (info.submit_time or 0) >= (known.submit_time or 0):
            found[info.job_id] = info
    return found


def _job_from_sacct_row(row: Mapping[str, str]) -> JobInfo:
    if not jobs.JOB_ID.fullmatch(row["JobIDRaw"]):
        raise ParseError(f"job id {row['JobIDRaw'][:40]!r}")
    # "CANCELLED by 2002" -> "CANCELLED"
    shown, base, flags = jobs.state_from(row["State"].split(" ", 1)[0])
    exit_code, sig = None, None
    exit_match = re.fullmatch(r"([0-9]{1,3}):([0-9]{1,3})", row["ExitCode"].strip())
    if exit_match and base not in {"PENDING", "RUNNING", "SUSPENDED"}:
        exit_code, sig = int(exit_match.group(1)), int(exit_match.group(2)) or None
    tres = row["AllocTRES"] or row["ReqTRES"]
    gpus = jobs.gpus_in_tres(tres)
    nodes = row["NodeList"]
    limit = row["Timelimit"]
    return JobInfo(
        job_id=int(row["JobIDRaw"]),
        name="",
        user=row["User"],
        state=shown,
        reason=row["Reason"],
        nodes="" if nodes in {"None assigned", "(null)"} else nodes,
        partition=row["Partition"],
        gres=_gres_from_tres_text(tres),
        start_time=jobs.parse_text_time(row["Start"]),
        end_time=jobs.parse_text_time(row["End"]),
        exit_code=exit_code,
        signal=sig,
        submit_time=jobs.parse_text_time(row["Submit"]),
        time_limit_min=None if limit == "Partition_Limit" else jobs.parse_time_limit(limit),
        gpus=gpus or 0,
        tres=tres,
        account=row["Account"],
        base_state=base,
        flags=flags,
    )


def _gres_from_tres_text(tres: str) -> str:
    """ "billing=1,cpu=1,gres/gpu:a100=2,gres/gpu=2" -> "gpu:a100:2" (typed beats plain)."""
    typed: list[str] = []
    plain: list[str] = []
    for item in tres.split(","):
        match = re.fullmatch(r"gres/([^=]+)=([0-9]{1,9})", item.strip())
        if match and int(match.group(2)):
            name = match.group(1)
            (typed if ":" in name else plain).append(f"{name}:{match.group(2)}")
    return ",".join(typed or plain)


def _node_gpus(gres: str) -> dict[str, int]:
    """ "gpu:a100:2(S:0-1),gpu:v100:1" -> {"a100": 2, "v100": 1}; untyped GPUs under ""."""
    counts: dict[str, int] = {}
    for item in re.split(r",(?![^(]*\))", gres):
        parts = item.split("(")[0].strip().split(":")
        if parts[0] != "gpu":
            continue
        counted = len(parts) > 1 and re.fullmatch(r"[0-9]{1,9}", parts[-1]) is not None
        count = int(parts[-1]) if counted else 1
        kind = parts[1] if len(parts) == 3 or (len(parts) == 2 and not counted) else ""
        counts[kind] = counts.get(kind, 0) + count
    return counts


def parse_sinfo_nodes(text: str) -> dict[str, PartitionInfo]:
    """``sinfo -N -h -a -o SINFO_FORMAT`` (one line per node and partition) -> partitions."""
    rows: dict[str, list[tuple[str, str, str, int, int, dict[str, int], str]]] = {}
    defaults: set[str] = set()
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != 8:
            raise ParseError(f"sinfo line {line!r}")
        node, part, avail, limit, cpus, mem, gres, state = fields
        if part.endswith("*"):
            part = part[:-1]
            defaults.add(part)
        try:
            cpu_count, mem_mb = int(cpus.rstrip("+")), int(mem.rstrip("+"))
        except ValueError:
            raise ParseError(f"sinfo line {line!r}") from None
        rows.setdefault(part, []).append(
            (node, avail, limit, cpu_count, mem_mb, _node_gpus(gres), state)
        )
    result = {}
    for part, nodes in rows.items():
        gpu_totals = [sum(n[5].values()) for n in nodes]
        max_gpus = max(gpu_totals, default=0)
        types: list[str] = []
        by_gpus = sorted(zip(gpu_totals, range(len(nodes)), strict=True), reverse=True)
        for _, index in by_gpus:
            types.extend(t for t in nodes[index][5] if t and t not in types)
        limit = nodes[0][2]
        result[part] = PartitionInfo(
            name=part,
            default=part in defaults,
            state=nodes[0][1],
            nodes=tuple(n[0] for n in nodes),
            max_time_min=jobs.parse_time_limit(limit),
            total_cpus=sum(n[3] for n in nodes),
            max_cpus_per_node=max(n[3] for n in nodes),
            max_mem_mb_per_node=max(n[4] for n in nodes),
            max_gpus_per_node=max_gpus,
            gpu_types=tuple(types),
            node_states={n[0]: n[6] for n in nodes},
        )
    return result
