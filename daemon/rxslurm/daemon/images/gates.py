"""Who may build images where: the deployment's switch and a project's dev mode.

The role (``build``: editors and above, who may write the workspace) is checked by
``projects.service.authorize``; these are the two other gates, each refused with what to do.
"""

from __future__ import annotations

from typing import Any

from rxslurm.daemon.config import Config
from rxslurm.daemon.errors import Conflict, Forbidden


def require_builds_enabled(config: Config) -> None:
    if not config.builds.enabled:
        raise Forbidden(
            "image builds are turned off on this deployment (an admin turns them on with "
            "[builds] enabled = true in rxd.toml)",
            code="builds_disabled",
        )


def require_dev_mode(project: dict[str, Any]) -> None:
    if not project["dev_mode"]:
        name = project["name"]
        raise Conflict(
            f"project {name} is not in dev mode; its owner turns it on with: "
            f"rxctl project set --project {name} --dev-mode on",
            code="not_dev_mode",
        )
