"""The one timestamp format the ledger uses.

Timestamps are stored as ISO-8601 UTC text with microseconds and a "Z", e.g.
"2024-05-01T12:34:56.123456Z": fixed width, so text order is time order and an index on it
serves range queries; readable in `sqlite3`; understood by SQLite's own date functions. Code
handles timezone-aware `datetime`s; a naive one is refused rather than guessed at.
"""

from __future__ import annotations

from datetime import UTC, datetime

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_timestamp(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: the ledger stores UTC, give a timezone")
    return value.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def from_timestamp(text: str) -> datetime:
    return datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=UTC)
