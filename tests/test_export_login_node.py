"""Export and import from a login node (tests/support/login_node.py): rxd reached only through its
MUNGE-authenticated network door, an archive of over 20 MiB both ways, the package installed in one
project working in the other; an upload altered on the way, or its credential replayed, is refused
with the project unchanged."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import ok, output, refused
from tests.support.cluster import run_as
from tests.support.daemon import VENV_BIN, free_port, running_rxd
from tests.support.lifecycle import lifecycle_config, make_project, wait_state
from tests.support.login_node import run_on_login_node
from tests.support.munge import needs_munged
from tests.test_export_e2e import INSTALL, container_folder, digest, sleeping, workspace_of
from tests.test_login_node import LoginNode

pytestmark = [pytest.mark.cluster, needs_munged, pytest.mark.usefixtures("container_runtime")]

SOURCE = "lnexp-src"
TARGET = "lnexp-dst"
OWNER = "rxalice"
BIG = 20 << 20  # random, so the archive is as big: twenty times what the door reads whole

# Run as the owner on the login node: one upload of the archive with one byte changed halfway,
# under a credential bound to the honest archive, then the honest archive under the same
# credential (a replay). Prints each answer's status and JSON.
TAMPER = r"""
import hashlib, json, socket, sys
from rxslurm.cli.door import find_door, munge_header
archive, target = sys.argv[1:3]
data = open(archive, "rb").read()
door = find_door()
name, credential = munge_header(door, "POST", target, b"", hashlib.sha256(data).digest())
altered = bytearray(data)
altered[len(altered) // 2] ^= 0x40

def send(body):
    sock = socket.create_connection(door.host_port)
    head = (f"POST {target} HTTP/1.1\r\nHost: rxd\r\nConnection: close\r\n{name}: {credential}"
            f"\r\nX-RX-Body-SHA256: {hashlib.sha256(data).hexdigest()}"
            f"\r\nContent-Type: application/gzip\r\nContent-Length: {len(body)}\r\n\r\n")
    sock.sendall(head.encode() + body)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return {"status": int(head.split()[1]), "body": json.loads(body)}

print(json.dumps([send(bytes(altered)), send(data)]))
"""


@pytest.fixture(scope="module")
def login() -> Iterator[LoginNode]:
    port = free_port()
    with running_rxd(lambda root: f'listen = "127.0.0.1:{port}"\n' + lifecycle_config(root)) as rxd:
        for project in (SOURCE, TARGET):
            make_project(rxd, project)
        yield LoginNode(rxd, port)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    folder = Path(output(run_as(OWNER, ["mktemp", "-d", "/tmp/rx-lnexp-XXXXXX"])).strip())
    yield folder
    run_as(OWNER, ["rm", "-rf", str(folder)])


def state_of(login: LoginNode, project: str) -> tuple[str, list[str], list[str]]:
    folder = container_folder(login.rxd, project)
    return (
        digest(folder / "overlay.img"),
        sorted(os.listdir(folder)),
        sorted(os.listdir(workspace_of(login.rxd, project))),
    )


def test_a_big_archive_goes_out_and_back_in_through_the_door_and_the_package_works(
    login: LoginNode, scratch: Path
) -> None:
    rxd = login.rxd
    ok(login.rxctl(OWNER, "enable", "--project", SOURCE))
    wait_state(rxd, SOURCE, "running", timeout=180)
    ok(login.rxctl(OWNER, "exec", "--project", SOURCE, "--", "sh", "-c", INSTALL))
    big = workspace_of(rxd, SOURCE) / "big.bin"
    ok(run_as(OWNER, ["sh", "-c", f"head -c {BIG} /dev/urandom > {big}"]))
    ok(login.rxctl(OWNER, "stop", "--project", SOURCE))
    wait_state(rxd, SOURCE, "stopped")

    archive = scratch / "src.rx.tar.gz"
    said = output(
        login.rxctl(OWNER, "export", "--project", SOURCE, "-o", str(archive), "--workspace")
    )
    assert said.startswith(f"exported {SOURCE} to {archive} (")
    assert archive.stat().st_size > BIG
    with tarfile.open(archive, "r:gz") as tar:
        packed = tar.extractfile("workspace/big.bin")
        assert packed is not None
        assert hashlib.sha256(packed.read()).hexdigest() == digest(big)

    # Altered halfway, then replayed: refused, and the target is as it was.
    sleeping(rxd, TARGET)
    before = state_of(login, TARGET)
    target = f"/v1/projects/{TARGET}/import"
    python = str(VENV_BIN / "python")
    tampered = run_on_login_node(
        OWNER, [python, "-c", TAMPER, str(archive), target], login.hidden, login.env()
    )
    altered, replayed = json.loads(output(tampered))
    assert (altered["status"], altered["body"]["error"]["code"]) == (401, "altered")
    assert "nothing was changed" in altered["body"]["error"]["message"]
    assert (replayed["status"], replayed["body"]["error"]["code"]) == (401, "bad_credential")
    assert "replayed" in replayed["body"]["error"]["message"]
    assert state_of(login, TARGET) == before
    codes = rxd.ledger_rows(
        "SELECT json_extract(detail, '$.code') FROM events WHERE action = 'door.refused' "
        "AND json_extract(detail, '$.target') = ? ORDER BY id",
        [target],
    )
    assert [code for (code,) in codes] == ["altered", "bad_credential"]

    folder = container_folder(rxd, TARGET)
    imported = output(login.rxctl(OWNER, "import", "--project", TARGET, str(archive)))
    assert imported.startswith(f"imported {archive} into {TARGET}")
    assert digest(folder / "overlay.img.before-import") == before[0]
    (unpacked,) = [p for p in workspace_of(rxd, TARGET).iterdir() if p.name.startswith("imported-")]
    assert digest(unpacked / "big.bin") == digest(big)
    ((detail,),) = rxd.ledger_rows(
        "SELECT detail FROM events WHERE action = 'project.import' AND target_id = ?", [TARGET]
    )
    assert json.loads(detail)["received_bytes"] == archive.stat().st_size

    ok(login.rxctl(OWNER, "start", "--project", TARGET))
    wait_state(rxd, TARGET, "running", timeout=180)
    ran = login.rxctl(OWNER, "exec", "--project", TARGET, "--", "/opt/rxpkg/bin/rxpkg")
    assert output(ran) == "rxpkg works\n"
    # Awake: refused in one line through the door too.
    line = refused(login.rxctl(OWNER, "import", "--project", TARGET, str(archive)))
    assert "is awake" in line
    ok(login.rxctl(OWNER, "stop", "--project", TARGET))
    wait_state(rxd, TARGET, "stopped")
