"""The framing of a platform exec's answer (`POST /v1/projects/NAME/exec`, docs/api.md).

The answer's body is a sequence of records, each a channel byte, the payload's length as four
bytes (big-endian, unsigned) and the payload:

    1  the command's stdout, as it came
    2  its stderr
    c  one JSON object: progress while the container wakes, then exactly one final record,
       `{"exit": N}` (with `"timed_out": true` when rxd ended the command at its timeout) or
       `{"error": "...", "code": "..."}`; nothing follows it

A length says where a record ends, so output may hold any bytes (the WebSocket stream of the
network door has its own frames; HTTP's chunks have none a client sees).
"""

from __future__ import annotations

import json
import struct
from typing import Any

from rxslurm.protocol.exec_wire import CONTROL, STDERR, STDOUT, ProtocolError

CONTENT_TYPE = "application/vnd.rxslurm.exec-frames"
CHANNELS = (CONTROL, STDOUT, STDERR)
HEADER = struct.Struct(">cI")
# A longer record is refused by a reader: rxd writes at most 64 KiB at a time.
MAX_PAYLOAD = 1024 * 1024


def frame(channel: bytes, payload: bytes) -> bytes:
    if channel not in CHANNELS:
        raise ValueError(f"no channel {channel!r}")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"a record holds at most {MAX_PAYLOAD} bytes")
    return HEADER.pack(channel, len(payload)) + payload


def control(message: dict[str, Any]) -> bytes:
    return frame(CONTROL, json.dumps(message, separators=(",", ":")).encode())


class FrameReader:
    """Records from bytes as they arrive, however they were split."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self.buffer += data
        records = []
        while len(self.buffer) >= HEADER.size:
            channel, length = HEADER.unpack_from(self.buffer)
            if channel not in CHANNELS:
                raise ProtocolError(f"unknown channel {channel!r}")
            if length > MAX_PAYLOAD:
                raise ProtocolError(f"a record of {length} bytes is longer than {MAX_PAYLOAD}")
            end = HEADER.size + length
            if len(self.buffer) < end:
                break
            records.append((channel, bytes(self.buffer[HEADER.size : end])))
            del self.buffer[:end]
        return records

    @property
    def pending(self) -> bool:
        """Whether bytes of an unfinished record wait (at the end of the body: it was cut)."""
        return bool(self.buffer)
