"""A body streamed through the network door: its credential is checked after its last byte.

The door binds every request's body to its MUNGE credential (api/munge_door.py) and, for most
routes, reads the body whole (at most 1 MiB) before the route runs. An import's archive may be
many GiB, so on the routes named here the door decodes the credential first (MUNGE's TTL and
replay cache apply as always: a credential is good once) and hands the route a ``StreamProof``:
the route hashes the body as it relays it and calls ``verify`` with the digest after the last
byte, before anything it did with the body takes effect. A body altered on the way, cut, or
spliced from another upload does not match the digest the client bound, and is refused.
"""

from __future__ import annotations

from typing import NamedTuple

from aiohttp import web

from rxslurm.daemon.errors import ApiError
from rxslurm.protocol import routes as route
from rxslurm.slurm import request_binding
from rxslurm.slurm.request_binding import Binding, BindingError

# (method, route pattern) whose body the door streams instead of reading whole.
STREAMED = frozenset({("POST", route.PROJECT_IMPORT)})
PROOF_KEY = "stream_proof"


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
    binding: Binding
    method: str
    target: str

    def verify(self, body_sha256: bytes) -> None:
        """Refused (401) unless the body that arrived is the one the credential was made for."""
        try:
            request_binding.check_streamed(self.binding, self.method, self.target, body_sha256)
        except BindingError as exc:
            raise Refused(
                f"{exc}: the upload is refused and nothing was changed",
                status=401,
                code="altered",
                uid=self.binding.uid,
            ) from None


def proof_of(request: web.Request) -> StreamProof | None:
    """The proof a streamed body must meet; None on the local socket (the kernel's uid, no
    credential to bind)."""
    proof = request.get(PROOF_KEY)
    return proof if isinstance(proof, StreamProof) else None
