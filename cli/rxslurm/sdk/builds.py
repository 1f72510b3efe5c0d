"""A builder chain's build through rxd's image-builds API (docs/images.md): found by its name,
else its local files uploaded as the build context, drafted and built as a Slurm job, and
waited for."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

from rxslurm.cli.client import ApiError, Client
from rxslurm.protocol import build_context, routes
from rxslurm.sdk.errors import BadRequest, RxError, Timeout
from rxslurm.sdk.image import Image
from rxslurm.sdk.local_files import Entry

# Between looks at a build (rxd's reconciler follows the job on its own passes).
BUILD_POLL_S = 2.0
LIVE = ("queued", "building")


class BuildFailed(RxError):
    """The image's build ended without an image: `.message` is rxd's reason
    (`rxctl image logs --project P NAME` shows the job's output)."""


def find_build(client: Client, project: str, name: str) -> dict[str, Any] | None:
    """The build of that name that succeeded or is under way, newest first; None if none."""
    answer = client.get(routes.path(routes.IMAGE_BUILDS, project))
    named = [b for b in answer["images"] if b.get("name") == name]
    for state in ("succeeded", *LIVE):
        found = [b for b in named if b.get("state") == state]
        if found:
            newest: dict[str, Any] = max(found, key=lambda b: int(b["id"]))
            return newest
    return None


def upload_context(client: Client, project: str, image: Image) -> None:
    """Every file the chain adds, sent to rxd chunk by chunk into the build context named as
    the build (rxd writes it into the project's workspace as the runtime user)."""
    for upload in image.uploads:
        for entry in upload.entries:
            send_file(client, project, image.build_name, entry)


def send_file(client: Client, project: str, context: str, entry: Entry) -> None:
    """One file, in requests of at most CHUNK_BYTES; BadRequest if it changed since it was
    added (the image's digest promises what it held then)."""
    route = routes.path(routes.IMAGE_CONTEXT, project, context)
    digest = hashlib.sha256()
    offset = 0
    try:
        with open(entry.local, "rb") as f:
            chunk = f.read(build_context.CHUNK_BYTES)
            while True:
                following = f.read(build_context.CHUNK_BYTES)
                digest.update(chunk)
                last = not following
                if last and digest.hexdigest() != entry.sha256:
                    raise BadRequest(
                        f"{entry.local} changed since it was added to the image: add it again"
                    )
                body = {
                    "path": entry.path,
                    "offset": offset,
                    "data": base64.b64encode(chunk).decode(),
                    "last": last,
                    "executable": entry.executable,
                }
                client.request("PUT", route, body)
                if last:
                    return
                offset += len(chunk)
                chunk = following
    except OSError as exc:
        raise BadRequest(f"cannot read {entry.local}: {exc.strerror}") from None


def remove_context(client: Client, project: str, image: Image) -> None:
    """The uploaded context, once its build has ended (the job copied it when it started)."""
    if not image.uploads:
        return
    try:
        client.request("DELETE", routes.path(routes.IMAGE_CONTEXT, project, image.build_name))
    except ApiError as exc:
        if exc.code != "not_found":
            raise


def start_build(client: Client, project: str, image: Image) -> dict[str, Any]:
    """The chain's draft (made if missing, its text put back if edited: the name is the text's
    digest) built under the same name; its context the uploaded files', if it adds any."""
    name = image.build_name
    text = image.definition()
    context = build_context.draft_context(name) if image.uploads else "."
    try:
        draft = client.get(routes.path(routes.IMAGE_DRAFT, project, name))
    except ApiError as exc:
        if exc.code != "not_found":
            raise
        client.post(
            routes.path(routes.IMAGE_DRAFTS, project),
            {"name": name, "kind": "definition", "text": text, "context": context},
        )
    else:
        wanted = ("definition", text, context)
        if (draft.get("kind"), draft.get("text"), draft.get("context")) != wanted:
            # Someone edited the chain's draft: the name promises this text.
            client.request(
                "PATCH",
                routes.path(routes.IMAGE_DRAFT, project, name),
                {"kind": "definition", "text": text, "context": context},
            )
    build: dict[str, Any] = client.post(
        routes.path(routes.IMAGE_BUILDS, project), {"draft": name, "name": name}
    )
    return build


def wait_build(
    client: Client, project: str, build: dict[str, Any], deadline: float | None
) -> dict[str, Any]:
    """The build once it succeeded; BuildFailed if it failed or was cancelled, Timeout past
    `deadline` (time.monotonic(); the build goes on)."""
    while build.get("state") in LIVE:
        if deadline is not None and time.monotonic() >= deadline:
            raise Timeout(
                f"image build {build['id']} ({build.get('name')}) of {project} is still "
                f"{build.get('state')}; it goes on (rxctl image status --project {project} "
                f"{build['id']})"
            )
        time.sleep(BUILD_POLL_S)
        build = client.get(routes.path(routes.IMAGE_BUILD, project, build["id"]))
    if build.get("state") != "succeeded":
        raise BuildFailed(
            f"image build {build['id']} of {project} {build.get('state')}: "
            f"{build.get('reason') or 'no reason given'}"
        )
    return build
