"""Binding an HTTP request to its MUNGE credential: the contract between rxctl, hooks and rxd.

The credential's payload is one ASCII line:

    rxslurm-request/1 uid=<uid> nonce=<32 hex> sha256=<64 hex>

`uid` is the uid the client believes it runs as (rxd refuses a credential whose MUNGE uid differs),
the nonce makes every payload unique, and the digest covers the version tag, uid, nonce, method,
request target (path with query, exactly as sent) and body. rxd recomputes the digest from the
request it received: a request altered on the way, or a credential moved to another request, does
not match. Standard library only: rxctl imports it on its network path.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from hashlib import _Hash

VERSION = "rxslurm-request/1"
# The HTTP header that carries the credential.
HEADER = "X-RX-Munge"
# A streamed body's SHA-256 (hex), announced so that rxd checks the binding before the body and
# the body against it after its last byte (an import's archive: rxd's api/door_stream.py).
BODY_DIGEST_HEADER = "X-RX-Body-SHA256"
MAX_PAYLOAD = 256
MAX_UID = 2**32 - 2  # (uid_t)-1 is "no uid"

_PAYLOAD = re.compile(
    rb"rxslurm-request/1 uid=(0|[1-9][0-9]{0,9}) nonce=([0-9a-f]{32}) sha256=([0-9a-f]{64})"
)


def _builtin_sha256() -> Callable[[], _Hash]:
    """CPython's own SHA-256, the one hashlib falls back to: importing hashlib loads OpenSSL's
    libcrypto, which costs `rxctl exec` more than its whole exchange with rxd. The same digest;
    hashlib's where the interpreter has no built-in one."""
    for name in ("_sha2", "_sha256"):  # Python 3.12+, 3.11
        try:
            constructor: Callable[[], _Hash] = __import__(name).sha256
        except (ImportError, AttributeError):
            continue
        return constructor
    import hashlib

    return hashlib.sha256


_sha256 = _builtin_sha256()


def body_digest(body: bytes) -> bytes:
    """A held body's SHA-256, with the same constructor as the binding's digest."""
    h = _sha256()
    h.update(body)
    return h.digest()


class BindingError(ValueError):
    """A payload that is not an rx-slurm request binding, or one that does not match."""


# NamedTuples here and in munge.py: rxctl's exec path need not import dataclasses.
class Binding(NamedTuple):
    uid: int
    nonce: str
    digest: str

    def to_payload(self) -> bytes:
        return f"{VERSION} uid={self.uid} nonce={self.nonce} sha256={self.digest}".encode()


def _part(h: _Hash, data: bytes) -> None:
    # Length-prefixed, so no two different (method, target, ...) tuples hash the same input.
    h.update(len(data).to_bytes(8, "big"))
    h.update(data)


def request_digest(uid: int, nonce: str, method: str, target: str, body: bytes) -> str:
    return streamed_digest(uid, nonce, method, target, body_digest(body))


def streamed_digest(uid: int, nonce: str, method: str, target: str, body_sha256: bytes) -> str:
    """The same digest from the body's SHA-256 alone: a body too big to hold (an import's
    archive) is hashed as it streams, and checked after its last byte."""
    h = _sha256()
    for part in (VERSION.encode(), str(uid).encode(), nonce.encode(), method.encode()):
        _part(h, part)
    _part(h, target.encode("utf-8", errors="surrogateescape"))
    _part(h, body_sha256)
    return h.hexdigest()


def bind(
    method: str,
    target: str,
    body: bytes,
    uid: int,
    nonce: str | None = None,
    *,
    body_sha256: bytes | None = None,
) -> Binding:
    """The binding a client puts in its credential for this request (``body_sha256``: the body's
    digest, when the body is streamed and ``body`` is not held)."""
    if not 0 <= uid <= MAX_UID:
        raise BindingError(f"uid {uid} is out of range")
    if not nonce:
        # Imported only here: secrets and hmac load OpenSSL, which rxctl's exec does not need.
        import secrets

        nonce = secrets.token_hex(16)
    if body_sha256 is None:
        body_sha256 = body_digest(body)
    digest = streamed_digest(uid, nonce, method, target, body_sha256)
    return Binding(uid=uid, nonce=nonce, digest=digest)


def parse(payload: bytes) -> Binding:
    """Read a credential's payload; anything else than a well-formed binding is a BindingError."""
    if len(payload) > MAX_PAYLOAD:
        raise BindingError("the credential's payload is not an rx-slurm request (too long)")
    match = _PAYLOAD.fullmatch(payload)
    if match is None:
        raise BindingError("the credential's payload is not an rx-slurm request")
    uid = int(match[1])
    if uid > MAX_UID:
        raise BindingError("the credential's payload names an impossible uid")
    return Binding(uid=uid, nonce=match[2].decode(), digest=match[3].decode())


def check(binding: Binding, method: str, target: str, body: bytes) -> None:
    """Refuse unless `binding` was made for exactly this method, target and body."""
    check_streamed(binding, method, target, body_digest(body))


def check_streamed(binding: Binding, method: str, target: str, body_sha256: bytes) -> None:
    """``check`` of a streamed body, from its SHA-256 computed as it arrived."""
    import hmac

    expected = streamed_digest(binding.uid, binding.nonce, method, target, body_sha256)
    if not hmac.compare_digest(expected, binding.digest):
        raise BindingError("the request does not match its credential (altered, or moved)")
