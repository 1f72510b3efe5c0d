"""Property tests of the exec socket's wire reader: random and hostile bytes never crash it, never
grow its memory past the limit, and are refused with a reason (ProtocolError / BadRequest)."""

from __future__ import annotations

import os
import socket
import threading

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rxslurm.daemon.errors import BadRequest
from rxslurm.daemon.exec.server import (
    MAX_MESSAGE,
    ExecRequest,
    LineReader,
    ProtocolError,
    decode,
    receive_request,
)

# Any code point, lone surrogates included: JSON's \ud800 decodes to one, and no OS takes it.
any_text = st.text(
    st.characters(exclude_categories=())
    | st.sampled_from(["\ud800", "\udfff", "\0", "\n", "\u202e"])
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=20,
)

# Bytes that break naive readers: deep nesting, huge numbers, bad UTF-8, lone surrogates, NULs.
HOSTILE_LINES = [
    b"[" * 100_000,
    b'{"a":' * 50_000,
    b"1" * 10_000,
    b"\xff\xfe\xfd",
    b'{"project": "\\ud800", "argv": ["x"]}',
    b'{"project": "a", "argv": ["\\u0000"]}',
    b"\x00" * 100,
    b"{}" * 1000,
    b'"just a string"',
    b"NaN",
]


@given(st.lists(st.binary(max_size=3000), max_size=30), st.integers(min_value=1, max_value=4096))
def test_the_line_reader_only_refuses_and_stays_bounded(chunks: list[bytes], limit: int) -> None:
    reader = LineReader(limit=limit)
    for chunk in chunks:
        try:
            messages = reader.feed(chunk)
        except ProtocolError as exc:
            assert str(exc)
            return
        assert all(isinstance(m, dict) for m in messages)
        assert len(reader.buffer) <= limit


@given(st.sampled_from(HOSTILE_LINES) | st.binary(max_size=2000))
def test_decoding_any_line_gives_an_object_or_a_protocol_error(line: bytes) -> None:
    try:
        message = decode(line)
    except ProtocolError as exc:
        assert str(exc) in ("a message is not valid JSON", "a message must be a JSON object")
    else:
        assert isinstance(message, dict)


request_like = st.fixed_dictionaries(
    {},
    optional={
        "project": json_values,
        "argv": json_values | st.lists(any_text, max_size=5),
        "shell": json_values,
        "tty": json_values,
        "wake": json_values,
        "cwd": json_values | any_text.map(lambda t: "/" + t),
        "term": json_values,
    },
)


valid_looking = st.fixed_dictionaries(
    {"project": any_text.filter(bool), "argv": st.lists(any_text, min_size=1, max_size=3)},
    optional={"cwd": any_text.map(lambda t: "/" + t)},
)


@given(valid_looking | request_like | st.dictionaries(any_text, json_values, max_size=5))
def test_any_object_parses_or_is_refused_with_a_reason(data: dict) -> None:
    try:
        request = ExecRequest.parse(data)
    except BadRequest as exc:
        assert exc.message and "\n" not in exc.message
        return
    # What passes is what srun_argv and Popen can take: strings that encode, no NULs.
    for word in (request.project, *request.argv, request.cwd or "/"):
        assert "\0" not in word
        word.encode()


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.sampled_from(HOSTILE_LINES) | st.binary(max_size=MAX_MESSAGE),
    st.integers(min_value=0, max_value=5),
    st.booleans(),
)
def test_the_request_reader_refuses_hostile_bytes_and_leaks_no_descriptor(
    data: bytes, fd_count: int, end_line: bool
) -> None:
    before = _open_fds()
    client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        payload = data + (b"\n" if end_line else b"")
        first, rest = payload[:1] or b" ", payload[1:]
        socket.send_fds(client, [first], [0] * fd_count)
        # The socket buffer is smaller than the largest payloads: send from a thread, then hang up.
        sender = threading.Thread(target=_send_and_close, args=(client, rest))
        sender.start()
        try:
            got, fds, _ = receive_request(server, timeout=5)
        except ProtocolError as exc:
            assert str(exc)
        else:
            assert isinstance(got, dict) and len(fds) == 3
            for fd in fds:
                os.close(fd)
        server.close()  # a sender blocked on a full buffer gets EPIPE
        sender.join()
    finally:
        client.close()
        server.close()
    assert _open_fds() == before


def _send_and_close(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
