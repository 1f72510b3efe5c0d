"""The research platform's access over TCP: a bearer token, acting for a named platform user.

Off unless `platform.listen` is set. The token lives in a root-owned file of mode 0600; a request
with a wrong or missing token is refused before anything else is looked at. Requests that act for
a platform user (header X-RX-User) are checked against that user's roles exactly like local ones.
"""

from __future__ import annotations

import asyncio
import hmac
import stat
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from rxslurm.daemon.api.app import Handler, json_response, read_json
from rxslurm.daemon.api.context import daemon_of
from rxslurm.daemon.api.routes_identity import issue_code_from_body
from rxslurm.daemon.errors import ApiError, BadRequest, Forbidden
from rxslurm.daemon.identity import bindings as identities
from rxslurm.daemon.identity.actors import Actor
from rxslurm.daemon.identity.bindings import check_platform_user_id
from rxslurm.protocol import routes as route

ACT_AS_HEADER = "X-RX-User"
PLATFORM = Actor(platform_user=None, uid=None, user="platform", admin=False, origin="tcp")

routes = web.RouteTableDef()


class TokenFileError(Exception):
    pass


def read_token(path: Path) -> str:
    """The token, if the file is safe: a regular root-owned file nobody else can read or write."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise TokenFileError(f"platform token file {path} does not exist") from None
    if not stat.S_ISREG(info.st_mode):
        raise TokenFileError(f"platform token file {path} is not a regular file")
    if info.st_uid != 0 or info.st_mode & 0o077:
        raise TokenFileError(f"platform token file {path} must be owned by root with mode 0600")
    token = path.read_text().strip()
    if len(token) < 32:
        raise TokenFileError(f"platform token in {path} is too short (at least 32 characters)")
    return token


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


def platform_identify(token: str) -> Middleware:
    expected = token.encode()

    @web.middleware
    async def identify(request: web.Request, handler: Handler) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        given = auth.removeprefix("Bearer ").strip().encode() if auth.startswith("Bearer ") else b""
        if not given or not hmac.compare_digest(given, expected):
            raise Unauthorized("missing or wrong platform token")
        acting = request.headers.get(ACT_AS_HEADER)
        if request.path.startswith(route.PLATFORM_PREFIX):
            request["actor"] = PLATFORM
        elif acting is None:
            raise Forbidden(f"the platform acts for a user with the {ACT_AS_HEADER} header")
        else:
            request["actor"] = await asyncio.to_thread(
                identities.actor_for_platform_user, daemon_of(request).ledger, acting
            )
        return await handler(request)

    return identify


def _require_platform(request: web.Request) -> Actor:
    actor = request.get("actor")
    if actor is not PLATFORM:
        raise Forbidden("only the research platform may do this")
    return actor


@routes.post(route.PLATFORM_USERS)
async def create_user(request: web.Request) -> web.Response:
    actor = _require_platform(request)
    daemon = daemon_of(request)
    body = await read_json(request, fields=("id", "display_name"))
    user_id = check_platform_user_id(body.get("id"))
    display = body.get("display_name", "")
    if not isinstance(display, str):
        raise BadRequest("display_name must be a string")
    created = await asyncio.to_thread(
        identities.create_platform_user, daemon.ledger, actor, user_id, display
    )
    return json_response(
        {"id": user_id, "display_name": display, "created": created}, status=201 if created else 200
    )


@routes.post(route.PLATFORM_CODES)
async def create_code(request: web.Request) -> web.Response:
    actor = _require_platform(request)
    return json_response(await issue_code_from_body(request, actor), status=201)
