"""Slurm's job-state vocabulary as rx-slurm reads it: which ends are failures, which ends mean
"start a new job" (the container was still wanted), and pending reasons in a researcher's words.

The reconciler decides what a container does; this module only says what Slurm's words mean, so
that no Slurm state name or reason code is spelled outside slurm/.
"""

from __future__ import annotations

# Base job states of a job that ended under a container: it failed (the container goes to error).
FAILED_STATES = frozenset({"FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"})
# Ended by a limit or by the scheduler, not by anyone's choice: a wanted container starts again.
REWAKE_STATES = frozenset({"TIMEOUT", "PREEMPTED", "DEADLINE"})
# Ours to cancel: a job still in the queue.
PENDING = "PENDING"
RUNNING = "RUNNING"
# Allocated, nodes being readied (the prolog runs).
CONFIGURING = "CONFIGURING"
# Ending: the epilog runs; the job is not gone yet.
COMPLETING = "COMPLETING"
CANCELLED = "CANCELLED"
# What a job that neither squeue nor sacct knows is recorded as.
UNKNOWN = "UNKNOWN"

PENDING_REASONS = {
    "Resources": "waiting for free resources on the partition",
    "Priority": "other jobs have priority",
    "Dependency": "waiting for the previous job of this container to end",
    "QOSMaxGRESPerUser": "your QOS limit on GPUs is reached",
    "QOSMaxCpuPerUserLimit": "your QOS limit on CPUs is reached",
    "QOSMaxMemoryPerUser": "your QOS limit on memory is reached",
    "QOSMaxJobsPerUserLimit": "your QOS limit on running jobs is reached",
    "QOSGrpGRES": "the QOS's GPU limit is reached",
    "AssocGrpGRES": "your account's GPU limit is reached",
    "ReqNodeNotAvail": "the nodes it needs are not available",
    "PartitionDown": "the partition is down",
    "BeginTime": "its start time is in the future",
    "JobHeldUser": "the job is held",
    "JobHeldAdmin": "an admin holds the job",
    "None": "about to be scheduled",
}


def pending_reason(reason: str) -> str:
    """Why a job is pending, in words, with Slurm's own code in brackets."""
    words = PENDING_REASONS.get(reason)
    if words is None and reason.startswith(("QOS", "Assoc")):
        words = "a Slurm limit is reached"
    if reason == "None":
        # Slurm's word for "no reason yet": quoting it reads as a bug ("Slurm: None").
        return str(words)
    return f"{words} (Slurm: {reason})" if words else f"Slurm: {reason or 'pending'}"
