"""Pulled images by content digest: which digest each reference resolved to (the ledger's
``image_digests``), and which cached file a project's image is on this host now.

Two references to the same content (``python:3.12-slim`` and ``python@sha256:…``, or two tags of
one manifest) share one file, ``sha256-<hex>.sif``. A reference keeps the digest it resolved to
until someone refreshes it (`rxctl image pull --refresh`): a tag that moves upstream changes
nothing here until then, so a restart never brings in an image nobody asked for.
"""

from __future__ import annotations

from pathlib import Path

from rxslurm.daemon.images import cache as image_cache
from rxslurm.daemon.ledger.store import LedgerDatabase
from rxslurm.daemon.ledger.timestamps import to_timestamp, utcnow
from rxslurm.protocol.image_ref import BadReference, ImageRef, is_path, parse_reference


def recorded_digest(db: LedgerDatabase, ref: ImageRef) -> str | None:
    """The digest ``ref`` resolved to when last pulled or refreshed (its own, if it names one)."""
    if ref.digest:
        return ref.digest
    row = db.execute("SELECT digest FROM image_digests WHERE key = ?", [ref.key]).fetchone()
    return str(row[0]) if row else None


def record_digest(db: LedgerDatabase, ref: ImageRef, digest: str, by_uid: int | None) -> None:
    """Remember that ``ref`` resolved to ``digest`` (replacing what it resolved to before)."""
    db.execute(
        "INSERT INTO image_digests (key, digest, resolved_at, resolved_by) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(key) DO UPDATE SET digest = excluded.digest, "
        "resolved_at = excluded.resolved_at, resolved_by = excluded.resolved_by",
        [ref.key, digest, to_timestamp(utcnow()), by_uid],
    )


def cached_for(db: LedgerDatabase, image_dir: Path, ref: ImageRef) -> Path | None:
    """The cached file of a reference: its digest's, else one an older rxd pulled under the
    reference's own name; None when it has to be pulled. UnsafeImageDir for a file that is not
    provably root's (see cache.py)."""
    if ref.resolvable:
        digest = recorded_digest(db, ref)
        if digest is not None:
            found = image_cache.cached_file(image_dir, image_cache.digest_file_name(digest))
            if found is not None:
                return found
    return image_cache.cached_image(image_dir, str(ref))


def local_image(db: LedgerDatabase, image_dir: Path, image: str) -> str | None:
    """The file a job runs for a project's image: a path as written, a reference's cached pull;
    None when the reference still has to be pulled. ValueError for an image that is neither."""
    if is_path(image):
        return image
    try:
        ref = parse_reference(image)
    except BadReference as exc:
        raise ValueError(str(exc)) from None
    found = cached_for(db, image_dir, ref)
    return str(found) if found is not None else None
