"""Resolving a tag to its content digest (images/resolve.py) against a registry served here on
loopback: the anonymous bearer-token challenge, a registry that sends no digest header, a missing
tag, a malformed digest, and plain HTTP only where the config says. The script runs as this test's
user instead of the pull account (the unit tier has no other)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from rxslurm.daemon.images import resolve as resolve_module
from rxslurm.daemon.images.pull import PullSettings
from rxslurm.daemon.images.resolve import ResolveError, resolve, resolve_argv
from rxslurm.protocol.image_ref import parse_reference
from rxslurm.slurm.runas import RunAs

MANIFEST = json.dumps({"schemaVersion": 2, "layers": []}).encode()
DIGEST = "sha256:" + "a" * 64
TOKEN = "t0ken"


class Registry(BaseHTTPRequestHandler):
    """/v2/<repo>/manifests/<tag>: ``auth`` repos want the bearer token, ``nohead`` repos send no
    digest header, ``bad`` repos a malformed one; other tags are unknown."""

    seen: list[tuple[str, str, str]]

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        self.seen.append((self.command, self.path, self.headers.get("Authorization", "")))
        if self.path.startswith("/token?"):
            self._send(200, json.dumps({"token": TOKEN}).encode(), {})
            return
        repo, _, tag = self.path.removeprefix("/v2/").partition("/manifests/")
        if "auth" in repo and self.headers.get("Authorization") != f"Bearer {TOKEN}":
            host = f"http://{self.server.server_address[0]}:{self.server.server_address[1]}"
            challenge = f'Bearer realm="{host}/token",service="test",scope="repository:{repo}:pull"'
            self._send(401, b"", {"WWW-Authenticate": challenge})
            return
        if tag != "1":
            self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}', {})
            return
        headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
        if "nohead" not in repo:
            headers["Docker-Content-Digest"] = "sha256:nothex" if "bad" in repo else DIGEST
        self._send(200, MANIFEST if body else b"", headers)

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if body else len(MANIFEST)))
        self.end_headers()
        if body:
            self.wfile.write(body)


@pytest.fixture
def registry() -> Iterator[tuple[str, list[tuple[str, str, str]]]]:
    seen: list[tuple[str, str, str]] = []
    handler = type("Handler", (Registry,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def as_this_user(monkeypatch: pytest.MonkeyPatch) -> None:
    real = resolve_module.spawn
    monkeypatch.setattr(resolve_module, "spawn", lambda argv, user, **kw: real(argv, None, **kw))


def settings(tmp_path: Path, host: str) -> PullSettings:
    return PullSettings(
        account=RunAs("nobody", 65534, 65534, ()),
        work_dir=tmp_path / "work",
        image_dir=tmp_path / "images",
        binary="/bin/false",
        timeout_s=30.0,
        max_bytes=1 << 20,
        plain_http=(host,),
    )


def test_a_tag_resolves_to_the_digest_the_registry_names(tmp_path: Path, registry: Any) -> None:
    host, seen = registry
    assert resolve(settings(tmp_path, host), parse_reference(f"{host}/org/app:1")) == DIGEST
    assert seen == [("HEAD", "/v2/org/app/manifests/1", "")]


def test_the_anonymous_bearer_challenge_is_followed(tmp_path: Path, registry: Any) -> None:
    host, seen = registry
    assert resolve(settings(tmp_path, host), parse_reference(f"{host}/auth/app:1")) == DIGEST
    paths = [(method, path.split("?")[0], auth) for method, path, auth in seen]
    assert paths == [
        ("HEAD", "/v2/auth/app/manifests/1", ""),
        ("GET", "/token", ""),
        ("HEAD", "/v2/auth/app/manifests/1", f"Bearer {TOKEN}"),
    ]
    assert "scope=repository%3Aauth%2Fapp%3Apull" in seen[1][1]


def test_without_a_digest_header_the_manifest_itself_is_hashed(
    tmp_path: Path, registry: Any
) -> None:
    host, _ = registry
    got = resolve(settings(tmp_path, host), parse_reference(f"{host}/nohead/app:1"))
    assert got == "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("org/app:2", r"has no image org/app:2 \(manifest unknown\)"),
        ("bad/app:1", "the registry's digest is malformed"),
    ],
)
def test_what_the_registry_cannot_say_is_a_reason(
    tmp_path: Path, registry: Any, ref: str, reason: str
) -> None:
    host, _ = registry
    with pytest.raises(ResolveError, match=reason):
        resolve(settings(tmp_path, host), parse_reference(f"{host}/{ref}"))


def test_a_digest_needs_no_registry(tmp_path: Path) -> None:
    ref = parse_reference(f"nowhere.invalid/app@{DIGEST}")
    assert resolve(settings(tmp_path, "nowhere.invalid"), ref) == DIGEST


def test_https_unless_the_config_names_the_registry(tmp_path: Path) -> None:
    plain = settings(tmp_path, "127.0.0.1:5055")
    argv = resolve_argv(plain, parse_reference("127.0.0.1:5055/a/b:1"))
    assert argv[-4:] == ["http://127.0.0.1:5055", "a/b", "1", "30"]
    hub = resolve_argv(plain, parse_reference("python:3.12-slim"))
    assert hub[-4:-1] == ["https://registry-1.docker.io", "library/python", "3.12-slim"]
