"""The network door: rxd's API over TCP, each request proved by its caller's MUNGE credential.

Off unless `daemon.listen` is set. A request carries a MUNGE credential (header X-RX-Munge) whose
payload binds it to its method, target and body (rxslurm/slurm/request_binding.py). rxd decodes the
credential with its own munged (MUNGE's TTL and replay cache apply), checks the binding against the
request it received, and then treats the credential's uid exactly as the Unix socket treats the
kernel's SO_PEERCRED uid: the same name check, roles, actor and audit (origin "munge").

Not over this door: anything that needs an rx-slurm admin. Root on any host that holds the MUNGE key
(every compute node) can mint a uid-0 credential; a node must not be a way to administer rx-slurm,
so admin powers stay on the service host's Unix socket. Slurm's hooks may still poke (hook_users).

Every refusal is a one-line 401/403 that changes nothing, and is audited; audit rows and log lines
are rate-limited per remote address so a flood cannot fill the ledger. Requests are never refused
by address: many users share a login node's address, and one of them must not lock out the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from rxslurm.daemon.api.app import Handler, make_app
from rxslurm.daemon.api.context import Daemon, daemon_of
from rxslurm.daemon.api.door_stream import (
    PROOF_KEY,
    Refused,
    StreamProof,
    stream_proof,
    streamed,
)
from rxslurm.daemon.api.peercred import UnknownCaller, resolve_caller
from rxslurm.daemon.errors import ApiError, Unavailable
from rxslurm.daemon.ledger.audit import record_event
from rxslurm.slurm import munge, request_binding
from rxslurm.slurm.request_binding import HEADER, BindingError

log = logging.getLogger("rxslurm.door")

DOOR = "munge"
# Audited refusals per remote address per window; the rest are counted into the next one.
AUDIT_BURST = 10
AUDIT_WINDOW_S = 60.0
# Audited refusals from all addresses together per window: many addresses cannot fill the ledger.
AUDIT_TOTAL = 100
MAX_TRACKED_PEERS = 4096


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


@dataclass
class _Window:
    started: float
    audited: int = 0
    suppressed: int = 0


@dataclass
class RefusalLimiter:
    """How many refusals get an audit row: AUDIT_BURST per address and AUDIT_TOTAL in all, per
    window. Runs on the event loop only."""

    burst: int = AUDIT_BURST
    total: int = AUDIT_TOTAL
    window_s: float = AUDIT_WINDOW_S
    clock: Callable[[], float] = time.monotonic
    _peers: dict[str, _Window] = field(default_factory=dict)
    _all: _Window | None = None

    def admit(self, peer: str) -> int | None:
        """None: do not audit this one; else the number suppressed since the last audited."""
        now = self.clock()
        if self._all is None or now - self._all.started >= self.window_s:
            self._all = _Window(started=now)
        if self._all.audited >= self.total:
            window = self._peers.get(peer)
            if window is not None:
                window.suppressed += 1  # said by this address's next audited refusal
            return None
        suppressed = self._admit_peer(peer, now)
        if suppressed is not None:
            self._all.audited += 1
        return suppressed

    def _admit_peer(self, peer: str, now: float) -> int | None:
        window = self._peers.get(peer)
        if window is None or now - window.started >= self.window_s:
            if len(self._peers) >= MAX_TRACKED_PEERS:
                self._forget_old(now)
            carried = window.suppressed if window else 0
            self._peers[peer] = _Window(started=now, audited=1)
            return carried
        if window.audited < self.burst:
            window.audited += 1
            suppressed, window.suppressed = window.suppressed, 0
            return suppressed
        window.suppressed += 1
        return None

    def _forget_old(self, now: float) -> None:
        for peer in [p for p, w in self._peers.items() if now - w.started >= self.window_s]:
            del self._peers[peer]
        if len(self._peers) >= MAX_TRACKED_PEERS:
            self._peers.clear()  # a flood from many addresses: start counting afresh


def _refusal(exc: munge.MungeError) -> Refused:
    reasons = {
        munge.Err.CRED_EXPIRED: "MUNGE credential expired (its TTL passed; clocks in step?)",
        munge.Err.CRED_REPLAYED: "MUNGE credential replayed (each credential is good once)",
        munge.Err.CRED_REWOUND: "MUNGE credential from the future (the clocks disagree)",
        munge.Err.CRED_INVALID: "MUNGE credential invalid (forged, or another MUNGE key)",
        munge.Err.CRED_UNAUTHORIZED: "MUNGE credential not for this host's users",
    }
    message = reasons.get(exc.err or munge.Err.SNAFU) or f"MUNGE credential refused: {exc.message}"
    return Refused(message, status=401, code="bad_credential", uid=exc.uid)


async def prove(request: web.Request) -> tuple[int, int, StreamProof | None]:
    """The (uid, gid) the request's credential proves, after checking it binds this request; on
    a streamed route, the proof its body must meet after its last byte (door_stream.py)."""
    credential = request.headers.get(HEADER, "").strip()
    if not credential:
        raise Refused(
            f"no MUNGE credential: the network door needs the {HEADER} header (use rxctl)",
            status=401,
            code="no_credential",
        )
    body = None if streamed(request) else await request.read()
    try:
        decoded = await asyncio.to_thread(munge.decode, credential)
    except munge.MungeUnavailable as exc:
        log.error("munged does not answer", extra={"reason": exc.message})
        raise Unavailable(f"rxd cannot check MUNGE credentials: {exc.message}") from None
    except munge.MungeError as exc:
        raise _refusal(exc) from None
    try:
        binding = request_binding.parse(decoded.payload)
    except BindingError as exc:
        raise Refused(str(exc), status=401, code="bad_binding", uid=decoded.uid) from None
    if binding.uid != decoded.uid:
        raise Refused(
            f"the credential is uid {decoded.uid}'s but the request claims uid {binding.uid}",
            status=403,
            code="uid_mismatch",
            uid=decoded.uid,
        )
    if body is None:
        return decoded.uid, decoded.gid, stream_proof(request, binding)
    try:
        request_binding.check(binding, request.method, request.raw_path, body)
    except BindingError as exc:
        raise Refused(str(exc), status=401, code="altered", uid=decoded.uid) from None
    return decoded.uid, decoded.gid, None


def _peer(request: web.Request) -> str:
    return request.remote or "unknown"


def _audit_refusal(daemon: Daemon, request: web.Request, exc: Refused, suppressed: int) -> None:
    who = f"uid:{exc.uid}" if exc.uid is not None else "unknown"
    detail: dict[str, Any] = {
        "reason": exc.message,
        "code": exc.code,
        "peer": _peer(request),
        "method": request.method[:16],
        "target": request.raw_path[:200],
    }
    if suppressed:
        detail["suppressed_before"] = suppressed
    with daemon.ledger.transaction() as db:
        record_event(
            db,
            actor=who,
            actor_uid=exc.uid,
            origin=DOOR,
            action="door.refused",
            target_type="door",
            target_id=DOOR,
            detail=detail,
        )


def munge_identify(limiter: RefusalLimiter) -> Middleware:
    @web.middleware
    async def identify(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            uid, gid, proof = await prove(request)
            try:
                caller = resolve_caller(0, uid, gid)
            except UnknownCaller as exc:
                raise Refused(str(exc), status=403, code="unknown_caller", uid=uid) from None
            # No kernel pid across hosts; the door tells actors and the audit where the proof
            # came from.
            request["caller"] = replace(caller, door=DOOR)
            if proof is not None:
                request[PROOF_KEY] = proof
            # A streamed body's proof fails inside the route, after its last byte: audited here
            # as every refusal of the door.
            return await handler(request)
        except Refused as exc:
            suppressed = limiter.admit(_peer(request))
            if suppressed is not None:
                log.warning(
                    "network door refused a request",
                    extra={"reason": exc.message, "peer": _peer(request), "uid": exc.uid},
                )
                try:
                    await asyncio.to_thread(
                        _audit_refusal, daemon_of(request), request, exc, suppressed
                    )
                except Exception:
                    # The refusal still stands, with its reason; only its audit row is lost.
                    log.exception("cannot audit a refusal of the network door")
            raise

    return identify


def parse_listen(listen: str) -> tuple[str, int]:
    host, port = listen.rsplit(":", 1)
    return host.strip("[]"), int(port)


async def start(
    daemon: Daemon,
    routes: list[web.RouteDef],
    state: dict[Any, Any],
    *,
    keepalive_s: float,
    make_site: Callable[[web.AppRunner, str, int], web.BaseSite],
) -> web.AppRunner:
    """Serve `routes` on daemon.listen behind the MUNGE check; the caller cleans the runner up.

    The site comes from the caller so that the door shares serve's connection caps.
    """
    # Exec across hosts is served here only: its stream needs the caller's MUNGE proof.
    from rxslurm.daemon.exec import door as exec_door

    app = make_app([*routes, *exec_door.routes], state, identify=munge_identify(RefusalLimiter()))
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, keepalive_timeout=keepalive_s
    )
    await runner.setup()
    host, port = parse_listen(daemon.config.daemon.listen)
    await make_site(runner, host, port).start()
    log.info("network door serving", extra={"listen": daemon.config.daemon.listen})
    return runner
