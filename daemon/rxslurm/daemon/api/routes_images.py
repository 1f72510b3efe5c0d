"""Image drafts and builds (docs/images.md), and a project's dev mode: thin handlers over
``BuildService`` (containers/builds.py) and ``projects/dev_mode.py``."""

from __future__ import annotations

import asyncio

from aiohttp import web

from rxslurm.daemon.api.app import json_response, read_json
from rxslurm.daemon.api.context import daemon_of
from rxslurm.daemon.api.request_actor import actor_of
from rxslurm.daemon.api.routes_logs import parse_number
from rxslurm.daemon.images import context_files
from rxslurm.daemon.projects.dev_mode import set_dev_mode
from rxslurm.protocol import routes as route

routes = web.RouteTableDef()
DRAFT_FIELDS = ("name", "kind", "text", "context", "ignore")
BUILD_FIELDS = ("draft", "name", "partition", "cpus", "mem_mb", "time_limit_min")


@routes.put(route.PROJECT_DEV_MODE)
async def dev_mode(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    actor = await actor_of(request)
    body = await read_json(request, fields=("dev_mode",))
    answer = await asyncio.to_thread(
        set_dev_mode, daemon.ledger, actor, request.match_info["name"], body.get("dev_mode")
    )
    return json_response(answer)


@routes.get(route.IMAGE_DRAFTS)
async def list_drafts(request: web.Request) -> web.Response:
    daemon, actor = daemon_of(request), await actor_of(request)
    answer = await asyncio.to_thread(daemon.builds.list_drafts, actor, request.match_info["name"])
    return json_response(answer)


@routes.post(route.IMAGE_DRAFTS)
async def create_draft(request: web.Request) -> web.Response:
    daemon, actor = daemon_of(request), await actor_of(request)
    body = await read_json(request, fields=DRAFT_FIELDS)
    answer = await asyncio.to_thread(
        daemon.builds.create_draft, actor, request.match_info["name"], body
    )
    return json_response(answer, status=201)


@routes.post(route.IMAGE_DRAFT_CHECK)
async def check_draft_text(request: web.Request) -> web.Response:
    daemon, actor = daemon_of(request), await actor_of(request)
    body = await read_json(request, fields=("kind", "text"))
    answer = await asyncio.to_thread(
        daemon.builds.check_text, actor, request.match_info["name"], body
    )
    return json_response(answer)


@routes.get(route.IMAGE_DRAFT)
async def show_draft(request: web.Request) -> web.Response:
    return await _draft_with_check(request)


async def _draft_with_check(request: web.Request) -> web.Response:
    daemon, actor = daemon_of(request), await actor_of(request)
    answer = await asyncio.to_thread(
        daemon.builds.show_draft, actor, request.match_info["name"], request.match_info["draft"]
    )
    return json_response(answer)


@routes.post(route.IMAGE_DRAFT_VALIDATE)
async def validate_draft(request: web.Request) -> web.Response:
    # The same answer as show: the draft with its check; a POST so that it reads as an action.
    return await _draft_with_check(request)


@routes.patch(route.IMAGE_DRAFT)
async def edit_draft(request: web.Request) -> web.Response:
    daemon, actor = daemon_of(request), await actor_of(request)
    body = await read_json(request, fields=DRAFT_FIELDS[1:])
    answer = await asyncio.to_thread(
        daemon.builds.edit_draft,
        actor,
        request.match_info["name"],
        request.match_info["draft"],
        body,
    )
    return json_response(answer)


@routes.delete(route.IMAGE_DRAFT)
async def delete_draft(request: web.Request) -> web.Response:
    daemon, actor = daemon_of(request), await actor_of(request)
    answer = await asyncio.to_thread(
        daemon.builds.delete_draft, actor, request.match_info["name"], request.match_info["draft"]
    )
    return json_response(answer)


@routes.get(route.IMAGE_BUILDS)
async def list_builds(request: web.Request) -> web.Response:
    daemon, actor = daemon_of(request), await actor_of(request)
    answer = await asyncio.to_thread(daemon.builds.list_builds, actor, request.match_info["name"])
    return json_response(answer)


@routes.post(route.IMAGE_BUILDS)
async def build(request: web.Request) -> web.Response:
    daemon, actor = daemon_of(request), await actor_of(request)
    body = await read_json(request, fields=BUILD_FIELDS)
    answer = await asyncio.to_thread(daemon.builds.build, actor, request.match_info["name"], body)
    return json_response(answer, status=201)


@routes.get(route.IMAGE_BUILD)
async def build_status(request: web.Request) -> web.Response:
    daemon, actor = daemon_of(request), await actor_of(request)
    answer = await asyncio.to_thread(
        daemon.builds.status, actor, request.match_info["name"], request.match_info["build"]
    )
    return json_response(answer)


@routes.patch(route.IMAGE_BUILD)
async def rename(request: web.Request) -> web.Response:
    daemon, actor = daemon_of(request), await actor_of(request)
    body = await read_json(request, fields=("name",))
    answer = await asyncio.to_thread(
        daemon.builds.rename,
        actor,
        request.match_info["name"],
        request.match_info["build"],
        body.get("name"),
    )
    return json_response(answer)


@routes.delete(route.IMAGE_BUILD)
async def delete_build(request: web.Request) -> web.Response:
    daemon, actor = daemon_of(request), await actor_of(request)
    answer = await asyncio.to_thread(
        daemon.builds.delete, actor, request.match_info["name"], request.match_info["build"]
    )
    return json_response(answer)


@routes.post(route.IMAGE_BUILD_CANCEL)
async def cancel(request: web.Request) -> web.Response:
    daemon, actor = daemon_of(request), await actor_of(request)
    answer = await asyncio.to_thread(
        daemon.builds.cancel, actor, request.match_info["name"], request.match_info["build"]
    )
    return json_response(answer)


@routes.get(route.IMAGE_BUILD_LOGS)
async def logs(request: web.Request) -> web.Response:
    daemon, actor = daemon_of(request), await actor_of(request)
    offset = parse_number("offset", request.query.get("offset"))
    # The read runs as the runtime user in a child process with its own deadline.
    answer = await asyncio.to_thread(
        daemon.builds.logs,
        actor,
        request.match_info["name"],
        request.match_info["build"],
        offset,
    )
    return json_response(answer)


@routes.put(route.IMAGE_CONTEXT)
async def upload_context_chunk(request: web.Request) -> web.Response:
    daemon, actor = daemon_of(request), await actor_of(request)
    body = await read_json(request, fields=context_files.CHUNK_FIELDS)
    chunk = context_files.parse_chunk(body)
    # The write runs as the runtime user in a child process with its own deadline.
    answer = await asyncio.to_thread(
        context_files.write_chunk,
        daemon.ledger,
        daemon.config,
        actor,
        request.match_info["name"],
        request.match_info["context"],
        chunk,
    )
    return json_response(answer)


@routes.delete(route.IMAGE_CONTEXT)
async def delete_context(request: web.Request) -> web.Response:
    daemon, actor = daemon_of(request), await actor_of(request)
    answer = await asyncio.to_thread(
        context_files.remove_context,
        daemon.ledger,
        daemon.config,
        actor,
        request.match_info["name"],
        request.match_info["context"],
    )
    return json_response(answer)
