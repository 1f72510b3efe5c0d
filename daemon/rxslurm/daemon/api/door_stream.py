"""A body streamed through the network door: checked against its credential after its last byte.

The door binds every request's body to its MUNGE credential (api/munge_door.py) and, for most
routes, reads the body whole (at most 1 MiB) before the route runs. An import's archive may be
many GiB, so on the routes named here the client also sends the body's SHA-256 (header
BODY_DIGEST_HEADER), and the door checks the whole binding (method, target, that digest) against
the credential before the route runs (MUNGE's TTL and replay cache apply as always: a credential
is good once), so a credential made for any other request is refused before anything happens.
The route gets a ``StreamProof``: it hashes the body as it relays it and calls ``verify`` after
the last byte, before anything it did with the body takes effect. A body altered on the way, cut,
or spliced from another upload does not hash to the bound digest, and is refused.
"""

from __future__ import annotations

import hmac
import re
from typing import NamedTuple

from aiohttp import web

from rxslurm.daemon.errors import ApiError
from rxslurm.protocol import routes as route
from rxslurm.slurm import request_binding
from rxslurm.slurm.request_binding import BODY_DIGEST_HEADER, Binding, BindingError

# (method, route pattern) whose body the door streams instead of reading whole.
STREAMED = frozenset({("POST", route.PROJECT_IMPORT)})
PROOF_KEY = "stream_proof"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class Refused(ApiError):
    """A refusal of the door, with what the audit should say about it."""

    def __init__(self, message: str, *, status: int, code: str, uid: int | None = None) -> None:
        super().__init__(message, status=status, code=code)
        self.uid = uid


def streamed(request: web.Request) -> bool:
    resource = request.match_info.route.resource
    pattern = resource.canonical if resource is not None else ""
    return (request.method, pattern) in STREAMED


class StreamProof(NamedTuple):
    body_sha256: bytes  # what the credential binds
    uid: int

    def verify(self, body_sha256: bytes) -> None:
        """Refused (401) unless the body that arrived is the one the credential was made for."""
        if not hmac.compare_digest(body_sha256, self.body_sha256):
            raise Refused(
                "the request does not match its credential (altered, or moved): the upload is "
                "refused and nothing was changed",
                status=401,
                code="altered",
                uid=self.uid,
            )


def stream_proof(request: web.Request, binding: Binding) -> StreamProof:
    """The binding checked against this request's method, target and announced body digest;
    the proof its body must meet. Refused (401) when the digest is missing or does not match."""
    announced = request.headers.get(BODY_DIGEST_HEADER, "").strip()
    if not _HEX64.fullmatch(announced):
        raise Refused(
            f"a streamed body needs its SHA-256 in the {BODY_DIGEST_HEADER} header (use rxctl)",
            status=401,
            code="no_digest",
            uid=binding.uid,
        )
    digest = bytes.fromhex(announced)
    try:
        request_binding.check_streamed(binding, request.method, request.raw_path, digest)
    except BindingError as exc:
        raise Refused(str(exc), status=401, code="altered", uid=binding.uid) from None
    return StreamProof(digest, binding.uid)


def proof_of(request: web.Request) -> StreamProof | None:
    """The proof a streamed body must meet; None on the local socket (the kernel's uid, no
    credential to bind)."""
    proof = request.get(PROOF_KEY)
    return proof if isinstance(proof, StreamProof) else None
