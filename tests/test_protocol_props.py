"""Property tests of what rxd, rxctl and the hooks read of each other (rxslurm.protocol): every
format turns back into what was written, and anything else is refused, never misread."""

from __future__ import annotations

import asyncio
import re

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.protocol import exec_wire, job_comment, routes
from rxslurm.protocol.exec_wire import LineReader, ProtocolError

TAGS = st.from_regex(r"[A-Za-z0-9_.-]{1,32}", fullmatch=True)
IDS = st.integers(min_value=0, max_value=10**18 - 1)
any_text = st.text(st.characters(exclude_categories=()))


# -- the job comment ---------------------------------------------------------------------------


@given(TAGS, IDS)
def test_a_comment_names_the_container_it_was_written_for(tag: str, cid: int) -> None:
    comment = job_comment.format_comment(tag, cid)
    assert job_comment.parse_comment(tag, comment) == cid
    assert job_comment.is_tagged(tag, comment)


@given(TAGS, TAGS, IDS)
def test_another_deployments_comment_names_no_container_here(mine: str, theirs: str, cid: int):
    comment = job_comment.format_comment(theirs, cid)
    if not comment.startswith(f"{mine}:container="):
        assert job_comment.parse_comment(mine, comment) is None


@given(TAGS, any_text)
def test_any_comment_is_a_container_id_only_in_the_exact_form(tag: str, comment: str) -> None:
    cid = job_comment.parse_comment(tag, comment)
    if cid is not None:
        assert re.fullmatch(rf"{re.escape(tag)}:container=[0-9]{{1,18}}", comment)
        assert comment == job_comment.format_comment(tag, int(comment.rpartition("=")[2]))
        assert 0 <= cid < 10**18


@given(st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True))
def test_a_projects_job_name_is_one_the_hooks_look_at(project: str) -> None:
    assert job_comment.is_container_job(job_comment.job_name(project))


# -- routes ------------------------------------------------------------------------------------

PATTERNS = [
    value
    for name, value in vars(routes).items()
    if name.isupper() and isinstance(value, str) and value.startswith("/v1/")
]
# Values as people and scripts may give them. A segment of only dots is a path step, not a name;
# aiohttp's fields match no brace ({name} is [^{}/]+), so a value with one is not found (404),
# which no project, user or quota id can hold.
segments = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="{}"), min_size=1, max_size=30
).filter(lambda s: s.strip(".") != "")


def _resolve(path: str) -> tuple[str, dict[str, str]]:
    app = web.Application()
    for pattern in PATTERNS:
        if not pattern.endswith("/"):
            app.router.add_route("*", pattern, _nothing, name=None)

    async def resolve() -> tuple[str, dict[str, str]]:
        match = await app.router.resolve(make_mocked_request("GET", path))
        route = match.route.resource.canonical if match.route.resource else ""
        return route, dict(match)

    return asyncio.run(resolve())


async def _nothing(request: web.Request) -> web.Response:
    return web.Response()


def test_every_route_is_served_once() -> None:
    assert len(PATTERNS) == len(set(PATTERNS))


@pytest.mark.parametrize(
    ("pattern", "fields"),
    [
        (routes.PROJECT, ("name",)),
        (routes.PROJECT_MEMBER, ("name", "user")),
        (routes.CONTAINER_STATUS, ("name",)),
        (routes.ADMIN_QUOTA, ("quota_id",)),
        (routes.ADMIN_CONTAINER_STOP, ("name",)),
    ],
)
@given(data=st.data())
def test_a_filled_route_reaches_its_handler_with_the_values_given(pattern, fields, data) -> None:
    values = [data.draw(segments) for _ in fields]
    resource, match = _resolve(routes.path(pattern, *values))
    assert resource == pattern
    assert match == dict(zip(fields, values, strict=True))


@given(st.sampled_from(routes.CONTAINER_ACTIONS), segments)
def test_a_container_action_reaches_the_action_route(action: str, name: str) -> None:
    resource, match = _resolve(routes.path(routes.CONTAINER_ACTION, name, action))
    assert resource == "/v1/projects/{name}/{action}"  # aiohttp's name for it, without the regex
    assert match == {"name": name, "action": action}


def test_a_pattern_takes_exactly_its_values() -> None:
    assert routes.path(routes.WHOAMI) == "/v1/whoami"
    with pytest.raises(TypeError):
        routes.path(routes.PROJECT_MEMBER, "alpha")
    with pytest.raises(TypeError):
        routes.path(routes.PROJECT, "alpha", "extra")


# -- the exec wire -----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=20,
)
messages = st.dictionaries(any_text, json_values, max_size=5)


@given(st.lists(messages, max_size=5), st.data())
def test_messages_read_back_whatever_the_splits(sent: list[dict], data) -> None:
    stream = b"".join(exec_wire.encode(m) for m in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    reader = LineReader(limit=len(stream) + 1)
    got: list[dict] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += reader.feed(stream[start:end])
    assert got == sent
    assert reader.buffer == b""


@given(messages)
def test_a_message_is_one_line(message: dict) -> None:
    line = exec_wire.encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert exec_wire.decode(line) == message


def test_every_forwarded_signal_has_one_name_both_ways() -> None:
    assert {exec_wire.SIGNALS[name] for name in exec_wire.SIGNAL_NAMES.values()} == set(
        exec_wire.SIGNAL_NAMES
    )


@given(st.binary(max_size=200))
def test_a_line_is_an_object_or_refused(line: bytes) -> None:
    try:
        message = exec_wire.decode(line)
    except ProtocolError:
        return
    assert isinstance(message, dict)


def test_rxd_serves_exactly_the_protocols_routes() -> None:
    from rxslurm.daemon.api import routes_containers
    from rxslurm.daemon.api.serve import PLATFORM_ROUTES, ROUTES
    from rxslurm.daemon.exec import door

    served = {route.path for route in [*ROUTES, *PLATFORM_ROUTES, *door.routes]}
    assert served == {p for p in PATTERNS if not p.endswith("/")}
    assert tuple(routes_containers.ACTIONS) == routes.CONTAINER_ACTIONS
