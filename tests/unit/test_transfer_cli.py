"""rxctl's side of export and import (cli/transfer.py, commands_export.py) against a stand-in rxd on
a Unix socket: a whole archive lands in the file, a cut one leaves nothing, an existing file is
never written over, rxd's refusals are one line, and the upload carries the file's bytes."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from rxslurm.cli import transfer
from rxslurm.cli.commands_export import progress_line
from rxslurm.cli.main import cli


class StandIn:
    """Answers each connection with ``answer`` (raw HTTP) after reading the request; keeps what
    it read."""

    def __init__(self, path: Path, answer: bytes) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head = data.split(b"\r\n\r\n")[0].decode()
                length = 0
                for line in head.split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":")[1])
                while len(data) - len(head) - 4 < length:
                    data += conn.recv(65536)
                self.requests.append(data)
                conn.sendall(self.answer)


@pytest.fixture
def sock(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "rxd.sock"


def chunked(*chunks: bytes, last: bool = True) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    return head + body + (b"0\r\n\r\n" if last else b"")


def json_answer(status: int, body: object) -> bytes:
    raw = json.dumps(body).encode()
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(raw), raw)


def rxctl(sock: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--socket", str(sock), *args])
    return result.exit_code, result.output


def test_a_whole_archive_lands_in_the_file(sock: Path, tmp_path: Path) -> None:
    server = StandIn(sock, chunked(b"abc" * 1000, b"def"))
    out = tmp_path / "a.tar.gz"
    code, said = rxctl(sock, "export", "--project", "alpha", "-o", str(out), "--workspace")
    assert code == 0, said
    assert out.read_bytes() == b"abc" * 1000 + b"def"
    assert said == f"exported alpha to {out} (2.9 KiB)\n"  # 3003 bytes
    assert server.requests[0].startswith(b"GET /v1/projects/alpha/export?workspace=1 HTTP/1.1")


def test_a_cut_archive_leaves_no_file(sock: Path, tmp_path: Path) -> None:
    StandIn(sock, chunked(b"abc", last=False))
    out = tmp_path / "a.tar.gz"
    code, said = rxctl(sock, "export", "--project", "alpha", "-o", str(out))
    assert code == 1 and said == "Error: rxd's answer ended early\n"
    assert list(tmp_path.iterdir()) == [sock]


def test_an_existing_file_is_never_written_over(sock: Path, tmp_path: Path) -> None:
    StandIn(sock, chunked(b"new"))
    out = tmp_path / "a.tar.gz"
    out.write_bytes(b"old")
    code, said = rxctl(sock, "export", "--project", "alpha", "-o", str(out))
    assert code == 1 and "exists" in said and out.read_bytes() == b"old"


def test_rxd_s_refusal_is_one_line(sock: Path, tmp_path: Path) -> None:
    message = "the container of alpha is awake (running): `rxctl stop --project alpha` first"
    StandIn(sock, json_answer(409, {"error": {"code": "conflict", "message": message}}))
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"x" * 5000)
    code, said = rxctl(sock, "import", "--project", "alpha", str(archive))
    assert (code, said) == (1, f"Error: {message}\n")


def test_the_upload_carries_the_file(sock: Path, tmp_path: Path) -> None:
    server = StandIn(sock, json_answer(200, {"imported": True, "workspace_folder": "imported-1"}))
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(bytes(range(256)) * 10_000)
    code, said = rxctl(sock, "import", "--project", "alpha", str(archive))
    assert code == 0, said
    assert "imported-1/" in said
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/projects/alpha/import HTTP/1.1")
    assert b"Content-Length: 2560000" in head and body == archive.read_bytes()


def test_an_upload_over_the_network_door_binds_the_whole_archive_s_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in on TCP; the credential is what the binding says (MUNGE itself is the cluster
    # tests' business: tests/test_login_node.py).
    listener = socket.socket(socket.AF_INET)
    listener.bind(("127.0.0.1", 0))
    server = StandIn(tmp_path / "unused.sock", json_answer(200, {"imported": True}))
    server.sock.close()
    server.sock = listener
    listener.listen()
    server.thread = threading.Thread(target=server._serve, daemon=True)
    server.thread.start()
    bound: list[tuple[str, str, bytes, bytes | None]] = []

    def munge_header(
        door: object, method: str, target: str, body: bytes, body_sha256: bytes | None = None
    ) -> tuple[str, str]:
        bound.append((method, target, body, body_sha256))
        return "X-RX-Munge", "CREDENTIAL"

    monkeypatch.setattr(transfer, "munge_header", munge_header)
    archive = tmp_path / "a.tar.gz"
    data = os.urandom(3 << 20)  # over the 1 MiB a bound body may otherwise have
    archive.write_bytes(data)
    port = listener.getsockname()[1]
    result = CliRunner().invoke(
        cli,
        ["import", "--project", "alpha", str(archive)],
        env={"RXSLURM_SERVER": f"127.0.0.1:{port}", "RXCTL_SOCKET": ""},
    )
    assert result.exit_code == 0, result.output
    assert bound == [("POST", "/v1/projects/alpha/import", b"", hashlib.sha256(data).digest())]
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    assert b"\r\nX-RX-Munge: CREDENTIAL" in head
    announced = b"X-RX-Body-SHA256: " + hashlib.sha256(data).hexdigest().encode()
    assert announced in head.split(b"\r\n")
    assert body == data  # read again from its start after the digest


def test_a_refusal_writes_nothing_and_needs_no_writable_folder(sock: Path, tmp_path: Path) -> None:
    StandIn(sock, json_answer(403, {"error": {"code": "forbidden", "message": "no export"}}))
    out = tmp_path / "missing-folder" / "a.tar.gz"
    code, said = rxctl(sock, "export", "--project", "alpha", "-o", str(out))
    assert (code, said) == (1, "Error: no export\n")


def test_an_unwritable_file_is_one_line(sock: Path, tmp_path: Path) -> None:
    StandIn(sock, chunked(b"abc"))
    out = tmp_path / "missing-folder" / "a.tar.gz"
    code, said = rxctl(sock, "export", "--project", "alpha", "-o", str(out))
    assert (code, said) == (1, f"Error: cannot write {out}: No such file or directory\n")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_on_a_terminal_only_with_the_total_when_known() -> None:
    screen = Terminal()
    show = progress_line("sent", screen, total=3 << 20)
    show(1 << 20)
    show(3 << 20)  # the last one always shows, however soon after
    assert screen.getvalue() == (
        "\rsent 1.0 MiB of 3.0 MiB\x1b[K" + "\rsent 3.0 MiB of 3.0 MiB\x1b[K"
    )
    exported = Terminal()
    progress_line("exported", exported)(2048)
    assert exported.getvalue() == "\rexported 2.0 KiB\x1b[K"
    piped = io.StringIO()
    progress_line("sent", piped, total=10)(10)
    assert piped.getvalue() == ""
