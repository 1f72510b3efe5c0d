"""Property tests of the exec agent's wire format (protocol/agent_wire.py): frames survive any
split of the stream, hostile bytes never crash a reader or grow it past its limit, tickets verify
only as signed, and the agent's request parser and the holder's endpoint file refuse garbage with
a reason."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.agent.command import BadRequest, Request
from rxslurm.protocol.agent_wire import (
    HEADER,
    Endpoint,
    FrameReader,
    WireError,
    frame,
    parse_endpoint,
    sign,
    verify,
)

channels = st.sampled_from([b"c", b"0", b"1", b"2"])
frames = st.lists(st.tuples(channels, st.binary(max_size=300)), max_size=8)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)


@given(frames, st.data())
def test_frames_come_out_whole_however_the_stream_is_cut(sent, data) -> None:
    stream = b"".join(frame(c, p) for c, p in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    reader = FrameReader()
    got: list[tuple[bytes, bytes]] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        got += reader.feed(stream[start:cut])
        start = cut
    assert got == sent and reader.buffer == b""


@given(st.binary(max_size=2000))
def test_random_bytes_never_crash_a_reader_nor_grow_it_past_its_limit(noise) -> None:
    reader = FrameReader(limit=512)
    try:
        reader.feed(noise)
    except WireError as exc:
        assert "longer than 512 bytes" in str(exc)
    # A frame is held only until its length arrives, and its length is checked first.
    assert len(reader.buffer) <= HEADER.size + 512


def test_a_frame_announcing_more_than_the_limit_is_refused_before_it_arrives() -> None:
    with pytest.raises(WireError, match="longer than 16 bytes"):
        FrameReader(limit=16).feed(HEADER.pack(b"c", 2**31))


@given(
    st.binary(min_size=32, max_size=32),
    st.integers(0, 2**32 - 2),
    st.integers(1, 10**9),
    st.integers(0, 2**33),
)
def test_a_ticket_verifies_for_its_uid_and_job_until_it_expires(key, uid, job, now) -> None:
    ticket = sign(key, uid, job, now=now, ttl_s=60)
    assert verify(key, ticket, uid=uid, job_id=job, now=now + 60).uid == uid
    for wrong in (
        {"uid": uid + 1, "job_id": job, "now": now},
        {"uid": uid, "job_id": job + 1, "now": now},
        {"uid": uid, "job_id": job, "now": now + 61},
    ):
        with pytest.raises(WireError):
            verify(key, ticket, **wrong)
    with pytest.raises(WireError, match="not rxd's"):
        verify(bytes(b ^ 1 for b in key), ticket, uid=uid, job_id=job, now=now)


@given(st.text(max_size=200))
def test_any_text_as_a_ticket_is_refused_with_a_reason(text) -> None:
    with pytest.raises(WireError):
        verify(bytes(32), text, uid=1, job_id=1, now=0)


@given(st.binary(max_size=300))
def test_the_endpoint_file_is_read_or_refused_with_a_reason(data) -> None:
    try:
        endpoint = parse_endpoint(data)
    except WireError:
        return
    assert 0 < endpoint.port < 65536 and len(endpoint.key) == 32


def test_the_endpoint_file_round_trips() -> None:
    endpoint = Endpoint(host="10.1.2.3", port=40123, key=bytes(range(32)))
    assert parse_endpoint(endpoint.line().encode()) == endpoint
    for bad in (b"", b"host 0 " + b"a" * 64, b"h 1 short", b"h;rm 1 " + b"a" * 64):
        with pytest.raises(WireError):
            parse_endpoint(bad)


@given(
    st.dictionaries(
        st.sampled_from(["argv", "shell", "tty", "cwd", "term", "winsize", "x"]),
        json_values,
        max_size=6,
    )
)
def test_the_agents_request_parser_takes_or_refuses_anything(data: dict[str, Any]) -> None:
    try:
        request = Request.parse(data)
    except BadRequest:
        return
    assert request.shell != bool(request.argv)
    assert request.cwd is None or request.cwd.startswith("/")
