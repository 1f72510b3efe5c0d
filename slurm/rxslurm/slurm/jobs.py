"""Slurm job records and the parser that makes them from squeue's text output.

The reconciler's one-call-for-everything poll reads a delimited text format (see
``queue_format``), about ten times cheaper than ``squeue --json`` on a busy queue. (sacct's text
format, read by ``history()``, is parsed in ``adapter``.)

Any Slurm user can put odd metadata on their own jobs (pending arrays, year-long time limits,
names and comments with any character), so the parser works record by record: a record it
cannot read is left out and listed in ``Listing.skipped``, never fatal to the answer. Only an
answer that is not there as a whole (cut short) raises ``ParseError``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

# Slurm's base job states (enum job_states).
BASE_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "SUSPENDED",
        "COMPLETED",
        "CANCELLED",
        "FAILED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "OUT_OF_MEMORY",
    }
)
# Base states of a job that has ended for good (it will not run again by itself).
TERMINAL_STATES = frozenset(BASE_STATES - {"PENDING", "RUNNING", "SUSPENDED"})
# Shown states of a job that still holds or waits for resources.
ACTIVE_STATES = frozenset(
    {"PENDING", "RUNNING", "SUSPENDED", "COMPLETING", "CONFIGURING", "RESIZING", "STAGE_OUT"}
    | {"REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "SPECIAL_EXIT", "STOPPED", "SIGNALING"}
)

# Slurm's "no value"/"infinite" sentinels for 16/32/64-bit fields.
_SENTINELS = {0xFFFE, 0xFFFF, 0xFFFFFFFE, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFE, 0xFFFFFFFFFFFFFFFF}


class ParseError(ValueError):
    """Output that does not have the expected shape; the caller must treat the answer as unknown."""


# A job id as Slurm prints it: ASCII digits only ("²".isdigit() is True, int("²") fails), and
# short enough to stay an SQLite integer.
JOB_ID = re.compile(r"[1-9][0-9]{0,17}")  # Slurm never gives a job id 0
# How much of a skipped record (and of why) a log line shows.
_SHOWN_CHARS = 160
# A record whose conversion raises one of these is skipped, whatever went wrong inside.
RECORD_ERRORS = (ValueError, TypeError, OverflowError, KeyError, AttributeError, RecursionError)


@dataclass(frozen=True)
class Skipped:
    """A record left out of an answer: why, its job id if readable, and its start (for logs)."""

    reason: str
    job_id: int | None = None
    record: str = ""

    @classmethod
    def of(cls, reason: str, record: str, job_id: str | int | None = None) -> Skipped:
        ident = "" if job_id is None else str(job_id)
        return cls(
            reason[:_SHOWN_CHARS],
            int(ident) if JOB_ID.fullmatch(ident) else None,
            record[:_SHOWN_CHARS],
        )


class Listing(dict[int, "JobInfo"]):
    """{job id: JobInfo}, plus the records that were left out (``skipped``).

    The id of a skipped record, when known, means "unknown this time", never "gone".
    """

    def __init__(self, jobs: Mapping[int, JobInfo] | None = None) -> None:
        super().__init__(jobs or {})
        self.skipped: list[Skipped] = []

    def unknown_ids(self) -> set[int]:
        return {s.job_id for s in self.skipped if s.job_id is not None}

    def drop_repeated(self, counts: Mapping[int, int]) -> None:
        """Ids seen on more than one record are unknown: which record is right cannot be told."""
        for job_id, count in counts.items():
            if count > 1:
                self.pop(job_id, None)
                self.skipped.append(Skipped(f"job {job_id} appears {count} times", job_id))


@dataclass(frozen=True)
class JobInfo:
    """One Slurm job as seen by squeue or sacct.

    ``state`` is what ``squeue -o %T`` shows: the base state, unless a flag such as COMPLETING
    wins (Slurm's own job_state_string rule), so it reads the same from every source.
    ``base_state`` is ``state`` when that is a base state, else "". Times are Unix seconds or None;
    for jobs that have not ended ``end_time`` is Slurm's expected end. ``time_limit_min`` is
    None for "unlimited". ``gres`` is the per-node GRES request without the ``gres:``/``gres/``
    prefix ("gpu:a100:2"), "" when none. ``gpus`` counts the GPUs allocated when known, else
    asked for. ``exit_code``/``signal`` come from the batch script's wait status.
    """

    job_id: int
    name: str
    user: str
    state: str
    reason: str = ""
    nodes: str = ""
    comment: str = ""
    partition: str = ""
    gres: str = ""
    start_time: int | None = None
    end_time: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    submit_time: int | None = None
    time_limit_min: int | None = None
    gpus: int = 0
    tres: str = ""
    account: str = ""
    base_state: str = ""
    flags: tuple[str, ...] = ()

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def is_finished(self) -> bool:
        return self.state in TERMINAL_STATES


# --------------------------------------------------------------------------- value helpers


def _number(value: str) -> int | None:
    """A decimal number as Slurm prints it; None for Slurm's "unset"/"infinite" sentinels."""
    number = int(value)
    return None if number in _SENTINELS else number


def state_from(value: str) -> tuple[str, str, tuple[str, ...]]:
    """(shown state, base state, flags) from the one word squeue and sacct print: a base state,
    or a flag (COMPLETING, ...) that Slurm shows instead of the base state."""
    name = value.upper()
    if not name:
        return "", "", ()
    if name in BASE_STATES:
        return name, name, ()
    return name, "", (name,)


def normalize_gres(value: str) -> str:
    """ "gres:gpu:a100:2" / "gres/gpu:a100:2" -> "gpu:a100:2"; "N/A", "(null)" -> ""."""
    value = (value or "").strip()
    if value.upper() in {"", "N/A", "(NULL)", "NONE"}:
        return ""
    items = []
    for item in value.split(","):
        item = item.strip()
        for prefix in ("gres:", "gres/"):
            if item.startswith(prefix):
                item = item[len(prefix) :]
        if item:
            items.append(item)
    return ",".join(items)


def gpus_in_gres(gres: str) -> int:
    """GPUs asked for by a per-node GRES string: "gpu:a100:2" -> 2, "gpu" -> 1."""
    total = 0
    for item in normalize_gres(gres).split(","):
        parts = item.split("(")[0].split(":")
        if parts[0] != "gpu":
            continue
        if len(parts) > 1 and re.fullmatch(r"[0-9]{1,9}", parts[-1]):
            total += int(parts[-1])
        else:
            total += 1
    return total


def gpus_in_tres(tres: str) -> int | None:
    """ "cpu=1,mem=1G,node=1,billing=1,gres/gpu=2" -> 2; None when the string names no GPUs."""
    match = re.search(r"(?:^|,)gres/gpu=([0-9]{1,9})(?![0-9])", tres or "")
    return int(match.group(1)) if match else None


def _split_wait_status(raw: int | None) -> tuple[int | None, int | None]:
    if raw is None:
        return None, None
    sig = raw & 0x7F
    return (raw >> 8) & 0xFF, (sig or None)


# --------------------------------------------------------------------------- squeue text

# ``squeue --Format`` fields that Slurm fills from closed vocabularies (ids, states, reason
# codes, user and partition names, node lists, GRES names, times, numbers): none can contain
# "|". JobID is the job id proper (unique for each array element, unlike %i's "123_4");
# exit_code is the raw wait status. The -O form (not -o) is used because only it has exit_code.
QUEUE_FIXED_FIELDS = (
    "JobID",
    "State",
    "Reason",
    "UserName",
    "Partition",
    "NodeList",
    "tres-per-node",
    "TimeLimit",
    "SubmitTime",
    "StartTime",
    "EndTime",
    "exit_code",
)
# The job name and comment are free text chosen by whoever submitted the job (Slurm 22.05
# accepts "|" and even newlines in both): they come last, each followed by a per-call random
# marker, so nothing in them can shift a field or forge a record. The marker stays secret only
# if it is not in squeue's argv (/proc/PID/cmdline is world-readable): the format goes in the
# environment (SQUEUE_FORMAT2), which only squeue's owner can read.
QUEUE_FREE_FIELDS = ("Name", "Comment")
# squeue prints times through strftime(SLURM_TIME_FORMAT): "%s" makes them Unix seconds, free
# of time-zone guessing.
QUEUE_ENV = {"SLURM_TIME_FORMAT": "%s"}
# squeue reads its --Format from here when the option is not given.
QUEUE_FORMAT_ENV = "SQUEUE_FORMAT2"
# Slurm's words for "no limit"; INVALID is what squeue prints for limits over a year.
_UNLIMITED = frozenset({"", "UNLIMITED", "INFINITE", "NOT_SET", "N/A", "NONE", "INVALID"})
_TIME_LIMIT = re.compile(r"(?:([0-9]{1,6})-)?([0-9]{1,9})(?::([0-9]{1,2}))?(?::([0-9]{1,2}))?")
# The shapes of the fixed fields; a record that does not fit is skipped, not guessed at.
_STATE_WORD = re.compile(r"[A-Z_]{1,32}")
_USER = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.@-]{0,63}\$?|[0-9]{1,10}")
_NUMBER = re.compile(r"-?[0-9]{1,20}")


