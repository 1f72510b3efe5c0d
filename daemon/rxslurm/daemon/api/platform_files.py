"""Files of a project's `/workspace` for the research platform, as the member X-RX-User names.

`GET /v1/projects/NAME/files?path=REL` answers the file's bytes; `PUT` with the bytes as the
body replaces it (creating missing folders). Reading takes any role, writing the roles the
workspace's ACLs give write access (projects/workspace_files.py does the work as the runtime
user, never as root). Both are audited, naming the member, origin tcp and door platform.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from rxslurm.daemon.api.app import MAX_BODY_BYTES, json_response
from rxslurm.daemon.api.context import daemon_of
from rxslurm.daemon.errors import Forbidden
from rxslurm.daemon.identity.actors import Actor
from rxslurm.daemon.projects import workspace_files as files
from rxslurm.protocol import routes as route


def _member(request: web.Request) -> tuple[Actor, str, str]:
    actor: Actor = request["actor"]
    if actor.platform_user is None:
        raise Forbidden("the platform works on files as a member: name one with X-RX-User")
    return actor, request.match_info["name"], files.check_path(request.query.get("path"))


async def read(request: web.Request) -> web.Response:
    actor, project, path = _member(request)
    daemon = daemon_of(request)
    workspace = await asyncio.to_thread(
        files.workspace_for, daemon.ledger, daemon.config, actor, project, write=False
    )
    data = await asyncio.to_thread(files.read_file, workspace, path)
    await asyncio.to_thread(
        files.record_file_event,
        daemon.ledger,
        actor,
        project,
        "workspace.file-read",
        path,
        len(data),
    )
    return web.Response(body=data, content_type="application/octet-stream")


async def write(request: web.Request) -> web.Response:
    actor, project, path = _member(request)
    daemon = daemon_of(request)
    workspace = await asyncio.to_thread(
        files.workspace_for, daemon.ledger, daemon.config, actor, project, write=True
    )
    # Over the API's body limit aiohttp answers 413 itself.
    data = await request.read()
    size = await asyncio.to_thread(files.write_file, workspace, path, data, MAX_BODY_BYTES)
    await asyncio.to_thread(
        files.record_file_event, daemon.ledger, actor, project, "workspace.file-written", path, size
    )
    return json_response({"path": path, "size": size})


routes = [web.get(route.PROJECT_FILES, read), web.put(route.PROJECT_FILES, write)]
