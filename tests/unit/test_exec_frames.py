"""The framing of a platform exec's answer (protocol/exec_frames.py) and the checks of its
request (exec/platform_exec.py): records survive any split of the byte stream, hostile bytes are
refused with a reason, bad bodies are a 400 that names the field."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.daemon.errors import BadRequest
from rxslurm.daemon.exec.platform_exec import MAX_STDIN, exec_request
from rxslurm.protocol.exec_frames import MAX_PAYLOAD, FrameReader, control, frame
from rxslurm.protocol.exec_wire import CONTROL, STDERR, STDIN, STDOUT, ProtocolError

records = st.lists(
    st.tuples(st.sampled_from([STDOUT, STDERR, CONTROL]), st.binary(max_size=300)), max_size=20
)


@given(records, st.lists(st.integers(min_value=0, max_value=5000), max_size=10))
def test_records_come_back_whole_and_in_order_however_the_stream_is_cut(
    sent: list[tuple[bytes, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(frame(channel, payload) for channel, payload in sent)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    reader = FrameReader()
    got = []
    for start, end in zip(points, points[1:], strict=False):
        got += reader.feed(stream[start:end])
    assert got == sent
    assert not reader.pending


@given(records, st.integers(min_value=1, max_value=8))
def test_a_cut_record_is_pending_not_returned(sent: list[tuple[bytes, bytes]], short: int) -> None:
    stream = b"".join(frame(channel, payload) for channel, payload in sent) + frame(
        STDOUT, b"x" * 8
    )
    reader = FrameReader()
    assert reader.feed(stream[:-short]) == sent
    assert reader.pending


@given(st.binary(max_size=2000))
def test_any_bytes_give_records_or_a_reason_never_more_than_the_limit(data: bytes) -> None:
    reader = FrameReader()
    try:
        for channel, payload in reader.feed(data):
            assert channel in (STDOUT, STDERR, CONTROL)
            assert len(payload) <= MAX_PAYLOAD
    except ProtocolError as exc:
        assert str(exc)


def test_an_unknown_channel_or_an_oversized_record_is_refused() -> None:
    with pytest.raises(ProtocolError, match="unknown channel"):
        FrameReader().feed(struct.pack(">cI", STDIN, 1) + b"x")
    with pytest.raises(ProtocolError, match="longer than"):
        FrameReader().feed(struct.pack(">cI", STDOUT, MAX_PAYLOAD + 1))
    with pytest.raises(ValueError):
        frame(STDIN, b"")


def test_a_control_record_is_one_json_object() -> None:
    [(channel, payload)] = FrameReader().feed(control({"exit": 3, "timed_out": True}))
    assert (channel, json.loads(payload)) == (CONTROL, {"exit": 3, "timed_out": True})


def test_a_request_becomes_the_exec_protocols_with_the_timeout_bounding_the_wake() -> None:
    request, wire, stdin = exec_request(
        "alpha", {"argv": ["echo", "hi"], "timeout": 5, "stdin": "é"}
    )
    assert (request.project, request.argv, request.timeout) == ("alpha", ("echo", "hi"), 5.0)
    assert request.cwd == "/workspace" and request.wake
    assert wire == {"argv": ["echo", "hi"], "project": "alpha", "timeout": 5}
    assert stdin == "é".encode()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"argv": ["x"], "timeout": 0}, "timeout must be"),
        ({"argv": ["x"], "timeout": True}, "timeout must be"),
        ({"argv": ["x"], "timeout": float("inf")}, "timeout must be"),
        ({"argv": ["x"], "timeout": "5"}, "timeout must be"),
        ({"argv": ["x"], "stdin": 5}, "stdin must be a string"),
        ({"argv": ["x"], "stdin": "\ud800"}, "stdin must be valid Unicode"),
        ({"argv": ["x"], "stdin": "x" * (MAX_STDIN + 1)}, "stdin is longer"),
        ({"argv": []}, "argv must name a command"),
        ({"argv": "ls"}, "argv must be a list"),
        ({"argv": ["x"], "cwd": "relative"}, "cwd must be an absolute path"),
    ],
)
def test_a_bad_request_is_refused_with_its_reason(body: dict, reason: str) -> None:
    with pytest.raises(BadRequest, match=reason):
        exec_request("alpha", body)
