"""A project's build drafts: a Dockerfile or an Apptainer definition, the build context (a folder
of the workspace) and its exclusions, kept as data in the ledger.

A draft is never a file rxd reads from a user's folder: rxctl reads the user's file and sends its
text. What is stored is checked here (kind, size, printable text, a relative context inside the
workspace, exclusion patterns); whether it builds is ``validate``'s answer, stored drafts may
have problems (a draft is work in progress), a build refuses them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from rxslurm.daemon.errors import BadRequest, Conflict, NotFound
from rxslurm.daemon.identity.actors import Actor, record_actor_event
from rxslurm.daemon.images import dockerfile
from rxslurm.daemon.images.definition import Problem, base_of, check_definition
from rxslurm.daemon.ledger.store import LedgerDatabase
from rxslurm.daemon.ledger.timestamps import to_timestamp, utcnow
from rxslurm.daemon.text_checks import bad_character, check_text, utf8_size

KINDS = ("dockerfile", "definition")
# Draft and image names: short, plain, usable as a file name and a CLI word.
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
MAX_CONTEXT_BYTES = 1024
MAX_IGNORE_BYTES = 65536
MAX_PATTERNS = 1000


@dataclass(frozen=True)
class Checked:
    """A draft's text as a definition, or why not: problems (errors) and notes (changes)."""

    definition: str | None
    problems: list[Problem]
    notes: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": [p.to_dict() for p in self.problems],
            "notes": [p.to_dict() for p in self.notes],
            "base": base_of(self.definition) if self.definition else "",
        }


