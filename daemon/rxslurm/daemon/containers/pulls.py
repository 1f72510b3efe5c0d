"""Image pulls in the background: a bounded pool, one pull per reference, audited.

``enable`` of a container whose image is not cached moves it to PULLING and asks for a pull here;
it waits at most ``pulls.enable_wait_s`` (a small image answers at once), never for the pull's
full length: the pull runs in this module's own threads, not in the API's. When the pull ends:

- with the enable request still waiting, the request takes the outcome and carries on as before
  (wakes the container, or answers with the pull's reason);
- otherwise the container goes on by itself: PULLING -> WAITING (queued; the reconciler gives it
  a lease and a job when its quotas allow), or -> STOPPED if someone stopped it meanwhile, or
  -> ERROR with the pull's own reason.

A container in PULLING holds no lease. The ledger is the truth: every move is a conditional
state change from PULLING, so the request and a pull thread can never both act, and a container
left PULLING by a stopped rxd gets its pull again at the next start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rxslurm.daemon.config import Config
from rxslurm.daemon.containers.states import InvalidTransition, State, change_state
from rxslurm.daemon.errors import Conflict
from rxslurm.daemon.images import cache as image_cache
from rxslurm.daemon.images import fetch as image_fetch
from rxslurm.daemon.images import pull as image_pull
from rxslurm.daemon.ledger.audit import record_event
from rxslurm.daemon.ledger.store import Ledger
from rxslurm.daemon.ledger.timestamps import to_timestamp, utcnow

log = logging.getLogger("rxslurm.pulls")
ACTOR: dict[str, Any] = {"actor": "rxd", "origin": "pull"}


class PullContext(Protocol):
    """What pulls need of the container service's runtime (which creates the pool): declared
    here, so that this module does not import the service that imports it."""

    @property
    def ledger(self) -> Ledger: ...

    @property
    def config(self) -> Config: ...

    @property
    def poke(self) -> Callable[[], None]:
        """Called after a change the reconciler should look at soon."""
        ...


@dataclass(frozen=True)
class Outcome:
    """How a pull ended: the installed image, or the reason it failed."""

    image: Path | None = None
    error: str | None = None
    cancelled: bool = False
    digest: str | None = None


@dataclass
class _Pull:
    uri: str
    requester_uid: int | None
    containers: set[int] = field(default_factory=set)
    # Resolve the reference at its registry again, even if a digest is recorded (a moved tag).
    refresh: bool = False


class ImagePulls:
    """The daemon's pull workers; ``start`` before serving, ``stop`` when rxd stops."""

    def __init__(self, rt: PullContext) -> None:
        self.rt = rt
        self.config = rt.config.pulls
        self._settings: image_pull.PullSettings | None = None
        self._pool = ThreadPoolExecutor(
            max_workers=self.config.concurrency, thread_name_prefix="pull"
        )
        self._cond = threading.Condition()
        self._pulls: dict[str, _Pull] = {}
        self._waiters: dict[int, int] = {}
        self._outcomes: dict[int, Outcome] = {}
        # The last outcome of each reference, for `wait_pull` (a pull asked for no container).
        self._ended: dict[str, Outcome] = {}
        self._cancel = threading.Event()

    # -- running ---------------------------------------------------------------------------

    def start(self) -> None:
        """Check the pull account and folders (an unusable one stops rxd from starting), remove
        what stopped pulls left, and pull again for containers a stop left PULLING."""
        if not self.rt.config.pulls.user:
            return
        settings = self.settings()
        image_pull.sweep(settings)
        rows = self.rt.ledger.db.table("containers").rows_where("state = ?", [State.PULLING.value])
        for row in rows:
            if row["image"]:
                self.request(row["id"], row["image"], row["runtime_uid"], waiter=False)

    def stop(self) -> None:
        """End running pulls (their containers stay PULLING for the next start)."""
        self._cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def settings(self) -> image_pull.PullSettings:
        """The account, folders and limits, checked the first time they are needed."""
        if self._settings is None:
            settings = image_pull.PullSettings.from_config(self.rt.config)
            image_cache.check_root_folder(settings.image_dir, "containers.image_dir")
            image_cache.check_root_folder(settings.work_dir, "pulls.work_dir")
            self._settings = settings
        return self._settings

    # -- asking ----------------------------------------------------------------------------

    def request(
        self,
        container_id: int | None,
        uri: str,
        requester_uid: int | None,
        *,
        waiter: bool,
        refresh: bool = False,
    ) -> None:
        """Pull ``uri`` for the container (None: for no container, `wait_pull` tells the outcome),
        joining a pull of the same reference already under way. ``waiter``: the caller will
        ``wait`` for the outcome. ``refresh``: resolve the reference's tag again. Conflict when
        the requester already has ``pulls.max_per_user`` other images pulling or queued."""
        settings = self.settings()
        with self._cond:
            pull = self._pulls.get(uri)
            if pull is not None and refresh and not pull.refresh:
                # A pull that may use a recorded digest cannot answer a refresh: one after it.
                self._cond.wait_for(lambda: uri not in self._pulls, timeout=settings.timeout_s)
                pull = self._pulls.get(uri)
            if pull is None:
                mine = [p for p in self._pulls.values() if p.requester_uid == requester_uid]
                if requester_uid is not None and len(mine) >= self.config.max_per_user:
                    raise Conflict(
                        f"you already have {len(mine)} images being pulled "
                        f"({', '.join(sorted(p.uri for p in mine))}); try again when they are done"
                    )
                pull = self._pulls[uri] = _Pull(uri, requester_uid, refresh=refresh)
                self._ended.pop(uri, None)
                # Under the lock: the pull's thread sees its first container and any waiter.
                self._pool.submit(self._run, pull, settings)
            if container_id is None:
                return
            pull.containers.add(container_id)
            if waiter:
                self._waiters[container_id] = self._waiters.get(container_id, 0) + 1

    def wait(self, container_id: int, timeout: float) -> Outcome | None:
        """The outcome if the pull ends within ``timeout`` (the caller then acts on it), else
        None (the pull's thread will). Only after ``request(..., waiter=True)``."""
        with self._cond:
            self._cond.wait_for(lambda: container_id in self._outcomes, timeout=timeout)
            left = self._waiters.get(container_id, 1) - 1
            if left > 0:
                self._waiters[container_id] = left
            else:
                self._waiters.pop(container_id, None)
            return self._outcomes.pop(container_id, None)

    def wait_pull(self, uri: str, timeout: float) -> Outcome | None:
        """The outcome of ``uri``'s pull if it ends within ``timeout`` (or has ended), else None."""
        with self._cond:
            self._cond.wait_for(lambda: uri not in self._pulls, timeout=timeout)
            if uri in self._pulls:
                return None
            return self._ended.get(uri)

    def busy(self) -> list[str]:
        """References being pulled or waiting for a slot."""
        with self._cond:
            return sorted(self._pulls)

    # -- the pull's thread -----------------------------------------------------------------

    def _run(self, pull: _Pull, settings: image_pull.PullSettings) -> None:
        started = time.monotonic()
        try:
            self._note(pull, f"pulling {pull.uri} as {settings.account.user}")
            self._audit(pull, "started", account=settings.account.user, refresh=pull.refresh)
            got = image_fetch.fetch(
                settings,
                self.rt.ledger,
                pull.uri,
                refresh=pull.refresh,
                requester_uid=pull.requester_uid,
                cancel=self._cancel,
            )
            outcome = Outcome(image=got.image, digest=got.digest)
            # bytes None: the content was cached already (the same digest, or pulled before).
            self._audit(
                pull,
                "pulled",
                image=str(got.image),
                digest=got.digest,
                bytes=got.size,
                seconds=_since(started),
            )
        except image_pull.PullCancelled as exc:
            outcome = Outcome(error=exc.message, cancelled=True)
        except Exception as exc:  # every failure ends the containers' wait with its reason
            reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            outcome = Outcome(error=reason)
            log.warning("pull failed", extra={"image": pull.uri, "error": reason})
            try:
                self._audit(pull, "failed", reason=reason, seconds=_since(started))
            except Exception:
                log.exception("cannot audit a failed pull", extra={"image": pull.uri})
        with self._cond:
            self._pulls.pop(pull.uri, None)
            self._ended[pull.uri] = outcome
            handed: list[int] = []
            for cid in sorted(pull.containers):
                if self._waiters.get(cid):
                    self._outcomes[cid] = outcome
                else:
                    handed.append(cid)
            self._cond.notify_all()
        if outcome.cancelled:
            return
        for cid in handed:
            try:
                carry_on(self.rt, cid, outcome)
            except Exception:
                log.exception("after the pull", extra={"container": cid})

    def _note(self, pull: _Pull, reason: str) -> None:
        """Tell the containers' status what is happening (no state change)."""
        members = self._members(pull)
        with self.rt.ledger.transaction() as db:
            for cid in members:
                db.execute(
                    "UPDATE containers SET reason = ? WHERE id = ? AND state = ?",
                    [reason, cid, State.PULLING.value],
                )

    def _members(self, pull: _Pull) -> list[int]:
        """The containers waiting for this pull (others may join while it runs)."""
        with self._cond:
            return sorted(pull.containers)

    def _audit(self, pull: _Pull, outcome: str, **detail: Any) -> None:
        with self.rt.ledger.transaction() as db:
            record_event(
                db,
                actor_uid=pull.requester_uid,
                action="image.pull",
                target_type="image",
                target_id=pull.uri,
                detail={"outcome": outcome, "containers": self._members(pull), **detail},
                **ACTOR,
            )


