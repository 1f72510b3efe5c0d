"""A builder chain's build through rxd's image-builds API (docs/images.md): found by its name,
else drafted and built as a Slurm job, and waited for."""

from __future__ import annotations

import time
from typing import Any

from rxslurm.cli.client import ApiError, Client
from rxslurm.protocol import routes
from rxslurm.sdk.errors import RxError, Timeout
from rxslurm.sdk.image import Image

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


def start_build(client: Client, project: str, image: Image) -> dict[str, Any]:
    """The chain's draft (made if missing, its text put back if edited: the name is the text's
    digest) built under the same name."""
    name = image.build_name
    text = image.definition()
    try:
        draft = client.get(routes.path(routes.IMAGE_DRAFT, project, name))
    except ApiError as exc:
        if exc.code != "not_found":
            raise
        client.post(
            routes.path(routes.IMAGE_DRAFTS, project),
            {"name": name, "kind": "definition", "text": text},
        )
    else:
        if (draft.get("kind"), draft.get("text")) != ("definition", text):
            # Someone edited the chain's draft: the name promises this text.
            client.request(
                "PATCH",
                routes.path(routes.IMAGE_DRAFT, project, name),
                {"kind": "definition", "text": text},
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
