"""The network door's checks in process, with MUNGE stood in for: no root, no Slurm, no munged.

The real munged and Slurm are in tests/test_munge.py and tests/test_tcp_door.py; here each branch
of the door (proved, altered, claimed uid, munged down, audit failing) is driven directly.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from rxslurm.daemon.api import door_stream, munge_door
from rxslurm.daemon.api.app import make_app
from rxslurm.daemon.api.context import DAEMON, Daemon
from rxslurm.daemon.api.serve import ROUTES
from rxslurm.daemon.config import parse_config
from rxslurm.daemon.ledger.store import Ledger
from rxslurm.protocol import routes as route
from rxslurm.slurm import munge, request_binding
from rxslurm.slurm.adapter import SlurmCli


class FakeMunge:
    """Credentials are tokens this stand-in hands out; each decodes once, like munged's."""

    def __init__(self) -> None:
        self.issued: dict[str, munge.Decoded] = {}
        self.used: set[str] = set()
        self.down = False

    def issue(self, payload: bytes, uid: int | None = None) -> str:
        token = f"MUNGE:fake{len(self.issued) + len(self.used)}:"
        uid = os.getuid() if uid is None else uid
        self.issued[token] = munge.Decoded(payload, uid, os.getgid(), 0, 300)
        return token

    def decode(self, credential: str, *, socket: str | None = None) -> munge.Decoded:
        if self.down:
            raise munge.MungeUnavailable(munge.Err.SOCKET, "Failed to connect to munged")
        if credential in self.used:
            raise munge.MungeError(munge.Err.CRED_REPLAYED, "Replayed credential", os.getuid())
        if credential not in self.issued:
            raise munge.MungeError(munge.Err.CRED_INVALID, "Invalid credential")
        self.used.add(credential)
        return self.issued.pop(credential)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeMunge:
    stand_in = FakeMunge()
    monkeypatch.setattr(munge, "decode", stand_in.decode)
    return stand_in


@pytest.fixture
def daemon(tmp_path: Path) -> Daemon:
    config = parse_config(
        {
            "daemon": {"ledger": str(tmp_path / "ledger.db"), "listen": "127.0.0.1:1"},
            "workspaces": {"root": str(tmp_path / "ws")},
        }
    )
    return Daemon(
        config=config, ledger=Ledger.open(config.daemon.ledger, migrate=True), slurm=SlurmCli()
    )


def call(daemon: Daemon, send: Callable[[TestClient], Any]) -> Any:
    async def run() -> Any:
        app = make_app(
            ROUTES,
            {DAEMON: daemon},
            identify=munge_door.munge_identify(munge_door.RefusalLimiter()),
        )
        async with TestClient(TestServer(app)) as client:
            return await send(client)

    return asyncio.run(run())


def request(
    daemon: Daemon, method: str, target: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict]:
    async def send(client: TestClient) -> tuple[int, dict]:
        response = await client.request(method, target, data=body, headers=headers)
        return response.status, json.loads(await response.read())

    return call(daemon, send)


def bound(fake: FakeMunge, method: str, target: str, body: bytes, **kw: Any) -> dict[str, str]:
    claim = kw.pop("claim", os.getuid())
    binding = request_binding.bind(method, target, body, claim)
    return {request_binding.HEADER: fake.issue(binding.to_payload(), **kw)}


def refusals(daemon: Daemon) -> list[dict]:
    rows = daemon.ledger.db.execute(
        "SELECT origin, detail FROM events WHERE action = 'door.refused' ORDER BY id"
    ).fetchall()
    return [{"origin": origin, **json.loads(detail)} for origin, detail in rows]


def test_a_bound_credential_is_the_caller_through_the_door(daemon: Daemon, fake: FakeMunge) -> None:
    status, me = request(daemon, "GET", "/v1/whoami", b"", bound(fake, "GET", "/v1/whoami", b""))
    assert status == 200, me
    assert (me["uid"], me["door"], me["admin"]) == (os.getuid(), "munge", False)
    assert refusals(daemon) == []


def test_the_same_credential_twice_is_a_replay(daemon: Daemon, fake: FakeMunge) -> None:
    headers = bound(fake, "GET", "/v1/whoami", b"")
    assert request(daemon, "GET", "/v1/whoami", b"", headers)[0] == 200
    status, data = request(daemon, "GET", "/v1/whoami", b"", headers)
    assert status == 401
    assert data["error"]["message"] == "MUNGE credential replayed (each credential is good once)"
    status, data = request(daemon, "GET", "/v1/whoami", b"", {"X-RX-Munge": "MUNGE:forged:"})
    assert data["error"]["message"] == "MUNGE credential invalid (forged, or another MUNGE key)"
    assert [r["code"] for r in refusals(daemon)] == ["bad_credential", "bad_credential"]


def test_an_altered_body_is_refused_and_audited(daemon: Daemon, fake: FakeMunge) -> None:
    headers = bound(fake, "POST", "/v1/projects", b'{"name": "a"}')
    status, data = request(daemon, "POST", "/v1/projects", b'{"name": "b"}', headers)
    assert (status, data["error"]["code"]) == (401, "altered")
    [row] = refusals(daemon)
    assert (row["origin"], row["code"], row["target"]) == ("munge", "altered", "/v1/projects")


