"""Who owns the other end of a local TCP connection (cli/peer_uid.py), as `rxctl port-forward`
asks before relaying one (tests/test_service_e2e.py checks another user is refused for real)."""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
import struct
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.cli import commands_port_forward
from rxslurm.cli import peer_uid as peer_uid_module
from rxslurm.cli.peer_uid import (
    Entry,
    decode_address,
    encode_address,
    owner_in,
    parse_table,
    peer_uid,
)


def encode(host: str, port: int) -> str:
    """An address as the kernel prints it in /proc/net/tcp{,6}."""
    raw = ipaddress.ip_address(host).packed
    order = -1 if sys.byteorder == "little" else 1
    words = [raw[i : i + 4][::order].hex().upper() for i in range(0, len(raw), 4)]
    return "".join(words) + f":{port:04X}"


@given(st.ip_addresses(v=4), st.integers(0, 65535))
def test_ipv4_addresses_decode_as_printed(host: ipaddress.IPv4Address, port: int) -> None:
    assert decode_address(encode(str(host), port)) == (str(host), port)


@given(st.ip_addresses(v=6), st.integers(0, 65535))
def test_ipv6_addresses_decode_mapped_ones_as_ipv4(host: ipaddress.IPv6Address, port: int) -> None:
    expected = str(host.ipv4_mapped) if host.ipv4_mapped else str(host)
    assert decode_address(encode(str(host), port)) == (expected, port)


@given(st.ip_addresses(v=4), st.integers(0, 65535), st.sampled_from([4, 16]))
def test_encoding_is_decodings_inverse_in_either_table(
    host: ipaddress.IPv4Address, port: int, size: int
) -> None:
    printed = encode_address((str(host), port), size)
    assert printed is not None and len(printed) == size * 2 + 5
    assert decode_address(printed) == (str(host), port)


def test_only_a_mapped_ipv6_address_can_be_in_the_ipv4_table() -> None:
    assert encode_address(("::1", 80), 4) is None
    assert encode_address(("::ffff:127.0.0.1", 80), 4) == encode_address(("127.0.0.1", 80), 4)


def test_the_peer_is_found_in_either_table_among_many(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    many = [line(n, ("127.0.0.1", 1000 + n), ("10.0.0.1", 22), "01", 0) for n in range(5, 500)]
    v4, v6 = tmp_path / "tcp", tmp_path / "tcp6"
    v4.write_text("\n".join([TABLE.splitlines()[0], *many, *TABLE.splitlines()[1:]]) + "\n")
    mapped = ("::ffff:127.0.0.1", 40005)
    v6.write_text("header\n" + line(0, mapped, ("::ffff:127.0.0.1", 8080), "01", 1003) + "\n")
    monkeypatch.setattr(peer_uid_module, "TABLES", (v4, v6))

    assert peer_uid(OURS, PEER) == 1002
    assert peer_uid(OURS, ("127.0.0.1", 40005)) == 1003  # an IPv6 socket's, IPv4-mapped
    assert peer_uid(OURS, ("127.0.0.1", 40001)) is None  # TIME_WAIT: nobody's
    assert peer_uid(OURS, ("127.0.0.1", 1005)) is None  # connected elsewhere


def test_loopback_on_this_machine_is_0100007f() -> None:
    if sys.byteorder != "little":
        pytest.skip("the printed form is the machine's byte order")
    assert decode_address("0100007F:1F90") == ("127.0.0.1", 8080)


@given(st.text(max_size=200))
def test_any_text_parses_to_entries_or_nothing(text: str) -> None:
    for entry in parse_table("header\n" + text):
        assert isinstance(entry.uid, int)


def line(number: int, local: tuple[str, int], remote: tuple[str, int], state: str, uid: int) -> str:
    zeros = "00000000:00000000 00:00000000 00000000"
    return f"{number}: {encode(*local)} {encode(*remote)} {state} {zeros} {uid} 0 {number} 1"


OURS, PEER = ("127.0.0.1", 8080), ("127.0.0.1", 40000)
TABLE = "\n".join(
    [
        "sl local_address rem_address st tx_queue rx_queue tr tm->when retrnsmt uid timeout inode",
        line(0, OURS, ("0.0.0.0", 0), "0A", 1001),  # the listener
        line(1, OURS, PEER, "01", 1001),  # our end
        line(2, PEER, OURS, "01", 1002),  # theirs
        line(3, ("127.0.0.1", 40001), OURS, "06", 0),
        "4: garbage",
    ]
)


def test_the_peer_is_the_entry_with_the_pair_reversed() -> None:
    ours, peer = OURS, PEER
    assert owner_in(parse_table(TABLE), ours, peer) == 1002  # not 1001, our own end
    assert owner_in(parse_table(TABLE), ours, ("127.0.0.1", 40001)) is None  # TIME_WAIT
    assert owner_in(parse_table(TABLE), ours, ("127.0.0.1", 40002)) is None
    assert owner_in(iter([Entry(peer, ours, "01", 7)]), ("::ffff:127.0.0.1", 8080), peer) == 7


def test_a_real_connection_of_this_process_is_its_own() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname()) as client:
            conn, peer = listener.accept()
            with conn:
                assert peer == client.getsockname()
                assert peer_uid(conn.getsockname(), peer) == os.getuid()
                assert commands_port_forward.accepted(conn, peer)


def test_another_users_connection_is_refused_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(commands_port_forward, "peer_uid", lambda ours, peer: os.getuid() + 1)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname()):
            conn, peer = listener.accept()
            with conn:
                assert not commands_port_forward.accepted(conn, peer)
    said = capsys.readouterr().err.splitlines()
    assert said == [
        f"rxctl port-forward: refused a connection from {peer[0]}:{peer[1]} "
        f"(uid {os.getuid() + 1}, not yours)"
    ]


def test_a_unix_socket_is_made_for_its_user_alone_and_never_over_a_path(tmp_path: Path) -> None:
    path = tmp_path / "forward.sock"
    listener = commands_port_forward.unix_listener(path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_ISSOCK(path.stat().st_mode)
        listener.listen(1)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
            conn, peer = listener.accept()
            with conn:
                assert commands_port_forward.accepted(conn, peer)
        with pytest.raises(click.ClickException, match="cannot listen on"):
            commands_port_forward.unix_listener(path)  # there already: left alone
    finally:
        listener.close()
    (tmp_path / "taken").write_text("mine\n")
    with pytest.raises(click.ClickException):
        commands_port_forward.unix_listener(tmp_path / "taken")
    assert (tmp_path / "taken").read_text() == "mine\n"


def test_local_and_unix_go_alone() -> None:
    runner = CliRunner()
    for args in ([], ["8080", "--unix", "/tmp/x.sock"]):
        result = runner.invoke(commands_port_forward.port_forward, args, obj=None)
        assert result.exit_code == 2 and "either LOCAL" in result.output


def test_a_connection_gone_before_the_lookup_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The peer resets the connection between accept and the lookup: its socket is gone from the
    # table, so no owner is found, and a connection nobody can be shown to own is never relayed.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        # SO_LINGER 0: close sends a RST and frees the socket at once (no TIME_WAIT, no FIN_WAIT).
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn, peer = listener.accept()
        client.close()
        with conn:
            assert peer_uid(conn.getsockname(), peer) is None
            assert not commands_port_forward.accepted(conn, peer)
    assert "(an unknown user, not yours)" in capsys.readouterr().err
