"""`rxctl image set` and `rxctl image pull`: a manager chooses the project's image, and has a
reference pulled (or its tag resolved again) before the next start.

The image is the project's `image` setting, so every start reads it (containers/start_image.py):
a running container keeps its image until it is restarted, its status says a restart is pending,
and the restart keeps the overlay. What the image may be:

- ``build:ID``: a succeeded build of this project (images/builds.py), its SIF in the runtime
  user's build folder;
- an absolute path on the nodes, checked as `project set --image` checks it (root never opens
  it: the holder job runs it as the project's runtime identity);
- a reference as people write it (``python:3.12-slim``), pulled by content digest; the pull
  starts at once in the background, so the restart rarely waits for it.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from rxslurm.daemon.containers.service import ContainerService
from rxslurm.daemon.containers.start_image import current_file, project_image
from rxslurm.daemon.errors import BadRequest, Conflict
from rxslurm.daemon.identity.actors import Actor, record_actor_event
from rxslurm.daemon.images import cache as image_cache
from rxslurm.daemon.images import pull as image_pull
from rxslurm.daemon.ledger.store import LedgerDatabase
from rxslurm.daemon.ledger.timestamps import to_timestamp, utcnow
from rxslurm.daemon.projects.roles import Action
from rxslurm.daemon.projects.service import authorize
from rxslurm.daemon.settings import Settings, check_static
from rxslurm.protocol.image_ref import BadReference, is_path, normalize_image

log = logging.getLogger("rxslurm.images")

BUILD_PREFIX = "build:"
# The longest `image pull` waits for its pull before answering "still pulling".
MAX_WAIT_S = 3600.0


def _build_image(db: LedgerDatabase, project: dict[str, Any], text: str) -> str:
    """The SIF of the project's succeeded build ``build:ID``."""
    build_id = text[len(BUILD_PREFIX) :]
    if not (build_id.isascii() and build_id.isdigit() and len(build_id) <= 18):
        raise BadRequest("a build is named build:ID, ID its number (rxctl image list shows it)")
    try:
        builds = importlib.import_module("rxslurm.daemon.images.builds")
    except ModuleNotFoundError:
        raise BadRequest("this rxd has no image builds; name an image file or reference") from None
    found = builds.succeeded_image(db, project["id"], int(build_id))
    if found is None:
        raise BadRequest(f"project {project['name']} has no succeeded build {build_id}")
    return str(found)


def choose(db: LedgerDatabase, project: dict[str, Any], text: Any) -> tuple[str, str]:
    """The image ``text`` names for the project, as stored, and its kind (build, path,
    reference); BadRequest with the reason for anything else."""
    if not isinstance(text, str) or not text:
        raise BadRequest("image must be a build:ID, an absolute path or an image reference")
    if text.startswith(BUILD_PREFIX):
        image, kind = _build_image(db, project, text), "build"
    elif is_path(text):
        image, kind = text, "path"
    else:
        try:
            image, kind = normalize_image(text), "reference"
        except BadReference as exc:
            raise BadRequest(f"image: {exc}") from None
    check_static(Settings(image=image))
    return image, kind


def set_image(svc: ContainerService, actor: Actor, project: str, text: Any) -> dict[str, Any]:
    """Make ``text`` the project's image (a manager or owner); audited. The container's next
    start runs it on the same overlay. Answers the container's status and what was set."""
    with svc.ledger.transaction() as db:
        row, _ = authorize(db, actor, project, Action.SET_IMAGE)
        image, kind = choose(db, row, text)
        db.table("projects").update(
            row["id"], {"image": image, "settings_changed_at": to_timestamp(utcnow())}
        )
        record_actor_event(
            db,
            actor,
            "project.image-set",
            "project",
            row["name"],
            {"from": row["image"], "to": image, "kind": kind, "asked": text[:4096]},
        )
        row = {**row, "image": image}
    if kind == "reference" and current_file(svc.ledger, svc.config, row) is None:
        _prefetch(svc, actor, image)
    return {**svc.status(actor, project).to_dict(), "image_set": image, "kind": kind}


def _prefetch(svc: ContainerService, actor: Actor, image: str) -> None:
    """Start pulling the new image now; a start pulls it anyway, so a refusal here is only
    logged (the start says it in its own words)."""
    try:
        svc.pulls.request(None, image, actor.uid, waiter=False)
    except (Conflict, image_pull.PullError, image_cache.UnsafeImageDir, OSError) as exc:
        log.info("no early pull", extra={"image": image, "error": str(exc)})


def pull_image(
    svc: ContainerService, actor: Actor, project: str, *, refresh: bool, wait_s: float
) -> dict[str, Any]:
    """Pull the project's image reference now (``refresh``: ask its registry again which digest
    its tag names), waiting up to ``wait_s`` seconds for the outcome."""
    with svc.ledger.read() as db:
        row, _ = authorize(db, actor, project, Action.SET_IMAGE)
    image = project_image(svc.config, row)
    if not image:
        raise BadRequest(f"project {project} has no image; set one with `rxctl image set`")
    if is_path(image):
        raise BadRequest(f"the image of {project} is the file {image}: there is nothing to pull")
    try:
        svc.pulls.request(None, image, actor.uid, waiter=False, refresh=refresh)
    except image_pull.PullError as exc:
        raise Conflict(f"cannot pull {image}: {exc.message}") from None
    except (image_cache.UnsafeImageDir, OSError) as exc:
        raise Conflict(f"cannot pull {image}: {exc}") from None
    outcome = svc.pulls.wait_pull(image, min(max(wait_s, 0.0), MAX_WAIT_S))
    answer: dict[str, Any] = {"project": project, "image": image, "pulling": outcome is None}
    if outcome is not None:
        if outcome.image is None:
            raise Conflict(f"cannot pull {image}: {outcome.error}")
        answer.update(file=str(outcome.image), digest=outcome.digest)
    answer["settings_pending"] = svc.status(actor, project).settings_pending
    return answer