def queue_marker(nonce: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{8,64}", nonce):
        raise ValueError("the nonce must be 8-64 lowercase hex digits")
    return f"|rx{nonce}|"


def queue_format(nonce: str) -> str:
    """The ``squeue --Format`` value for ``parse_queue_text``; ``nonce`` is fresh random hex.

    Each item is ``Field:0<suffix>``: width 0 prints the whole value unpadded, then the suffix.
    """
    marker = queue_marker(nonce)
    fixed = [f"{name}:0|" for name in QUEUE_FIXED_FIELDS]
    free = [f"{name}:0{marker}" for name in QUEUE_FREE_FIELDS]
    return ",".join(fixed + free)


def parse_time_limit(value: str) -> int | None:
    """squeue's %l ("UNLIMITED", "30:00", "1:00:00", "2-00:00:00") -> minutes, None if unlimited
    (squeue prints "INVALID" for limits over a year: effectively unlimited)."""
    value = value.strip()
    if value.upper() in _UNLIMITED:
        return None
    match = _TIME_LIMIT.fullmatch(value)
    if match is None:
        raise ParseError(f"time limit {value[:40]!r}")
    days, first, second, third = match.groups()
    numbers = [int(n) for n in (first, second, third) if n is not None]
    if days is not None:  # "days-hours[:minutes[:seconds]]"
        hours, minutes, seconds = (numbers + [0, 0])[:3]
    elif len(numbers) == 3:  # "hours:minutes:seconds"
        hours, minutes, seconds = numbers
    elif len(numbers) == 2:  # "minutes:seconds"
        hours, (minutes, seconds) = 0, numbers
    else:  # "minutes"
        hours, minutes, seconds = 0, numbers[0], 0
    return int(days or 0) * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def parse_text_time(value: str) -> int | None:
    """Unix seconds (SLURM_TIME_FORMAT=%s), or Slurm's default ISO local time, -> int."""
    value = value.strip()
    if not value or value.upper() in {"N/A", "UNKNOWN", "NONE", "(NULL)", "0"}:
        return None
    if re.fullmatch(r"[0-9]{1,18}", value):
        return int(value) or None
    try:
        return int(time.mktime(datetime.strptime(value, "%Y-%m-%dT%H:%M:%S").timetuple()))
    except (ValueError, OverflowError):
        raise ParseError(f"time {value[:40]!r}") from None


def _optional(value: str) -> str:
    return "" if value in {"N/A", "(null)"} else value


def _fixed_fields(record: str, marker: str, name_prefix: str) -> tuple[list[str], str, str] | None:
    """Split one record into its fixed fields, name and comment; None when its name shows it
    is not one of the jobs asked for. Raises ParseError for a record of the wrong shape."""
    # The marker is secret, so it is in no name or comment: exactly one is left in a record
    # (the last was eaten as the terminator), between the name and the comment.
    head, *comment = record.split(marker)
    if len(comment) != 1:
        raise ParseError("a broken name/comment")
    fixed = head.split("|", len(QUEUE_FIXED_FIELDS))
    if len(fixed) != len(QUEUE_FIXED_FIELDS) + 1:
        raise ParseError("too few fields")
    name = fixed.pop()
    if not name.startswith(name_prefix):
        return None
    return fixed, name, comment[0]


def _queue_record(fixed: list[str], name: str, comment: str) -> JobInfo:
    (
        job_id_s,
        state_s,
        reason,
        user,
        partition,
        nodes,
        gres,
        limit,
        submit,
        start,
        end,
        raw_exit,
    ) = fixed
    if not JOB_ID.fullmatch(job_id_s):
        raise ParseError(f"job id {job_id_s[:40]!r}")
    if not _STATE_WORD.fullmatch(state_s):
        raise ParseError(f"state {state_s[:40]!r}")
    if not _USER.fullmatch(user):
        raise ParseError(f"user {user[:40]!r}")
    if not _NUMBER.fullmatch(raw_exit):
        raise ParseError(f"exit code {raw_exit[:40]!r}")
    shown, base, flags = state_from(state_s)
    gres = normalize_gres(gres)
    exit_code, sig = None, None
    if base in TERMINAL_STATES or shown == "COMPLETING":
        exit_code, sig = _split_wait_status(_number(raw_exit))
    return JobInfo(
        job_id=int(job_id_s),
        name=name,
        user=user,
        state=shown,
        reason=reason,
        nodes=_optional(nodes),
        comment=_optional(comment),
        partition=partition,
        gres=gres,
        start_time=parse_text_time(start),
        end_time=parse_text_time(end),
        exit_code=exit_code,
        signal=sig,
        submit_time=parse_text_time(submit),
        time_limit_min=parse_time_limit(limit),
        gpus=gpus_in_gres(gres),
        base_state=base,
        flags=flags,
    )


def parse_queue_text(text: str, nonce: str, name_prefix: str = "") -> Listing:
    """Output of ``squeue -h -O queue_format(nonce)`` -> {job id: JobInfo}.

    Only jobs whose name starts with ``name_prefix`` are read further than their name; a
    record that does not fit is skipped (``Listing.skipped``). ParseError only for an answer
    that is cut short.
    """
    marker = queue_marker(nonce)
    terminator = marker + "\n"
    if text and not text.endswith(terminator):
        raise ParseError("squeue output does not end with a complete record")
    found = Listing()
    counts: dict[int, int] = {}
    for record in text.split(terminator)[:-1] if text else ():
        try:
            parts = _fixed_fields(record, marker, name_prefix)
            if parts is None:
                continue
            info = _queue_record(*parts)
        except RECORD_ERRORS as exc:
            job_id = record.split("|", 1)[0]
            found.skipped.append(Skipped.of(f"squeue record: {exc}", record, job_id))
            continue
        counts[info.job_id] = counts.get(info.job_id, 0) + 1
        found[info.job_id] = info
    found.drop_repeated(counts)
    return found


def ids_argument(job_ids: Iterable[int]) -> str:
    """Job ids for ``-j``: validated ints, sorted, comma-separated."""
    ids = sorted({int(j) for j in job_ids})
    if any(j <= 0 for j in ids):
        raise ValueError("job ids are positive integers")
    return ",".join(str(j) for j in ids)
