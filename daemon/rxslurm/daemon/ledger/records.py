"""Ledger rows as small frozen records, for rows that cross module boundaries.

sqlite-utils gives rows as `dict[str, Any]`; a record says which columns there are and of what
type. `from_row` and `to_row` convert by type hint: `datetime` fields to and from the ledger's
timestamp text (see `timestamps`), `dict` fields to and from compact, key-sorted JSON text.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields
from datetime import datetime
from typing import Any, ClassVar, Self

from rxslurm.daemon.ledger.timestamps import from_timestamp, to_timestamp


def to_json(value: Mapping[str, Any]) -> str:
    return json.dumps(dict(value), sort_keys=True, separators=(",", ":"))


def from_json(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {text[:80]!r}")
    return value


# Field name -> "timestamp" or "json", per record class (read once from its type hints).
_CONVERSIONS: dict[type, dict[str, str]] = {}


def _conversions(cls: type) -> dict[str, str]:
    known = _CONVERSIONS.get(cls)
    if known is not None:
        return known
    kinds = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = set(typing.get_args(hint)) if isinstance(hint, types.UnionType) else {hint}
        args.discard(type(None))
        if args == {datetime}:
            kinds[name] = "timestamp"
        elif len(args) == 1 and typing.get_origin(next(iter(args))) is dict:
            kinds[name] = "json"
    _CONVERSIONS[cls] = kinds
    return kinds


class Record:
    """Base of the records: `from_row` and `to_row` convert timestamps and JSON by type hint."""

    table: ClassVar[str]
    # Every record is a dataclass; declared so that `fields()` accepts the base class.
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        return cls(**_converted(cls, row, read=True))

    def to_row(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return _converted(type(self), values, read=False)


def _converted(cls: type[Record], values: Mapping[str, Any], *, read: bool) -> dict[str, Any]:
    """Each field of `cls` from `values`, its timestamps and JSON read from the ledger's text
    (`read`) or written to it."""
    kinds = _conversions(cls)
    converted = {}
    for f in fields(cls):
        value = values[f.name]
        kind = kinds.get(f.name)
        if kind == "timestamp" and value is not None:
            value = from_timestamp(value) if read else to_timestamp(value)
        elif kind == "json":
            value = from_json(value) if read else to_json(value)
        converted[f.name] = value
    return converted


@dataclass(frozen=True, kw_only=True)
class Binding(Record):
    """The one Linux identity of a platform user (and the one platform user of a uid)."""

    table: ClassVar[str] = "bindings"
    platform_user_id: str
    uid: int
    username: str
    bound_at: datetime
    bound_by: str


@dataclass(frozen=True, kw_only=True)
class Event(Record):
    table: ClassVar[str] = "events"
    id: int | None = None
    at: datetime
    actor: str  # a platform user id, or "rxd"
    actor_uid: int | None = None
    origin: str  # "socket", "tcp", "reconciler", "hook", "cli-admin", ...
    action: str
    target_type: str | None = None
    target_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