def check_name(label: str, value: Any) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise BadRequest(
            f"{label} must be 1-63 characters: lowercase letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return value


def check_multiline(label: str, value: Any, max_bytes: int) -> str:
    """Text of many lines: tabs and newlines allowed, no other control or bidi character."""
    if not isinstance(value, str):
        raise BadRequest(f"{label} must be a string")
    if utf8_size(value) > max_bytes:
        raise BadRequest(f"{label} is too long (at most {max_bytes // 1024} KiB)")
    text = value.replace("\r\n", "\n")
    for number, line in enumerate(text.split("\n"), start=1):
        char = bad_character(line.replace("\t", " "))
        if char is not None:
            raise BadRequest(
                f"{label}, line {number}: a control or bidi character (U+{ord(char):04X})"
            )
    return text


def check_context(value: Any) -> str:
    """The build context: a folder of the workspace, relative, without '..' ("." the whole)."""
    text = check_text("context", value, MAX_CONTEXT_BYTES, allow_empty=False)
    path = PurePosixPath(text)
    if path.is_absolute():
        raise BadRequest("context must be a folder of the workspace, relative to it (e.g. src)")
    if any(part == ".." for part in path.parts):
        raise BadRequest("context must not contain '..': it stays inside the workspace")
    return str(path)


def check_ignore(value: Any) -> str:
    """``.dockerignore`` lines: patterns relative to the context, '#' comments, '!' exceptions."""
    text = check_multiline("ignore", value, MAX_IGNORE_BYTES)
    patterns = [line for line in text.split("\n") if line.strip() and not line.startswith("#")]
    if len(patterns) > MAX_PATTERNS:
        raise BadRequest(f"ignore has more than {MAX_PATTERNS} patterns")
    for pattern in patterns:
        bare = pattern.strip().lstrip("!").strip()
        if not bare:
            raise BadRequest("ignore: '!' must be followed by a pattern")
        if any(part == ".." for part in PurePosixPath(bare.lstrip("/")).parts):
            raise BadRequest(f"ignore: {bare[:60]!r} reaches outside the context with '..'")
    return text


def check(kind: str, text: str) -> Checked:
    """Whether the draft builds: its definition (converted from a Dockerfile), or problems with
    line numbers of the draft's own text."""
    if kind == "dockerfile":
        try:
            converted = dockerfile.convert(text)
        except dockerfile.ConversionError as exc:
            return Checked(None, exc.problems, [])
        return Checked(converted.definition, [], converted.notes)
    problems = check_definition(text)
    return Checked(None if problems else text, problems, [])


def parse_body(body: dict[str, Any], max_bytes: int, *, partial: bool) -> dict[str, Any]:
    """The draft's fields from a request body; ``partial``: only those given (an edit)."""
    values: dict[str, Any] = {}
    if "kind" in body or not partial:
        kind = body.get("kind")
        if kind not in KINDS:
            raise BadRequest("kind must be 'dockerfile' or 'definition'")
        values["kind"] = kind
    if "text" in body or not partial:
        values["text"] = check_multiline("text", body.get("text"), max_bytes)
        if not values["text"].strip():
            raise BadRequest("text is empty")
    if "context" in body:
        values["context"] = check_context(body["context"])
    if "ignore" in body:
        values["ignore"] = check_ignore(body["ignore"])
    if partial and not values:
        raise BadRequest("nothing to change: give kind, text, context or ignore")
    return values


def draft_row(db: LedgerDatabase, project_id: int, name: str) -> dict[str, Any]:
    rows = list(
        db.table("image_drafts").rows_where("project_id = ? AND name = ?", [project_id, name])
    )
    if not rows:
        raise NotFound(f"no draft named {name!r} in this project")
    return rows[0]


def view(row: dict[str, Any], *, with_text: bool = True) -> dict[str, Any]:
    out = {
        "name": row["name"],
        "kind": row["kind"],
        "context": row["context"],
        "created_at": row["created_at"],
        "created_by": row["created_by"],
        "updated_at": row["updated_at"],
        "updated_by": row["updated_by"],
        "size": utf8_size(row["text"]),
    }
    if with_text:
        out["text"] = row["text"]
        out["ignore"] = row["ignore"]
    return out


def list_drafts(db: LedgerDatabase, project_id: int) -> list[dict[str, Any]]:
    rows = db.table("image_drafts").rows_where("project_id = ?", [project_id], order_by="name")
    return [view(row, with_text=False) for row in rows]


def create(
    db: LedgerDatabase, project: dict[str, Any], actor: Actor, name: Any, values: dict[str, Any]
) -> dict[str, Any]:
    """A new draft in the caller's transaction, with its audit event."""
    name = check_name("draft name", name)
    exists = db.table("image_drafts").count_where(
        "project_id = ? AND name = ?", [project["id"], name]
    )
    if exists:
        raise Conflict(f"project {project['name']} already has a draft named {name!r}")
    now = to_timestamp(utcnow())
    db.table("image_drafts").insert(
        {
            "project_id": project["id"],
            "name": name,
            "context": ".",
            "ignore": "",
            **values,
            "created_at": now,
            "created_by": actor.name,
            "updated_at": now,
            "updated_by": actor.name,
        }
    )
    _event(db, actor, "image.draft-created", project, name, values)
    return draft_row(db, project["id"], name)


def edit(
    db: LedgerDatabase, project: dict[str, Any], actor: Actor, name: str, values: dict[str, Any]
) -> dict[str, Any]:
    row = draft_row(db, project["id"], name)
    now = to_timestamp(utcnow())
    db.table("image_drafts").update(
        row["id"], {**values, "updated_at": now, "updated_by": actor.name}
    )
    _event(db, actor, "image.draft-edited", project, name, values)
    return draft_row(db, project["id"], name)


def delete(db: LedgerDatabase, project: dict[str, Any], actor: Actor, name: str) -> None:
    row = draft_row(db, project["id"], name)
    db.table("image_drafts").delete(row["id"])
    _event(db, actor, "image.draft-deleted", project, name, {})


def _event(
    db: LedgerDatabase,
    actor: Actor,
    action: str,
    project: dict[str, Any],
    draft: str,
    values: dict[str, Any],
) -> None:
    # The text itself is not copied into the event: its size says enough, the draft keeps it.
    detail: dict[str, Any] = {"draft": draft}
    for key in ("kind", "context"):
        if key in values:
            detail[key] = values[key]
    if "text" in values:
        detail["text_bytes"] = utf8_size(values["text"])
    if "ignore" in values:
        detail["ignore_bytes"] = utf8_size(values["ignore"])
    record_actor_event(db, actor, action, "project", project["name"], detail)
