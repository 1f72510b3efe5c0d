"""The research platform's TCP access: a bearer token, acting for a named platform user."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rxslurm.daemon.config import parse_config
from tests.support.daemon import Rxd, free_port, new_rxd, running_rxd

pytestmark = pytest.mark.cluster  # projects are validated against Slurm's partitions

TOKEN = "t0k3n-" + "x" * 40


def platform_config(root: Path, port: int, token_file: Path) -> str:
    return (
        '[identity]\nmode = "platform"\n'
        f'[platform]\nlisten = "127.0.0.1:{port}"\ntoken_file = "{token_file}"\n'
    )


def write_token(root: Path, mode: int = 0o600) -> Path:
    path = root / "platform.token"
    path.write_text(TOKEN + "\n")
    os.chmod(path, mode)
    return path


@pytest.fixture(scope="module")
def platform() -> Iterator[tuple[Rxd, int]]:
    port = free_port()
    with running_rxd(lambda root: platform_config(root, port, write_token(root))) as daemon:
        yield daemon, port


def call(
    port: int,
    method: str,
    path: str,
    body: dict | None = None,
    token: str | None = TOKEN,
    user: str | None = None,
) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if user is not None:
        headers["X-RX-User"] = user
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = conn.getresponse()
    data = json.loads(response.read() or b"{}")
    conn.close()
    return response.status, data


def admin_bindings(daemon: Rxd) -> list[dict]:
    return json.loads(daemon.rxctl(None, "admin", "bindings", "--json").stdout)


@pytest.mark.parametrize("token", [None, "wrong", TOKEN[:-1], ""])
def test_a_wrong_or_missing_token_is_refused_and_changes_nothing(platform, token) -> None:
    daemon, port = platform
    before = admin_bindings(daemon)
    intruder = f"intruder-{uuid.uuid4().hex[:8]}"
    status, data = call(port, "POST", "/v1/platform/users", {"id": intruder}, token=token)
    assert status == 401
    assert data["error"]["message"] == "missing or wrong platform token"
    status, _ = call(port, "GET", "/v1/projects", token=token, user="p-ana")
    assert status == 401
    assert admin_bindings(daemon) == before
    status, _ = call(port, "POST", "/v1/platform/codes", {"platform_user": "intruder"})
    assert (
        status == 201
    )  # the right token could have made it: so "intruder" was never created before


def test_the_platform_binds_users_and_acts_for_them_under_their_roles(platform) -> None:
    daemon, port = platform
    assert call(port, "POST", "/v1/platform/users", {"id": "p-ana", "display_name": "Ana"})[0] in (
        200,
        201,
    )
    status, code = call(
        port, "POST", "/v1/platform/codes", {"platform_user": "p-ana", "linux_user": "rxalice"}
    )
    assert status == 201
    bound = daemon.rxctl("rxalice", "bind", code["code"])
    assert bound.returncode == 0, bound.stderr
    me = json.loads(daemon.rxctl("rxalice", "whoami", "--json").stdout)
    assert me["platform_user"] == "p-ana"
    # Acting for p-ana: her projects, her role.
    status, project = call(port, "POST", "/v1/projects", {"name": "plat"}, user="p-ana")
    assert status == 201, project
    assert project["role"] == "owner" and project["runtime_user"] == "rxalice"
    call(port, "POST", "/v1/platform/users", {"id": "p-ben"})
    status, data = call(port, "GET", "/v1/projects/plat", user="p-ben")
    assert status == 404
    status, _ = call(
        port, "POST", "/v1/projects/plat/members", {"user": "p-ben", "role": "viewer"}, user="p-ana"
    )
    assert status == 201
    status, data = call(port, "GET", "/v1/projects/plat", user="p-ben")
    assert status == 200 and data["role"] == "viewer"
    status, data = call(port, "PATCH", "/v1/projects/plat/settings", {"cpus": 2}, user="p-ben")
    assert status == 403
    assert (
        data["error"]["message"] == "edit-settings in project plat needs role owner; you are viewer"
    )
    # A body claiming to be someone else changes nothing: only the token holder's header decides.
    status, data = call(
        port, "GET", "/v1/whoami", {"platform_user": "p-ana", "uid": 0}, user="p-ben"
    )
    assert (status, data["platform_user"], data["admin"]) == (200, "p-ben", False)
    # Secrets through the platform (issue 17): the owner sets one, the viewer sees its name only.
    status, data = call(
        port, "PUT", "/v1/projects/plat/secrets/API_TOKEN", {"value": "plat-s3cret"}, user="p-ana"
    )
    assert status == 200 and data["secret"]["name"] == "API_TOKEN", data
    status, data = call(port, "GET", "/v1/projects/plat/secrets", user="p-ben")
    assert status == 200 and [s["name"] for s in data["secrets"]] == ["API_TOKEN"]
    assert "plat-s3cret" not in json.dumps(data)
    status, _ = call(port, "PUT", "/v1/projects/plat/secrets/X", {"value": "x"}, user="p-ben")
    assert status == 403


def test_the_platform_cannot_bind_or_act_without_a_user(platform) -> None:
    daemon, port = platform
    status, data = call(port, "GET", "/v1/projects")
    assert status == 403 and "X-RX-User" in data["error"]["message"]
    call(port, "POST", "/v1/platform/users", {"id": "p-cy"})
    status, code = call(port, "POST", "/v1/platform/codes", {"platform_user": "p-cy"})
    status, data = call(port, "POST", "/v1/bind", {"code": code["code"]}, user="p-cy")
    assert status == 403
    assert "own Linux identity" in data["error"]["message"]
    status, data = call(port, "GET", "/v1/admin/bindings", user="p-cy")
    assert status == 403
    status, data = call(port, "GET", "/v1/projects", user="nobody-such")
    assert status == 404


@pytest.mark.parametrize("mode", [0o644, 0o640])
def test_rxd_refuses_a_token_file_others_can_read(mode: int) -> None:
    port = free_port()
    daemon = new_rxd(lambda root: platform_config(root, port, write_token(root, mode)))
    daemon.start(wait=False)
    assert daemon.proc is not None and daemon.proc.wait(timeout=30) == 1
    assert "must be owned by root with mode 0600" in daemon.log_text()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.7", "[::]", "platform.example"])
def test_a_listener_beyond_loopback_without_tls_is_refused_at_start(host: str) -> None:
    port = free_port()
    daemon = new_rxd(
        lambda root: platform_config(root, port, write_token(root)).replace("127.0.0.1", host),
        migrate=False,
    )
    daemon.start(wait=False)
    assert daemon.proc is not None and daemon.proc.wait(timeout=30) == 1
    errors = [line for line in daemon.log_text().splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, daemon.log_text()
    assert f"platform.listen '{host}:{port}' is not a loopback address" in errors[0]
    assert "set platform.tls_cert and platform.tls_key" in errors[0]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "localhost", "[::1]"])
def test_loopback_listeners_need_no_tls(host: str) -> None:
    config = parse_config({"platform": {"listen": f"{host}:8765"}})
    assert config.platform.listen == f"{host}:8765"


def self_signed(root: Path) -> tuple[Path, Path]:
    cert, key = root / "platform.crt", root / "platform.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=rxd-test", "-addext", "subjectAltName=IP:127.0.0.1"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    os.chmod(key, 0o600)
    return cert, key


def tls_config(root: Path, port: int, key_mode: int = 0o600) -> str:
    cert, key = self_signed(root)
    os.chmod(key, key_mode)
    return (
        platform_config(root, port, write_token(root)).replace("127.0.0.1", "0.0.0.0")
        + f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
    )


def test_with_tls_the_platform_is_served_on_any_address() -> None:
    port = free_port()
    with running_rxd(lambda root: tls_config(root, port)) as daemon:
        context = ssl.create_default_context(cafile=str(daemon.root / "platform.crt"))
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=context)
        conn.request("GET", "/v1/projects", headers={"Authorization": f"Bearer {TOKEN}"})
        response = conn.getresponse()
        body = json.loads(response.read())
        conn.close()
        # Past TLS and the token: refused only for naming no platform user.
        assert response.status == 403 and "X-RX-User" in body["error"]["message"]
        # Plain HTTP on that port gets no answer from the API.
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            call(port, "GET", "/v1/projects")


def test_a_tls_key_others_can_read_is_refused_at_start() -> None:
    port = free_port()
    daemon = new_rxd(lambda root: tls_config(root, port, key_mode=0o644))
    daemon.start(wait=False)
    assert daemon.proc is not None and daemon.proc.wait(timeout=30) == 1
    assert "must be a regular file of root, mode 0600" in daemon.log_text()
