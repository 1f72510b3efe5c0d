"""The project's image: set it (`rxctl image set`), pull or refresh its reference (`rxctl image
pull`). Both are a manager's or an owner's (the role action set-image)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from rxslurm.daemon.api.app import json_response, read_json
from rxslurm.daemon.api.context import daemon_of
from rxslurm.daemon.api.request_actor import actor_of
from rxslurm.daemon.containers import image_set
from rxslurm.daemon.errors import BadRequest
from rxslurm.daemon.slow_work import run_slow
from rxslurm.protocol import routes as route

routes = web.RouteTableDef()


@routes.put(route.PROJECT_IMAGE)
async def set_image(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    body = await read_json(request, fields=("image",))
    answer = await run_slow(
        image_set.set_image, daemon.containers, actor, request.match_info["name"], body.get("image")
    )
    return json_response(answer)


def _wait_s(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 86400:
        raise BadRequest("wait_s must be a number of seconds from 0 to 86400")
    return float(value)


@routes.post(route.PROJECT_IMAGE_PULL)
async def pull_image(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    body = await read_json(request, fields=("refresh", "wait_s"))
    refresh = body.get("refresh", False)
    if not isinstance(refresh, bool):
        raise BadRequest("refresh must be true or false")
    wait_s = _wait_s(body.get("wait_s"))

    def pull() -> dict[str, Any]:
        return image_set.pull_image(
            daemon.containers, actor, request.match_info["name"], refresh=refresh, wait_s=wait_s
        )

    return json_response(await run_slow(pull))
