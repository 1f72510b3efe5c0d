"""The ledger: rxd's memory, one SQLite file in WAL mode.

    ledger = Ledger.open("/var/lib/rxslurm/ledger.db")
    with ledger.transaction() as db:          # BEGIN IMMEDIATE ... COMMIT / ROLLBACK
        db.table("projects").insert(project.to_row())
        record_event(db, ...)                 # commits (or not) with the change
    rows = ledger.db.query("SELECT ...")      # a read outside a transaction

Threading: one connection per thread (`threading.local`), not one shared connection behind a
lock. The write lock is then SQLite's own (`BEGIN IMMEDIATE` waits up to `busy_timeout`), the
same lock that keeps out other processes (`rxd migrate`, an admin's `sqlite3`), so there is one
locking story instead of two; WAL lets other threads read while one writes; and no `sqlite3`
connection, with its cursors and transaction state, is ever used by two threads at once. The cost
is one open connection per thread that touched the ledger, until `close()`.

Every call may block (up to `busy_timeout` while another writer holds the lock): from asyncio, go
through `asyncio.to_thread` or the executor, never on the event loop itself.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from rxslurm.daemon.ledger.fs_check import assert_local_filesystem
from rxslurm.daemon.ledger.migrations import known_names, migrations

log = logging.getLogger(__name__)

DEFAULT_BUSY_TIMEOUT_MS = 5000


class LedgerError(Exception):
    """The ledger cannot be used as asked; the message says why and what to do."""


class MigrationsPending(LedgerError):
    pass


class SchemaTooNew(LedgerError):
    pass


class LedgerDatabase(Database):
    """A sqlite-utils Database that can run callbacks once its transaction has committed."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        # No plugins: a root daemon must not run whatever sqlite-utils plugins are installed.
        super().__init__(conn, execute_plugins=False)
        self.after_commit: list[Callable[[], None]] = []


