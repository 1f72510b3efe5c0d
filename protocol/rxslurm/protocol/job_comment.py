"""How a container's Slurm job is marked: its name and its comment.

A container's job is named `rx-<project>` (the job hooks and the reconciler's queue listing look
only at names with this prefix) and carries the comment `<tag>:container=<id>`, where the tag is
the deployment's `[slurm] tag`. Any user can submit a job with any name and comment, so both are
claims: the reconciler checks them against the container (daemon/containers/job_claims.py).
"""

from __future__ import annotations

import re

JOB_PREFIX = "rx-"
_FIELD = ":container="
# ASCII digits only ("²".isdigit() is True), short enough for an SQLite integer.
_ID = re.compile(r"[0-9]{1,18}")


def job_name(project: str) -> str:
    """The name of a project's container and of its Slurm job."""
    return f"{JOB_PREFIX}{project}"


def is_container_job(name: str) -> bool:
    """Whether a job's name is one rx-slurm gives (a cheap first look; proves nothing)."""
    return name.startswith(JOB_PREFIX)


# An image build's job (and its folder) is named `rxbuild-<project>-<build id>`: never the
# containers' prefix, so the container reconciler never takes one for a holder; its comment is
# `<tag>:build=<id>`.
BUILD_JOB_PREFIX = "rxbuild-"


def build_job_name(project: str, build_id: int) -> str:
    return f"{BUILD_JOB_PREFIX}{project}-{int(build_id)}"


def is_build_of(name: str, project: str) -> bool:
    """Whether `name` is the job (or folder) name of one of `project`'s builds."""
    prefix = f"{BUILD_JOB_PREFIX}{project}-"
    return name.startswith(prefix) and _ID.fullmatch(name[len(prefix) :]) is not None


def format_comment(tag: str, container_id: int) -> str:
    return f"{tag}{_FIELD}{container_id}"


def parse_comment(tag: str, comment: str | None) -> int | None:
    """The container a job's comment names, if this deployment's tag marks it."""
    prefix = f"{tag}{_FIELD}"
    if comment and comment.startswith(prefix):
        tail = comment[len(prefix) :]
        return int(tail) if _ID.fullmatch(tail) else None
    return None


def is_tagged(tag: str, comment: str) -> bool:
    """Whether a comment carries this deployment's tag, whatever follows it."""
    return comment.startswith(f"{tag}:")