def test_a_claimed_uid_is_refused(daemon: Daemon, fake: FakeMunge) -> None:
    headers = bound(fake, "GET", "/v1/whoami", b"", claim=os.getuid() + 1)
    status, data = request(daemon, "GET", "/v1/whoami", b"", headers)
    assert (status, data["error"]["code"]) == (403, "uid_mismatch")


def test_munged_down_is_503_and_not_a_refusal_of_the_caller(
    daemon: Daemon, fake: FakeMunge
) -> None:
    fake.down = True
    status, data = request(daemon, "GET", "/v1/whoami", b"", bound(fake, "GET", "/v1/whoami", b""))
    assert status == 503
    assert data["error"]["message"] == (
        "rxd cannot check MUNGE credentials: Failed to connect to munged"
    )
    assert refusals(daemon) == []


def test_a_refusal_stands_when_its_audit_cannot_be_written(
    daemon: Daemon, fake: FakeMunge, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(munge_door, "_audit_refusal", broken)
    status, data = request(daemon, "GET", "/v1/whoami", b"", {})
    assert (status, data["error"]["code"]) == (401, "no_credential")


def stream_app(daemon: Daemon, seen: list[object]) -> Callable[[Callable[[TestClient], Any]], Any]:
    """The door in front of a stand-in import route that hashes the body as it streams and
    checks the proof after the last byte, as routes_export.py does."""
    stand_in = web.RouteTableDef()

    @stand_in.post(route.PROJECT_IMPORT)
    async def import_(request: web.Request) -> web.Response:
        body = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_chunked(1 << 20):
            body.update(chunk)
            size += len(chunk)
        proof = door_stream.proof_of(request)
        seen.append(proof)
        assert proof is not None
        proof.verify(body.digest())
        return web.json_response({"bytes": size})

    def call_with(send: Callable[[TestClient], Any]) -> Any:
        async def run() -> Any:
            app = make_app(
                list(stand_in),
                {DAEMON: daemon},
                identify=munge_door.munge_identify(munge_door.RefusalLimiter()),
            )
            async with TestClient(TestServer(app)) as client:
                return await send(client)

        return asyncio.run(run())

    return call_with


def test_an_import_s_body_streams_past_the_cap_and_is_proven_after_its_last_byte(
    daemon: Daemon, fake: FakeMunge
) -> None:
    seen: list[object] = []
    call_with = stream_app(daemon, seen)
    target = "/v1/projects/alpha/import"
    archive = os.urandom(3 << 20)  # three times what the door reads whole

    def send(body: bytes, headers: dict[str, str]) -> Callable[[TestClient], Any]:
        async def run(client: TestClient) -> tuple[int, dict]:
            response = await client.post(target, data=body, headers=headers)
            return response.status, json.loads(await response.read())

        return run

    digest = {request_binding.BODY_DIGEST_HEADER: hashlib.sha256(archive).hexdigest()}
    headers = bound(fake, "POST", target, archive) | digest
    assert call_with(send(archive, headers)) == (200, {"bytes": 3 << 20})
    # The same credential again: a replay, refused before the route runs.
    status, data = call_with(send(archive, headers))
    assert (status, data["error"]["code"]) == (401, "bad_credential")
    # One byte changed in the middle: refused after the last byte, and audited.
    altered = bytearray(archive)
    altered[len(altered) // 2] ^= 1
    status, data = call_with(send(bytes(altered), bound(fake, "POST", target, archive) | digest))
    assert (status, data["error"]["code"]) == (401, "altered")
    assert "nothing was changed" in data["error"]["message"]
    assert len(seen) == 2
    assert [(r["code"], r["target"]) for r in refusals(daemon)] == [
        ("bad_credential", target),
        ("altered", target),
    ]


def test_a_streamed_body_s_binding_is_checked_before_the_route_runs(
    daemon: Daemon, fake: FakeMunge
) -> None:
    seen: list[object] = []
    call_with = stream_app(daemon, seen)
    target = "/v1/projects/alpha/import"
    archive = b"an archive"

    def send(headers: dict[str, str], path: str = target) -> Callable[[TestClient], Any]:
        async def run(client: TestClient) -> tuple[int, str]:
            response = await client.post(path, data=archive, headers=headers)
            return response.status, json.loads(await response.read())["error"]["code"]

        return run

    honest = {request_binding.BODY_DIGEST_HEADER: hashlib.sha256(archive).hexdigest()}
    other = {request_binding.BODY_DIGEST_HEADER: hashlib.sha256(b"another").hexdigest()}
    # No digest announced; another digest than the credential's; a credential made for another
    # request (whoami) moved onto this one; one made for another project's import.
    assert call_with(send(bound(fake, "POST", target, archive))) == (401, "no_digest")
    assert call_with(send(bound(fake, "POST", target, archive) | other)) == (401, "altered")
    assert call_with(send(bound(fake, "GET", "/v1/whoami", b"") | honest)) == (401, "altered")
    moved = bound(fake, "POST", "/v1/projects/beta/import", archive) | honest
    assert call_with(send(moved)) == (401, "altered")
    assert seen == []  # the route never ran


def test_any_other_route_still_reads_its_body_whole_and_capped(
    daemon: Daemon, fake: FakeMunge
) -> None:
    body = b"x" * (2 << 20)
    status, data = request(
        daemon, "POST", "/v1/projects", body, bound(fake, "POST", "/v1/projects", body)
    )
    assert status == 413, data
