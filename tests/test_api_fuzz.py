"""Hostile bodies and paths for every JSON route: a 4xx with a reason, never a 500, nothing changed.

Fast tier: rxd's real application (every route, its real middlewares but the peer check) serves a
Unix socket from a thread of this process, on a throwaway ledger, with a Slurm that knows two
partitions and answers nothing else. Requests go over the socket as raw HTTP, so bytes that no
client library would send (bad UTF-8, a wrong charset, truncated JSON) arrive as sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import socket
import sqlite3
import threading
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rxslurm.daemon.api.app import MAX_BODY_BYTES, MAX_JSON_DEPTH, MAX_MESSAGE_CHARS, make_app
from rxslurm.daemon.api.context import DAEMON, Daemon
from rxslurm.daemon.api.peercred import Caller
from rxslurm.daemon.api.platform_door import platform_identify
from rxslurm.daemon.api.platform_door import routes as platform_routes
from rxslurm.daemon.api.serve import ROUTES
from rxslurm.daemon.config import parse_config
from rxslurm.daemon.ledger.store import Ledger
from rxslurm.daemon.ledger.timestamps import to_timestamp, utcnow
from rxslurm.daemon.projects import lifecycle
from rxslurm.slurm.errors import SlurmUnavailable

TOKEN = "t" * 40
PROJECT = "alpha"  # alice owns it; hostile requests name it to reach the deeper checks
CALLERS = {
    "alice": Caller(pid=1, uid=4242, gid=4242, user="fuzz-alice", groups=()),
    "admin": Caller(pid=1, uid=4243, gid=4243, user="fuzz-op", groups=("rxadmin",)),
}


@dataclass
class Part:
    default: bool = False
    max_gpus_per_node: int = 2
    max_cpus_per_node: int = 4
    max_mem_mb_per_node: int = 8000
    gpu_types: set[str] = field(default_factory=lambda: {"a100"})


class QuietSlurm:
    """Knows two partitions; any other question goes unanswered, as when Slurm is down."""

    def partitions(self) -> dict[str, Part]:
        return {"cpu": Part(default=True), "gpu": Part()}

    def __getattr__(self, name: str) -> Any:
        def unanswered(*args: Any, **kwargs: Any) -> Any:
            raise SlurmUnavailable(f"{name}: not in this test")

        return unanswered


@web.middleware
async def caller_from_header(request: web.Request, handler: Any) -> web.StreamResponse:
    # Stands in for SO_PEERCRED: this test's process is one uid, the callers are two.
    request["caller"] = CALLERS[request.headers.get("X-Test-As", "alice")]
    return await handler(request)


class ApiThread:
    """An aiohttp application on a Unix socket, served by an event loop in its own thread."""

    def __init__(self, app: web.Application, path: Path) -> None:
        self.app, self.path = app, path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)

    async def _start(self) -> None:
        await self.runner.setup()
        await web.UnixSite(self.runner, str(self.path)).start()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


@dataclass
class Api:
    socket: Path
    platform_socket: Path
    ledger_path: Path

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        who: str = "alice",
        platform: bool = False,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, Any]]:
        conn = http.client.HTTPConnection("rxd", timeout=30)
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(self.platform_socket if platform else self.socket))
        conn.sock = sock
        headers = {"X-Test-As": who, "Content-Type": content_type}
        if platform:
            headers["Authorization"] = f"Bearer {TOKEN}"
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        return response.status, json.loads(raw) if raw else {}

    def project_names(self) -> set[str]:
        db = sqlite3.connect(f"file:{self.ledger_path}?mode=ro", uri=True)
        try:
            return {row[0] for row in db.execute("SELECT name FROM projects")}
        finally:
            db.close()

    def ledger_digest(self) -> str:
        """Every row of every table: equal digests mean an unchanged ledger."""
        db = sqlite3.connect(f"file:{self.ledger_path}?mode=ro", uri=True)
        try:
            digest = hashlib.sha256()
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for table in sorted(tables):
                for row in db.execute(f"SELECT * FROM {table} ORDER BY rowid"):  # noqa: S608
                    digest.update(repr((table, row)).encode())
            return digest.hexdigest()
        finally:
            db.close()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("fuzz")
    config = parse_config(
        {
            "daemon": {"ledger": str(root / "state" / "ledger.db")},
            "identity": {"mode": "platform"},
            "workspaces": {"root": str(root / "workspaces")},
            "builds": {"enabled": True},
            # No pulls: a fuzzed image reference must never reach a registry.
            "pulls": {"user": ""},
        }
    )
    ledger = Ledger.open(config.daemon.ledger, migrate=True)
    now = to_timestamp(utcnow())
    with ledger.transaction() as db:
        db["platform_users"].insert({"id": "alice", "display_name": "", "created_at": now})
        db["bindings"].insert(
            {
                "platform_user_id": "alice",
                "uid": 4242,
                "username": "fuzz-alice",
                "bound_at": now,
                "bound_by": "test",
            }
        )
    daemon = Daemon(config=config, ledger=ledger, slurm=QuietSlurm())  # type: ignore[arg-type]
    # Workspaces are made as real users (setfacl, runuser): not in the fast tier.
    patch = pytest.MonkeyPatch()
    patch.setattr(lifecycle, "sync_workspace", lambda *args, **kwargs: None)
    main = ApiThread(
        make_app(ROUTES, {DAEMON: daemon}, identify=caller_from_header), root / "rxd.sock"
    )
    plat = ApiThread(
        make_app([*ROUTES, *platform_routes], {DAEMON: daemon}, identify=platform_identify(TOKEN)),
        root / "platform.sock",
    )
    main.start()
    plat.start()
    client = Api(main.path, plat.path, config.daemon.ledger)
    status, answer = client.request("POST", "/v1/projects", json.dumps({"name": PROJECT}).encode())
    assert status == 201, answer
    try:
        yield client
    finally:
        main.stop()
        plat.stop()
        patch.undo()
        ledger.close()


# -- what hostile input looks like ----------------------------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**18, max_value=10**400)
    | st.floats(allow_nan=False)
    | st.text()
    | st.sampled_from(["", "alpha", "alpha\n", "hog\r", "/x\r", "\u202e", "x" * 5000, "owner"])
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "name", "settings", "image", "gpus", "cpus", "partition", "gpu_type", "code", "mode", "user",
    "role", "platform_user", "linux_user", "display_name", "ttl_min", "id", "scope", "max_gpus",
    "refresh", "wait_s",
]  # fmt: skip
CRAFTED = [
    b"[" * 100_000,
    b'{"name": ' * 50_000,
    b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1),
    b'{"settings": ' + b"[" * 900 + b"]" * 900 + b"}",
    b'{"gpus": ' + b"9" * 5000 + b"}",
    b'{"gpus": NaN}',
    b'{"gpus": Infinity}',
    b'{"name": "\\ud800"}',
    b'{"\\udfff": 1}',
    b'{"name": "\xff\xfe"}',
    b"\xef\xbb\xbf{}",  # a UTF-8 byte order mark
    b'{"name": "alpha"',
    b"null",
    b"[]",
    b'"alpha"',
    b"1e999999",
    b"\x00",
]


def json_bodies() -> st.SearchStrategy[bytes]:
    known = st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=5)
    return (
        st.binary(max_size=300)
        | st.sampled_from(CRAFTED)
        | JSON_VALUES.map(lambda v: json.dumps(v).encode())
        | known.map(lambda v: json.dumps(v).encode())
        | known.map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    )


def hostile_names() -> st.SearchStrategy[str]:
    return st.text(max_size=40) | st.sampled_from(
        ["alpha\n", "alpha\r", "alpha%", "..", "alpha\x00", "ALPHA", "a" * 3000, "\u202ealpha"]
    )


# (method, path template, who, platform): every route that reads a JSON body.
JSON_ROUTES = [
    ("POST", "/v1/projects", "alice", False),
    ("PATCH", "/v1/projects/{p}/settings", "alice", False),
    ("PUT", "/v1/projects/{p}/run-as", "alice", False),
    ("PUT", "/v1/projects/{p}/image", "alice", False),
    ("POST", "/v1/projects/{p}/image/pull", "alice", False),
    ("POST", "/v1/projects/{p}/members", "alice", False),
    ("PATCH", "/v1/projects/{p}/members/{u}", "alice", False),
    ("PUT", "/v1/projects/{p}/dev-mode", "alice", False),
    ("POST", "/v1/projects/{p}/image-drafts", "alice", False),
    ("POST", "/v1/projects/{p}/image-draft-check", "alice", False),
    ("PATCH", "/v1/projects/{p}/image-drafts/main", "alice", False),
    ("POST", "/v1/projects/{p}/image-builds", "alice", False),
    ("PATCH", "/v1/projects/{p}/image-builds/1", "alice", False),
    ("POST", "/v1/projects/{p}/commands", "alice", False),
    ("POST", "/v1/projects/{p}/commands/0123abcd/signal", "alice", False),
    ("POST", "/v1/bind", "alice", False),
    ("POST", "/v1/admin/codes", "admin", False),
    ("POST", "/v1/admin/bind", "admin", False),
    ("POST", "/v1/admin/unbind", "admin", False),
    ("POST", "/v1/admin/quotas", "admin", False),
    ("POST", "/v1/platform/users", "", True),
    ("POST", "/v1/platform/codes", "", True),
    ("POST", "/v1/projects", "", True),  # the platform acting for a user it does not name
]


def check_answer(api: Api, before: str, status: int, answer: dict[str, Any]) -> None:
    assert status < 500, answer
    if status >= 400:
        message = answer["error"]["message"]
        assert message.strip() and len(message) <= MAX_MESSAGE_CHARS, answer
        assert api.ledger_digest() == before, f"refused ({status} {message}) but the ledger changed"


FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.parametrize(("method", "template", "who", "platform"), JSON_ROUTES)
@FUZZ
@given(body=json_bodies(), content_type=st.sampled_from(["application/json", "text/plain"]))
def test_hostile_bodies_get_a_4xx_with_a_reason_and_change_nothing(
    api: Api, method: str, template: str, who: str, platform: bool, body: bytes, content_type: str
) -> None:
    path = template.format(p=PROJECT, u="alice")
    before = api.ledger_digest()
    status, answer = api.request(
        method, path, body, who=who, platform=platform, content_type=content_type
    )
    check_answer(api, before, status, answer)


@FUZZ
@given(
    name=hostile_names(),
    user=hostile_names(),
    route=st.sampled_from(
        [
            ("GET", "/v1/projects/{p}"),
            ("DELETE", "/v1/projects/{p}"),
            ("GET", "/v1/projects/{p}/status"),
            ("POST", "/v1/projects/{p}/enable"),
            ("POST", "/v1/projects/{p}/start"),
            ("POST", "/v1/projects/{p}/stop"),
            ("POST", "/v1/projects/{p}/retry"),
            ("PATCH", "/v1/projects/{p}/settings"),
            ("PATCH", "/v1/projects/{p}/members/{u}"),
            ("DELETE", "/v1/projects/{p}/members/{u}"),
            ("POST", "/v1/admin/containers/{p}/stop"),
        ]
    ),
)
def test_hostile_names_in_paths_are_refused(
    api: Api, name: str, user: str, route: tuple[str, str]
) -> None:
    # Fuzzed creates may have made projects with plain names: those are not hostile names.
    assume(name and name not in api.project_names())
    method, template = route
    # Percent-encoded, as curl sends `hog%0A`: aiohttp decodes it back to "hog\n".
    path = template.format(p=quote(name, safe=""), u=quote(user or "x", safe=""))
    before = api.ledger_digest()
    status, answer = api.request(method, path, b'{"role": "viewer"}', who="admin")
    assert 400 <= status < 500, answer
    check_answer(api, before, status, answer)


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"[" * 100_000, "application/json", f"nests deeper than {MAX_JSON_DEPTH} levels"),
        (b'{"name": "\xff"}', "application/json", "not UTF-8"),
        (b'{"name": "x\xe9"}', "application/json; charset=latin-1", "not UTF-8"),
        (b'{"name": "\\ud800"}', "application/json", "lone surrogate"),
        (b'{"name": 1e999}', "application/json", None),
        (b'{"name": "x", "settings": {}, "owner": "root"}', "application/json", "unknown field"),
        (b'{"name": "x", "settings": "gpus=8"}', "application/json", "settings must be"),
        (b"[]", "application/json", "must be a JSON object"),
        (b'{"gpus": NaN}', "application/json", "not valid JSON"),
    ],
)
def test_crafted_bodies_are_refused_with_their_reason(
    api: Api, body: bytes, content_type: str, reason: str | None
) -> None:
    before = api.ledger_digest()
    status, answer = api.request("POST", "/v1/projects", body, content_type=content_type)
    assert status == 400, answer
    if reason:
        assert reason in answer["error"]["message"]
    assert api.ledger_digest() == before


def test_a_body_is_utf_8_whatever_charset_the_request_names(api: Api) -> None:
    body = json.dumps({"name": "charset"}).encode()
    status, answer = api.request(
        "POST", "/v1/projects", body, content_type="application/json; charset=no-such-charset"
    )
    assert (status, answer["name"]) == (201, "charset")


@pytest.mark.parametrize("name", ["x\n", "hog\n", "hog\r\n", "\nhog", "hog\u2028"])
def test_a_project_name_with_a_line_end_cannot_be_created(api: Api, name: str) -> None:
    before = api.ledger_digest()
    status, answer = api.request("POST", "/v1/projects", json.dumps({"name": name}).encode())
    assert (status, answer["error"]["code"]) == (400, "bad_request")
    assert "project name must be" in answer["error"]["message"]
    assert api.ledger_digest() == before


def test_a_body_over_the_cap_is_refused_and_the_server_goes_on(api: Api) -> None:
    before = api.ledger_digest()
    status, answer = api.request("POST", "/v1/projects", b" " * (MAX_BODY_BYTES + 1))
    assert status == 413, answer
    assert api.ledger_digest() == before
    assert api.request("GET", f"/v1/projects/{PROJECT}")[0] == 200


def test_worst_case_bodies_stay_within_a_small_memory_budget(api: Api) -> None:
    worst = [
        b"[" * MAX_BODY_BYTES,
        b'{"name": "' + b"x" * (MAX_BODY_BYTES - 20) + b'"}',
        b'{"' + b"k" * (MAX_BODY_BYTES - 20) + b'": 1}',
        b"[" + b"1," * (MAX_BODY_BYTES // 2 - 2) + b"1]",
    ]
    tracemalloc.start()
    try:
        for body in worst:
            status, answer = api.request("POST", "/v1/projects", body)
            assert 400 <= status < 500, answer
            assert len(answer["error"]["message"]) <= MAX_MESSAGE_CHARS
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A 1 MiB body may cost some multiple of itself while it is parsed; never unbounded.
    assert peak < 64 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"


def test_a_refused_image_in_settings_changes_nothing(api: Api) -> None:
    before = api.ledger_digest()
    for image in ("/x\r", "/x\x1b]0;owned\x07", "/x\u202e", "/" + "x" * 5000):
        body = json.dumps({"image": image}).encode()
        status, answer = api.request("PATCH", f"/v1/projects/{PROJECT}/settings", body)
        assert status == 400, answer
    assert api.ledger_digest() == before
