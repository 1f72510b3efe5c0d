"""A project's labels: ``keep=true`` (garbage collection leaves the project's data alone) and
free-form ``key=value`` pairs, shown in status and filtered on in ``rxctl list``.

A key is a lowercase letter, then up to 62 lowercase letters, digits, ``.``, ``_`` or ``-``; a
value is up to 255 printable characters without spaces (possibly empty); a project holds at most
MAX_LABELS. Bad input is refused whole: nothing is changed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from rxslurm.daemon.errors import BadRequest
from rxslurm.daemon.ledger.store import LedgerDatabase

MAX_LABELS = 32
KEEP = "keep"
_KEY = re.compile(r"[a-z][a-z0-9._-]{0,62}", re.ASCII)
_VALUE = re.compile(r"[!-~]{0,255}", re.ASCII)


def check_key(key: object) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise BadRequest(
            f"label name {key!r} must be a lowercase letter, then up to 62 lowercase letters, "
            "digits, '.', '_' or '-'"
        )
    return key


def check_value(key: str, value: object) -> str:
    if not isinstance(value, str) or not _VALUE.fullmatch(value):
        raise BadRequest(
            f"label {key}'s value must be up to 255 printable characters without spaces"
        )
    if key == KEEP and value not in ("true", "false"):
        raise BadRequest("label keep is true or false")
    return value


def parse_pair(text: str) -> tuple[str, str]:
    """``key=value`` as typed (``rxctl list --label``)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise BadRequest(f"a label is key=value, not {text!r}")
    key = check_key(key)
    return key, check_value(key, value)


def labels_of(db: LedgerDatabase, project_id: int) -> dict[str, str]:
    rows = db.execute(
        "SELECT key, value FROM project_labels WHERE project_id = ? ORDER BY key", [project_id]
    ).fetchall()
    return {k: v for k, v in rows}


def kept_project_ids(db: LedgerDatabase) -> set[int]:
    """The projects labelled keep=true."""
    rows = db.execute(
        "SELECT project_id FROM project_labels WHERE key = ? AND value = 'true'", [KEEP]
    ).fetchall()
    return {r[0] for r in rows}


def apply(
    db: LedgerDatabase,
    project_id: int,
    set_: Mapping[str, object],
    remove: Iterable[object],
    *,
    at: str,
    by: str,
) -> dict[str, str]:
    """Set and remove labels in the caller's transaction; the labels after. Checked first."""
    pairs = {check_key(k): "" for k in set_}
    for key, value in set_.items():
        pairs[key] = check_value(key, value)
    gone = {check_key(k) for k in remove}
    if gone & pairs.keys():
        raise BadRequest("a label cannot be set and removed at once")
    current = labels_of(db, project_id)
    after = ({**current, **pairs}).keys() - gone
    if len(after) > MAX_LABELS:
        raise BadRequest(f"a project holds at most {MAX_LABELS} labels")
    for key in gone:
        db.execute("DELETE FROM project_labels WHERE project_id = ? AND key = ?", [project_id, key])
    for key, value in pairs.items():
        db.execute(
            "INSERT INTO project_labels (project_id, key, value, set_at, set_by) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (project_id, key) DO UPDATE SET "
            "value = excluded.value, set_at = excluded.set_at, set_by = excluded.set_by",
            [project_id, key, value, at, by],
        )
    return labels_of(db, project_id)
