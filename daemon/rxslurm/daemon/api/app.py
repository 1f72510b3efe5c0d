"""The HTTP+JSON application: caller identification, error answers, routes.

Every request's caller is the uid the kernel reports for the socket's peer (SO_PEERCRED).
Nothing in a request's body, query or headers can name a different caller.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from rxslurm.daemon.api.peercred import Caller, UnknownCaller, peer_credentials, resolve_caller
from rxslurm.daemon.errors import ApiError, BadRequest, Forbidden
from rxslurm.daemon.metrics import Counters
from rxslurm.daemon.text_checks import shorten

log = logging.getLogger("rxslurm.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, indent=None, default=str) + "\n",
        status=status,
        content_type="application/json",
    )


def error_response(status: int, code: str, message: str) -> web.Response:
    message = shorten(message, MAX_MESSAGE_CHARS)
    return json_response({"error": {"code": code, "message": message}}, status=status)


def caller_of(request: web.Request) -> Caller:
    caller = request.get("caller")
    if not isinstance(
        caller, Caller
    ):  # the middleware always sets it; this guards a mis-wired route
        raise Forbidden("caller unknown")
    return caller


MAX_BODY_BYTES = 1024 * 1024
# No request of this API nests deeper than a few levels; refusing deeper ones early keeps
# recursion (repr, json.dumps, comparisons) far from Python's limit.
MAX_JSON_DEPTH = 16
# An error message quotes input at times; an answer (and the log line) stays short all the same.
MAX_MESSAGE_CHARS = 500


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json_object(raw: bytes, fields: Collection[str] | None = None) -> dict[str, Any]:
    """A request body as a JSON object, or BadRequest saying why not; an empty body is {}.

    `fields`: the names the route reads; any other name is refused, not silently ignored.
    """
    if not raw.strip():
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8") from None
    try:
        body = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise BadRequest(f"request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError:  # JSONDecodeError, and integers too long to convert
        raise BadRequest("request body is not valid JSON") from None
    _check_shape(body)
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    if fields is not None:
        unknown = sorted(set(body) - set(fields))
        if unknown:
            valid = ", ".join(sorted(fields)) or "none"
            field = shorten(repr(unknown[0]), 64)
            raise BadRequest(f"unknown field {field}; valid fields: {valid}")
    return body


def _check_shape(body: Any) -> None:
    """Refuse deep nesting and text that is not valid Unicode (escaped lone surrogates)."""
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_unicode(value)
        elif isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise BadRequest(f"request body nests deeper than {MAX_JSON_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    _check_unicode(key)
                stack.append((item, depth + 1))


def _check_unicode(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("request body holds a lone surrogate (not Unicode text)") from None


async def read_json(request: web.Request, fields: Collection[str] | None = None) -> dict[str, Any]:
    """The request body as a JSON object (see parse_json_object); an empty body is {}."""
    # body_exists, not can_read_body: the network door has already read (and cached) the body.
    if not request.body_exists:
        return {}
    # Over client_max_size, aiohttp raises 413 (answered as such by answer_errors).
    return parse_json_object(await request.read(), fields)


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


# Requests answered, by route pattern, method and status class (2xx...): /metrics shows them.
# Patterns, never paths: a path names projects and users, and no label may.
REQUEST_COUNTS: web.AppKey[Counters] = web.AppKey("request_counts", Counters)
UNMATCHED = "unmatched"
# Any caller may send any method name: others are counted as one, so labels stay few.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_pattern(request: web.Request) -> str:
    """The route's pattern ("/v1/projects/{name}"), or "unmatched" for a path no route has."""
    info = request.match_info
    if isinstance(info, web.UrlMappingMatchInfo) and not info.http_exception:
        canonical = info.route.resource.canonical if info.route.resource else None
        if canonical:
            return canonical
    return UNMATCHED


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counts every answer (answer_errors, inside it, turns failures into answers); a request
    whose caller hung up before it was answered is not counted (nothing was answered)."""
    response = await handler(request)
    counts = request.app.get(REQUEST_COUNTS)
    if counts is not None:
        method = request.method if request.method in METHODS else "other"
        counts.inc(route_pattern(request), method, f"{response.status // 100}xx")
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
    identify: Middleware = identify_peer,
) -> web.Application:
    """The API application; `identify` proves who calls (the socket peer, or the platform)."""
    app = web.Application(
        middlewares=[count_requests, answer_errors, identify], client_max_size=MAX_BODY_BYTES
    )
    app[REQUEST_COUNTS] = Counters(("route", "method", "code"))
    for key, value in state.items():  # a shared REQUEST_COUNTS replaces the app's own
        app[key] = value
    app.add_routes(routes)
    return app
