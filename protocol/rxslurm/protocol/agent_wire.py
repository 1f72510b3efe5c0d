"""The exec agent's wire format and tickets, spoken by the agent in a container and by rxctl and
rxd (docs/exec.md, "The agent").

A connection to the agent is a stream of frames: one channel byte (exec_wire's `c`, `0`, `1`,
`2`), a 4-byte big-endian length, the payload. Control frames carry one JSON object each.

0. client -> agent: `{"hello": 1, "nonce": "<32 hex>"}`, the client's nonce.
1. agent -> client: `{"agent": 1, "job": J, "nonce": "<32 hex>", "credential": C}`, a nonce
   fresh for this connection and the agent's own MUNGE credential over both nonces and the job
   (`proof`): the client checks it was made by the container's runtime user, so a process that
   took the port of an agent that is gone gets neither the caller's credential nor its input.
2. client -> agent: `{"credential": "<MUNGE credential>"}` then the body, `{"ticket": T | null,
   "request": {...}}`, whose exact bytes the credential's payload binds together with the nonce
   (`rxslurm.slurm.request_binding`, method `AGENT`, target `agent/J`): a credential is good for
   one connection to one agent, and a replayed one is refused by MUNGE and by the nonce.
3. The agent runs the request for the credential's uid if it is the agent's own (the container's
   runtime user), or if the ticket is rxd's, for that uid, this job, and not expired.

Tickets: `t1.<uid>.<job>.<expires>.<hmac>`, an HMAC-SHA256 under the job's key (32 random bytes
the agent draws at start and the holder keeps in a file only the runtime user reads; rxd signs
with it for a caller it has authorized; it dies with the job). Standard library only: the agent
runs on the container's own Python.
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any, NamedTuple

from rxslurm.protocol.exec_wire import CONTROL

VERSION = 1
# The binding's method and target (request_binding): never a route of rxd's door.
BIND_METHOD = "AGENT"
HEADER = struct.Struct("!cI")
MAX_CONTROL = 1024 * 1024  # a request carries argv (Linux's ARG_MAX is 2 MiB)
MAX_DATA = 64 * 1024
TICKET_TTL_S = 60
KEY_BYTES = 32

_TICKET = re.compile(
    r"t1\.(0|[1-9][0-9]{0,9})\.([1-9][0-9]{0,9})\.([1-9][0-9]{0,11})\.([0-9a-f]{64})"
)


class WireError(ValueError):
    """A frame, message or ticket that breaks the agent's protocol; one line for people."""


def bind_target(job_id: int) -> str:
    return f"agent/{int(job_id)}"


def proof(job_id: int, client_nonce: str, agent_nonce: str) -> bytes:
    """The payload of the agent's credential in its hello."""
    return f"rxslurm-agent/1 job={int(job_id)} client={client_nonce} agent={agent_nonce}".encode()


def is_nonce(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{32}", value) is not None


def frame(channel: bytes, payload: bytes) -> bytes:
    return HEADER.pack(channel, len(payload)) + payload


def control(message: dict[str, Any]) -> bytes:
    return frame(CONTROL, json.dumps(message, separators=(",", ":")).encode())


class FrameReader:
    """Whole frames from a byte stream: (channel, payload)."""

    def __init__(self, limit: int = MAX_CONTROL) -> None:
        self.buffer = b""
        self.limit = limit

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self.buffer += data
        out: list[tuple[bytes, bytes]] = []
        while len(self.buffer) >= HEADER.size:
            channel, length = HEADER.unpack_from(self.buffer)
            if length > self.limit:
                raise WireError(f"a frame is longer than {self.limit} bytes")
            end = HEADER.size + length
            if len(self.buffer) < end:
                break
            out.append((channel, self.buffer[HEADER.size : end]))
            self.buffer = self.buffer[end:]
        return out


# -- tickets ---------------------------------------------------------------------------------


# NamedTuples, not dataclasses: rxctl imports this module on every exec.
class Ticket(NamedTuple):
    uid: int
    job_id: int
    expires: int  # seconds since the epoch

    def text(self) -> str:
        return f"rxslurm-agent-ticket/1 uid={self.uid} job={self.job_id} expires={self.expires}"


def parse_key(text: str) -> bytes:
    """The job's key as the holder writes it (hex); WireError unless it is one."""
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise WireError("the agent's key is not 64 hex digits")
    return bytes.fromhex(text)


def _mac(key: bytes, ticket: Ticket) -> str:
    # Imported here: rxctl imports this module on its exec path and never signs or verifies
    # (hmac loads OpenSSL, a few milliseconds of every exec's start-up).
    import hashlib
    import hmac

    return hmac.new(key, ticket.text().encode(), hashlib.sha256).hexdigest()


def sign(key: bytes, uid: int, job_id: int, now: float, ttl_s: int = TICKET_TTL_S) -> str:
    ticket = Ticket(uid=uid, job_id=job_id, expires=int(now) + ttl_s)
    mac = _mac(key, ticket)
    return f"t1.{ticket.uid}.{ticket.job_id}.{ticket.expires}.{mac}"


def verify(key: bytes, text: str, *, uid: int, job_id: int, now: float) -> Ticket:
    """The ticket, if rxd signed it with `key` for `uid` and `job_id` and it has not expired."""
    match = _TICKET.fullmatch(text)
    if match is None:
        raise WireError("the ticket is malformed")
    ticket = Ticket(uid=int(match[1]), job_id=int(match[2]), expires=int(match[3]))
    import hmac

    if not hmac.compare_digest(_mac(key, ticket), match[4]):
        raise WireError("the ticket is not rxd's")
    if ticket.uid != uid:
        raise WireError("the ticket was given to another user")
    if ticket.job_id != job_id:
        raise WireError("the ticket is for another job")
    if ticket.expires < now:
        raise WireError("the ticket has expired")
    return ticket


# -- the endpoint file -----------------------------------------------------------------------


class Endpoint(NamedTuple):
    """Where a job's agent listens and its key: `job-<id>.agent` in the container's state
    folder, one line `<host> <port> <key hex>`, written by the holder."""

    host: str
    port: int
    key: bytes

    def line(self) -> str:
        return f"{self.host} {self.port} {self.key.hex()}\n"


_HOST = re.compile(r"[0-9A-Za-z.:_-]{1,253}")


def parse_endpoint(data: bytes) -> Endpoint:
    try:
        host, port, key = data.decode("ascii").split()
    except (UnicodeDecodeError, ValueError):
        raise WireError("the agent file is not `<host> <port> <key>`") from None
    if not _HOST.fullmatch(host):
        raise WireError("the agent file names no host")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise WireError("the agent file names no port")
    return Endpoint(host=host, port=int(port), key=parse_key(key))