def carry_on(
    rt: PullContext, container_id: int, outcome: Outcome, *, queue: bool = True, **actor: Any
) -> bool:
    """Move a PULLING container on after its pull: WAITING (queued for a lease and a job) or
    STOPPED (nobody wants it running any more, or ``queue`` False: the caller wakes it), or
    ERROR with the pull's reason. False when it is no longer PULLING (disabled meanwhile): then
    nothing changes."""
    who = actor or ACTOR
    try:
        with rt.ledger.transaction() as db:
            row = db.table("containers").get(container_id)
            if outcome.image is None:
                change_state(
                    db,
                    container_id,
                    State.ERROR,
                    allowed_from=[State.PULLING],
                    reason="the image could not be pulled",
                    fields={"last_error": outcome.error, "desired": "stopped"},
                    **who,
                )
            elif queue and row["desired"] == "running":
                # PULLING -> WAITING (queued): the reconciler's queue admits it like any other.
                change_state(
                    db,
                    container_id,
                    State.WAITING,
                    allowed_from=[State.PULLING],
                    reason="image pulled; waiting for its turn",
                    fields={"image": str(outcome.image), "queued_at": to_timestamp(utcnow())},
                    **who,
                )
            else:
                change_state(
                    db,
                    container_id,
                    State.STOPPED,
                    allowed_from=[State.PULLING],
                    reason="image pulled",
                    fields={"image": str(outcome.image)},
                    **who,
                )
    except InvalidTransition:
        return False
    rt.poke()
    return True


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)
