"""Who may use the agent: a MUNGE credential bound to this connection's nonce and body, of the
runtime user itself or of a caller rxd vouched for with a ticket (protocol/agent_wire.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rxslurm.protocol.agent_wire import BIND_METHOD, WireError, bind_target, verify
from rxslurm.slurm.munge import Decoded, MungeError
from rxslurm.slurm.request_binding import BindingError, check, parse


class Refused(Exception):
    """The connection gets nothing; the message says why in one line."""


@dataclass(frozen=True)
class Identity:
    """What the agent knows of itself: the job, the runtime user's uid outside the container
    (inside, under --fakeroot, it is 0), the job's key, and how to decode and make a
    credential."""

    job_id: int
    uid: int
    key: bytes
    decode: Callable[[str], Decoded]
    encode: Callable[[bytes], str]
    clock: Callable[[], float] = time.time


def authenticate(
    me: Identity, nonce: str, credential: Any, body: bytes
) -> tuple[int, dict[str, Any]]:
    """The caller's uid and request, or Refused."""
    if not isinstance(credential, str):
        raise Refused("no MUNGE credential")
    try:
        decoded = me.decode(credential)
    except MungeError as exc:
        raise Refused(f"MUNGE refused the credential: {exc.message}") from None
    try:
        binding = parse(decoded.payload)
        if binding.uid != decoded.uid:
            raise Refused("the credential's payload names another uid")
        if binding.nonce != nonce:
            raise Refused("the credential was made for another connection")
        check(binding, BIND_METHOD, bind_target(me.job_id), body)
    except BindingError as exc:
        raise Refused(str(exc)) from None
    try:
        message = json.loads(body)
    except ValueError:
        raise Refused("the body is not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("request"), dict):
        raise Refused("the body holds no request")
    if decoded.uid != me.uid:
        ticket = message.get("ticket")
        if not isinstance(ticket, str):
            raise Refused(f"uid {decoded.uid} is not this container's user and has no ticket")
        try:
            verify(me.key, ticket, uid=decoded.uid, job_id=me.job_id, now=me.clock())
        except WireError as exc:
            raise Refused(str(exc)) from None
    return decoded.uid, message["request"]
