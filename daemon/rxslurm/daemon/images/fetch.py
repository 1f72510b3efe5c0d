"""One image for the pull pool: the cached file of a reference, or resolve it to a content
digest and pull exactly that digest (as the pull account, see pull.py), then record the digest.

A reference that names a tag is resolved once, when first pulled, and again only on a refresh;
the pull then asks for ``name@digest``, so a tag that moves during the pull cannot change what
is installed, and two references to one manifest share one file.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from rxslurm.daemon.images import cache as image_cache
from rxslurm.daemon.images import digests
from rxslurm.daemon.images import pull as image_pull
from rxslurm.daemon.images import resolve as image_resolve
from rxslurm.daemon.ledger.store import Ledger
from rxslurm.protocol.image_ref import BadReference, parse_reference


@dataclass(frozen=True)
class Fetched:
    """The image a reference gave: its file, the bytes pulled (None: it was cached already) and
    the content digest it resolved to (None: a reference rx-slurm does not resolve)."""

    image: Path
    size: int | None
    digest: str | None


def fetch(
    settings: image_pull.PullSettings,
    ledger: Ledger,
    uri: str,
    *,
    refresh: bool = False,
    requester_uid: int | None = None,
    cancel: threading.Event | None = None,
) -> Fetched:
    """``uri``'s image in ``image_dir``; with ``refresh``, resolved again at its registry first.
    PullError (ResolveError) with the reason when it cannot be had."""
    try:
        ref = parse_reference(uri)
    except BadReference as exc:
        raise image_pull.PullError(f"cannot pull {uri[:200]!r}: {exc}") from None
    recorded = None
    if not refresh:
        with ledger.read() as db:
            found = digests.cached_for(db, settings.image_dir, ref)
            recorded = digests.recorded_digest(db, ref) if ref.resolvable else None
        if found is not None:
            return Fetched(found, None, recorded)
    if not ref.resolvable:
        image, pulled = image_pull.pull(settings, str(ref), cancel)
        return Fetched(image, pulled, None)
    # The digest already recorded (its file was removed) is pulled again as it was: only a
    # refresh follows the tag.
    digest = recorded or image_resolve.resolve(settings, ref, cancel)
    name = image_cache.digest_file_name(digest)
    found = image_cache.cached_file(settings.image_dir, name)
    size: int | None = None
    if found is None:
        found, size = image_pull.pull(settings, str(ref.pinned(digest)), cancel, name=name)
    with ledger.transaction() as db:
        digests.record_digest(db, ref, digest, requester_uid)
    return Fetched(found, size, digest)
