"""A container's states, as rxd stores them and its answers name them.

Only daemon/containers/states.change_state moves a container between them.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    DISABLED = "disabled"
    PULLING = "pulling"  # enabled; its image is being pulled (no job, no lease yet)
    # The job is PENDING in Slurm, or there is no job yet: the container is queued on a quota
    # (over_quota in its status) and gets a job when a lease frees up.
    WAITING = "waiting_for_resources"
    STARTING = "starting"  # submitting, or the job runs but the instance is not ready yet
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"  # sleeping: no job, overlay and workspace kept
    ERROR = "error"


# A job belongs to the container in these states, or may soon (a quota's queue); the reconciler
# watches them.
ACTIVE = frozenset({State.WAITING, State.STARTING, State.RUNNING, State.STOPPING})
# No job: nothing to watch (a pull in progress is watched by rxd's pull workers, not Slurm).
RESTING = frozenset({State.DISABLED, State.PULLING, State.STOPPED, State.ERROR})
