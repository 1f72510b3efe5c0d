"""The export route's streaming (api/routes_export.py) with a stand-in script: the whole archive in
a chunked body; a refusal before any byte is a JSON 409; a script that fails midway cuts the
connection before the last chunk, so no client takes a short body for a whole archive."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from rxslurm.daemon.api import routes_export
from rxslurm.daemon.api.app import make_app
from rxslurm.daemon.api.context import DAEMON
from rxslurm.daemon.containers.exports import ExportPlan
from rxslurm.slurm.runas import spawn
from tests.unit.test_reconciler_edges import OWNER


@web.middleware
async def as_owner(request: web.Request, handler: Any) -> web.StreamResponse:
    request["actor"] = OWNER
    return await handler(request)


def stand_in(monkeypatch: pytest.MonkeyPatch, program: str) -> None:
    """The export script replaced by ``program`` (Python)."""
    plan = ExportPlan("alpha", "/nonexistent", None, None, {})
    monkeypatch.setattr(routes_export, "plan_export", lambda *_args: plan)

    def start(*_args: Any) -> subprocess.Popen[bytes]:
        return spawn([sys.executable, "-c", program], None, text=False)

    monkeypatch.setattr(routes_export, "start_export", start)


def fetch() -> tuple[int, bytes | str]:
    app = make_app(
        routes_export.routes, {DAEMON: SimpleNamespace(containers=None)}, identify=as_owner
    )

    async def run() -> tuple[int, bytes | str]:
        async with TestClient(TestServer(app)) as client:
            response = await client.get("/v1/projects/alpha/export")
            try:
                return response.status, await response.read()
            except aiohttp.ClientPayloadError as exc:
                return response.status, f"cut: {type(exc).__name__}"

    return asyncio.run(run())


def test_the_whole_archive_is_the_body(monkeypatch: pytest.MonkeyPatch) -> None:
    stand_in(monkeypatch, "import sys; sys.stdout.buffer.write(b'a' * 3_000_000)")
    assert fetch() == (200, b"a" * 3_000_000)


def test_a_failure_before_any_byte_is_a_409_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stand_in(monkeypatch, "import sys; sys.stderr.write('the snapshot is gone\\n'); sys.exit(3)")
    status, body = fetch()
    assert status == 409
    assert b"cannot export alpha: the snapshot is gone" in bytes(body)  # type: ignore[arg-type]


def test_a_failure_midway_cuts_the_body_before_its_last_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    program = (
        "import sys; sys.stdout.buffer.write(b'a' * 3_000_000); sys.stdout.flush(); sys.exit(1)"
    )
    stand_in(monkeypatch, program)
    status, body = fetch()
    assert status == 200
    assert body == "cut: ClientPayloadError"
