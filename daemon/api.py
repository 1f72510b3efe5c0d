"""The HTTP+JSON application: caller identification, error answers, routes.

Every request's caller is the uid the kernel reports for the socket's peer (SO_PEERCRED).
Nothing in a request's body, query or headers can name a different caller.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from rxslurm.daemon.errors import ApiError, BadRequest, Forbidden
from rxslurm.daemon.peercred import Caller, UnknownCaller, peer_credentials, resolve_caller

log = logging.getLogger("rxslurm.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, indent=None, default=str) + "\n",
        status=status,
        content_type="application/json",
    )


def error_response(status: int, code: str, message: str) -> web.Response:
    return json_response({"error": {"code": code, "message": message}}, status=status)


def caller_of(request: web.Request) -> Caller:
    caller = request.get("caller")
    if caller is None:  # the middleware always sets it; this guards a mis-wired route
        raise Forbidden("caller unknown")
    return caller


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; an empty body is {}."""
    # body_exists, not can_read_body: the network door has already read (and cached) the body.
    if not request.body_exists:
        return {}
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


@web.middleware
async def answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes a JSON error with a reason; unexpected ones are logged in full."""
    started = time.monotonic()
    try:
        response = await handler(request)
    except ApiError as exc:
        response = error_response(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        response = error_response(exc.status, "http", exc.reason)
    except Exception:
        log.exception("request failed", extra={"path": request.path})
        response = error_response(500, "internal", "internal error; see rxd's log")
    actor = request.get("actor") or request.get("caller")
    log.debug(
        "request",
        extra={
            "method": request.method,
            "path": request.path,
            "who": getattr(actor, "name", None) or getattr(actor, "user", None),
            "status": response.status,
            "ms": round((time.monotonic() - started) * 1000, 1),
        },
    )
    return response


@web.middleware
async def identify_peer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The caller is the socket peer's uid, as the kernel recorded it at connect()."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None:
        raise Forbidden("caller cannot be identified")
    try:
        pid, uid, gid = peer_credentials(sock)
        caller = resolve_caller(pid, uid, gid)
    except (OSError, UnknownCaller) as exc:
        log.warning("refused caller", extra={"reason": str(exc), "path": request.path})
        raise ApiError(str(exc), status=403, code="unknown_caller") from None
    request["caller"] = caller
    return await handler(request)


def make_app(
    routes: list[web.RouteDef],
    state: dict[web.AppKey[Any], Any],
    identify: Handler | Any = identify_peer,
) -> web.Application:
    """The API application; `identify` proves who calls (the socket peer, or the platform)."""
    app = web.Application(middlewares=[answer_errors, identify], client_max_size=1024 * 1024)
    for key, value in state.items():
        app[key] = value
    app.add_routes(routes)
    return app
