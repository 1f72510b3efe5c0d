"""Which image file a container's next job runs: the project's image as it is now.

The project's image may change while its container is enabled (`rxctl image set`, `rxctl project
set --image`, a refreshed tag): every start looks again, so the next job runs the new image on the
same overlay. A path is used as written; a reference needs its pull on this host (by content
digest, images/digests.py). A user's start of a resting container whose new reference is not
pulled yet moves it to PULLING first (no lease, no job, as enable does); a start the reconciler
makes on its own (a re-wake after a time limit) never waits for a pull and keeps the file the
container ran last, and `status` keeps saying that new settings are pending.
"""

from __future__ import annotations

from typing import Any

from rxslurm.daemon.config import Config
from rxslurm.daemon.containers.states import InvalidTransition, State, change_state
from rxslurm.daemon.errors import BadRequest, Conflict
from rxslurm.daemon.images import cache as image_cache
from rxslurm.daemon.images import digests
from rxslurm.daemon.ledger.store import Ledger, LedgerDatabase
from rxslurm.daemon.settings import Settings, effective


def project_image(config: Config, project: dict[str, Any]) -> str:
    """The project's image with the deployment's default filled in."""
    return effective(Settings.from_row(project), config.defaults).image


def local_image(db: LedgerDatabase, config: Config, image: str) -> str | None:
    """The file a job runs for ``image`` (see digests.local_image); BadRequest for an image that
    is no path nor reference, Conflict for a cache that is not provably root's."""
    try:
        return digests.local_image(db, config.containers.image_dir, image)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    except (image_cache.UnsafeImageDir, OSError) as exc:
        raise Conflict(f"cannot use the image cache: {exc}") from None


def current_file(ledger: Ledger, config: Config, project: dict[str, Any]) -> str | None:
    """The file the project's next start would run, if it is on this host; None otherwise (or
    when it cannot be told: a views' question never fails for it)."""
    try:
        with ledger.read() as db:
            return local_image(db, config, project_image(config, project))
    except (BadRequest, Conflict):
        return None


def image_moved(started_with: dict[str, Any], now: str | None) -> bool:
    """Whether the file a job was started with is not what a start would run now (a refreshed
    tag changes it with no setting changing)."""
    before = started_with.get("image_file")
    return bool(before and now and before != now)


def follow(
    ledger: Ledger,
    config: Config,
    project: dict[str, Any],
    container: dict[str, Any],
    who: dict[str, Any],
) -> tuple[dict[str, Any], str | None]:
    """Before a user's start of a STOPPED container: point it at the project's image now.

    Returns the container's row and None when the image is on this host (the row names it), or
    the reference to pull once the container is PULLING. A container that moved meanwhile
    (a racing start) is left to whoever moved it.
    """
    image = project_image(config, project)
    cid = container["id"]
    with ledger.transaction() as db:
        found = local_image(db, config, image)
        if found is not None:
            if found != container["image"]:
                db.execute(
                    "UPDATE containers SET image = ? WHERE id = ? AND state = ?",
                    [found, cid, State.STOPPED.value],
                )
            return dict(db.table("containers").get(cid)), None
        try:
            # STOPPED -> PULLING: no lease and no job while the new image is pulled.
            row = change_state(
                db,
                cid,
                State.PULLING,
                allowed_from=[State.STOPPED],
                reason=f"waiting to pull {image}",
                fields={"image": image, "desired": "running", "last_error": None},
                **who,
            )
        except InvalidTransition:
            return dict(db.table("containers").get(cid)), None
    return row, image


def give_up_pull(ledger: Ledger, container_id: int, why: str, who: dict[str, Any]) -> None:
    """PULLING -> STOPPED when the pull could not even be asked for (the caller says why)."""
    try:
        with ledger.transaction() as db:
            change_state(
                db,
                container_id,
                State.STOPPED,
                allowed_from=[State.PULLING],
                reason=why,
                fields={"desired": "stopped"},
                **who,
            )
    except InvalidTransition:
        pass


def for_submit(
    ledger: Ledger, config: Config, project: dict[str, Any], container: dict[str, Any]
) -> dict[str, Any]:
    """The STARTING container's row pointing at the project's image now when that is on this
    host; otherwise as it was (the reconciler's own starts never wait for a pull)."""
    found = current_file(ledger, config, project)
    if found is None or found == container["image"]:
        return container
    with ledger.transaction() as db:
        db.execute(
            "UPDATE containers SET image = ? WHERE id = ? AND state = ?",
            [found, container["id"], State.STARTING.value],
        )
    return {**container, "image": found}