class Ledger:
    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS
    ):
        """Use `Ledger.open()`: it checks the filesystem, file mode and schema first."""
        self.path = Path(path).absolute()
        self.busy_timeout_ms = int(busy_timeout_ms)
        # Names of the migrations `open(migrate=True)` applied; `rxd migrate` reports them.
        self.last_applied: list[str] = []
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[LedgerDatabase] = []
        self._closed = False

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        migrate: bool = False,
        *,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    ) -> Ledger:
        """Open (creating if needed) the ledger at `path`.

        Refuses a network filesystem, creates a missing parent folder with mode 0700 and the file
        with mode 0600. With `migrate=False` a ledger with pending migrations is an error.
        """
        path = Path(path).absolute()
        # Before creating anything: a folder made on NFS would be left behind for nothing.
        assert_local_filesystem(path)
        _make_parent(path.parent)
        _make_private_file(path)
        ledger = cls(path, busy_timeout_ms=busy_timeout_ms)
        try:
            if migrate:
                ledger.last_applied = ledger.migrate()
            else:
                ledger.check_schema()
        except BaseException:
            ledger.close()
            raise
        return ledger

    # -- connections ---------------------------------------------------------------------------

    @property
    def db(self) -> LedgerDatabase:
        """This thread's connection, for reads outside a transaction."""
        if self._closed:
            raise LedgerError(f"ledger {self.path} is closed")
        db: LedgerDatabase | None = getattr(self._local, "db", None)
        if db is None:
            db = self._connect()
            self._local.db = db
        return db

    def _connect(self) -> LedgerDatabase:
        # mode=rw: after open() made the file, a vanished ledger is an error, not a new empty one.
        # isolation_level=None: sqlite3 opens no implicit transactions; we say BEGIN ourselves.
        # check_same_thread=False only so close() may close every thread's connection.
        conn = sqlite3.connect(
            self.path.as_uri() + "?mode=rw",
            uri=True,
            timeout=self.busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise LedgerError(f"ledger {self.path}: cannot enable WAL mode (got {mode!r})")
            # NORMAL is durable against application crashes in WAL mode; a power cut may lose
            # the last commits but never corrupts the file.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            db = LedgerDatabase(conn)
        except BaseException:
            conn.close()
            raise
        with self._lock:
            if self._closed:
                conn.close()
                raise LedgerError(f"ledger {self.path} is closed")
            self._connections.append(db)
        return db

    def close(self) -> None:
        """Close every thread's connection; the ledger cannot be used afterwards."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for db in connections:
            db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Ledger {self.path}>"

    # -- transactions --------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[LedgerDatabase]:
        """One `BEGIN IMMEDIATE` transaction: the write lock is taken at the start, so a
        read-modify-write inside cannot interleave with another writer. Commits on success,
        rolls back on any exception. Not nestable; use `db.atomic()` inside for a savepoint."""
        db = self.db
        if db.conn.in_transaction:
            raise LedgerError("a ledger transaction is already open in this thread")
        db.after_commit.clear()
        db.conn.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.conn.execute("COMMIT")
        except BaseException:
            # A failed statement may already have ended the transaction.
            if db.conn.in_transaction:
                db.conn.execute("ROLLBACK")
            db.after_commit.clear()
            raise
        callbacks, db.after_commit = db.after_commit, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                # The change is committed; a failing follow-up must not make it look failed.
                log.exception("after-commit callback failed")

    @contextmanager
    def read(self) -> Iterator[LedgerDatabase]:
        """A read-only snapshot: every query inside sees the same committed state."""
        db = self.db
        if db.conn.in_transaction:
            raise LedgerError("a ledger transaction is already open in this thread")
        db.conn.execute("PRAGMA query_only = ON")
        try:
            db.conn.execute("BEGIN DEFERRED")
            try:
                yield db
            finally:
                if db.conn.in_transaction:
                    db.conn.execute("ROLLBACK")
        finally:
            db.conn.execute("PRAGMA query_only = OFF")

    # -- schema --------------------------------------------------------------------------------

    def migrate(self) -> list[str]:
        """Apply pending migrations; return their names ([] when the schema is current).

        All pending migrations run in one BEGIN IMMEDIATE transaction, so two processes cannot
        migrate at once and a failure leaves the previous schema. Foreign keys are off meanwhile
        (SQLite's recipe for schema changes) and checked before the commit."""
        db = self.db
        if db.conn.in_transaction:
            raise LedgerError("cannot migrate inside a transaction")
        db.conn.execute("PRAGMA foreign_keys = OFF")
        try:
            with self.transaction() as tx:
                self._refuse_unknown(tx)
                pending = [m.name for m in migrations.pending(tx)]
                migrations.apply(tx)
                violations = tx.execute("PRAGMA foreign_key_check").fetchall()
                if violations:
                    raise LedgerError(f"migration broke foreign keys: {violations[:5]}")
        finally:
            db.conn.execute("PRAGMA foreign_keys = ON")
        if pending:
            log.info("ledger migrated", extra={"ledger": str(self.path), "applied": pending})
        return pending

    def pending_migrations(self) -> list[str]:
        return [m.name for m in migrations.pending(self.db)]

    def schema_version(self) -> str | None:
        """The name of the last applied migration, or None for a blank ledger."""
        applied = migrations.applied(self.db)
        return applied[-1].name if applied else None

    def check_schema(self) -> None:
        """Raise unless the ledger's schema is exactly what this rxd knows."""
        self._refuse_unknown(self.db)
        pending = self.pending_migrations()
        if pending:
            raise MigrationsPending(
                f"ledger {self.path} needs migrations {', '.join(pending)}: run `rxd migrate`"
            )

    def _refuse_unknown(self, db: Database) -> None:
        known = set(known_names())
        unknown = [m.name for m in migrations.applied(db) if m.name not in known]
        if unknown:
            raise SchemaTooNew(
                f"ledger {self.path} has migrations this rxd does not know ({', '.join(unknown)}):"
                " it was migrated by a newer rx-slurm"
            )


def _make_parent(parent: Path) -> None:
    try:
        parent.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        return
    # mkdir's mode is filtered by the umask; the ledger's folder is exactly 0700.
    os.chmod(parent, 0o700)


def _make_private_file(path: Path) -> None:
    """Create the ledger file 0600, or bring an existing one (and its WAL files) back to 0600."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise LedgerError(f"cannot open ledger {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise LedgerError(f"ledger {path} is not a regular file")
        _tighten(path, info, lambda: os.fchmod(fd, 0o600))
    finally:
        os.close(fd)
    # SQLite gives new -wal/-shm files the database's mode; old ones keep theirs.
    for suffix in ("-wal", "-shm"):
        sidecar = path.with_name(path.name + suffix)
        try:
            info = os.lstat(sidecar)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(info.st_mode):
            raise LedgerError(f"{sidecar} is not a regular file")
        _tighten(sidecar, info, partial(os.chmod, sidecar, 0o600))


def _tighten(path: Path, info: os.stat_result, chmod: Callable[[], Any]) -> None:
    if stat.S_IMODE(info.st_mode) != 0o600:
        if info.st_size:
            log.warning(
                "ledger file mode tightened",
                extra={"path": str(path), "was": oct(stat.S_IMODE(info.st_mode))},
            )
        chmod()
