"""Project roles and what each may do: the one table every API route checks.

docs/roles.md shows this table; tests/test_roles_doc.py keeps the two the same.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    OWNER = "owner"
    MANAGER = "manager"
    EDITOR = "editor"
    VIEWER = "viewer"


class Action(StrEnum):
    VIEW = "view"  # status and configuration
    LOGS = "logs"  # the container's output (its holder jobs')
    START = "start"
    STOP = "stop"
    SET_IMAGE = "set-image"  # make a built image the project image
    EXEC = "exec"  # run commands in the running container
    BUILD = "build"  # image drafts and builds: they read and run the workspace's files
    RUN = "run"  # batch steps in the project's environment (its image, newest overlay snapshot)
    EXPORT = "export"  # an archive of the persistent layer (and workspace) to take away
    IMPORT = "import"  # replace the persistent layer by an archive's (the old one kept)
    ENABLE = "enable"
    DISABLE = "disable"
    EDIT_SETTINGS = "edit-settings"  # image reference and resources
    EDIT_ENV = "edit-env"  # environment variables and secrets (the same roles as exec)
    RETRY = "retry"  # after an error
    SET_RUN_AS = "set-run-as"  # bound Linux identity or service account
    MANAGE_MEMBERS = "manage-members"
    DELETE_PROJECT = "delete-project"


_VIEWERS = frozenset(Role)
_MANAGERS = frozenset({Role.OWNER, Role.MANAGER})
# Those with write access to the workspace.
_EDITORS = frozenset({Role.OWNER, Role.MANAGER, Role.EDITOR})
_OWNERS = frozenset({Role.OWNER})

ALLOWED: dict[Action, frozenset[Role]] = {
    Action.VIEW: _VIEWERS,
    Action.LOGS: _VIEWERS,
    Action.START: _MANAGERS,
    Action.STOP: _MANAGERS,
    Action.SET_IMAGE: _MANAGERS,
    Action.EXEC: _MANAGERS,
    Action.BUILD: _EDITORS,
    Action.RUN: _EDITORS,
    Action.EXPORT: _MANAGERS,
    Action.IMPORT: _OWNERS,
    Action.ENABLE: _OWNERS,
    Action.DISABLE: _OWNERS,
    Action.EDIT_SETTINGS: _OWNERS,
    Action.EDIT_ENV: _MANAGERS,
    Action.RETRY: _OWNERS,
    Action.SET_RUN_AS: _OWNERS,
    Action.MANAGE_MEMBERS: _OWNERS,
    Action.DELETE_PROJECT: _OWNERS,
}


def may(role: Role | None, action: Action) -> bool:
    """Whether a member with `role` (None: not a member) may do `action` in a project."""
    return role is not None and role in ALLOWED[action]


def parse_role(text: str) -> Role:
    try:
        return Role(text)
    except ValueError:
        valid = ", ".join(r.value for r in Role)
        raise ValueError(f"unknown role {text!r}; valid roles: {valid}") from None


def matrix_markdown() -> str:
    """The role table as Markdown, for docs/roles.md."""
    roles = list(Role)
    lines = [
        "| action | " + " | ".join(r.value for r in roles) + " |",
        "|---|" + "---|" * len(roles),
    ]
    for action in Action:
        marks = " | ".join("yes" if may(r, action) else "—" for r in roles)
        lines.append(f"| {action.value} | {marks} |")
    return "\n".join(lines) + "\n"
