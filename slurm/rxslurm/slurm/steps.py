"""The steps running in jobs, from `squeue --steps`: which exec steps are still there; and how
ended steps ended, from `sacct`.

A detached command or an exec session is one step of its container's job, named when it starts
(`srun --job-name=rx-exec-...`); squeue lists a step while it runs and forgets it once it ends.
Lines are read one at a time: an unreadable one is skipped, never the end of the answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# What squeue prints per step: the id, its start, and the name last (a name is the one field a
# step's user chooses; whatever it holds stays in the last field).
STEP_FORMAT = "%i|%S|%j"
_STEP_ID = re.compile(r"([1-9][0-9]{0,17})\.([0-9]{1,10})", re.ASCII)


@dataclass(frozen=True)
class StepInfo:
    job_id: int
    step_id: str  # "J.S", as scancel takes it
    name: str
    start: int | None  # Unix seconds (squeue run with SLURM_TIME_FORMAT=%s); None: unknown


def parse_step_lines(text: str) -> tuple[list[StepInfo], int]:
    """The steps in ``squeue --steps --noheader --format=%i|%S|%j`` output, and how many lines
    were skipped. Batch and extern steps (not numbered) are not exec steps and are left out."""
    steps: list[StepInfo] = []
    skipped = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        step_id, sep1, rest = line.strip().partition("|")
        start, sep2, name = rest.partition("|")
        match = _STEP_ID.fullmatch(step_id)
        if not (sep1 and sep2):
            skipped += 1
            continue
        if match is None:
            if not re.fullmatch(r"[1-9][0-9]{0,17}\.(batch|extern|interactive)", step_id):
                skipped += 1
            continue
        when = int(start) if re.fullmatch(r"[0-9]{1,12}", start, re.ASCII) else None
        steps.append(StepInfo(int(match.group(1)), step_id, name, when))
    return steps, skipped


# What sacct is asked for per step; the name last, as above.
SACCT_STEP_FIELDS = ("JobID", "ExitCode", "JobName")
_EXIT = re.compile(r"([0-9]{1,3}):([0-9]{1,3})", re.ASCII)


def parse_step_exits(text: str, job_id: int) -> dict[str, int]:
    """{step name: exit status} of the job's numbered steps in ``sacct --noheader --parsable2
    --format=JobID,ExitCode,JobName`` output; a step killed by signal N is 128+N, as a shell
    says. Unreadable lines and other jobs' steps are left out."""
    exits: dict[str, int] = {}
    for line in text.splitlines():
        step_id, sep1, rest = line.strip().partition("|")
        code, sep2, name = rest.partition("|")
        match = _STEP_ID.fullmatch(step_id)
        status = _EXIT.fullmatch(code)
        if not (sep1 and sep2 and match and status) or int(match.group(1)) != job_id:
            continue
        exit_code, signal = int(status.group(1)), int(status.group(2))
        exits[name] = 128 + signal if signal else exit_code
    return exits
