"""What a project may be called: it becomes a folder, a job name and a quota's subject."""

from __future__ import annotations

import re
from typing import Any

from rxslurm.daemon.errors import BadRequest

# Matched in full: with `re.match` and `$`, "alpha\n" passed (and made folders and jobs fail).
PROJECT_NAME = re.compile(r"[a-z](?:[a-z0-9-]{0,19}[a-z0-9])?")


def check_project_name(name: Any) -> str:
    if not isinstance(name, str) or not PROJECT_NAME.fullmatch(name):
        raise BadRequest(
            "project name must be 1-21 characters: lowercase letters, digits and '-', "
            "starting with a letter and not ending with '-'"
        )
    return name
