"""The ledger: connection settings, file safety, transactions, records and the audit trail."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from rxslurm.daemon.ledger import fs_check
from rxslurm.daemon.ledger.audit import list_events, record_event
from rxslurm.daemon.ledger.fs_check import NetworkFilesystemError
from rxslurm.daemon.ledger.records import Binding, Event, Record
from rxslurm.daemon.ledger.store import Ledger, LedgerError
from rxslurm.daemon.ledger.timestamps import from_timestamp, to_timestamp, utcnow
from tests.support.ledger_rows import BindingCode, Container, Job, Member, PlatformUser, Project

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    ledger = Ledger.open(tmp_path / "state" / "ledger.db", migrate=True)
    yield ledger
    ledger.close()


def add_project(ledger: Ledger, name: str = "p1") -> int:
    with ledger.transaction() as db:
        if not db.table("platform_users").count_where("id = ?", ["alice"]):
            db.table("platform_users").insert(PlatformUser(id="alice", created_at=T0).to_row())
        project = Project(name=name, created_at=T0, created_by="alice")
        project_id = db.table("projects").insert(project.to_row()).last_pk
    assert isinstance(project_id, int)
    return project_id


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- connection settings and the file -----------------------------------------------------------


def test_connection_uses_wal_busy_timeout_and_foreign_keys(ledger: Ledger) -> None:
    def settings() -> tuple[object, ...]:
        db = ledger.db
        return tuple(
            db.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("journal_mode", "busy_timeout", "foreign_keys", "synchronous")
        )

    # synchronous 1 is NORMAL; every thread's own connection gets the same settings.
    assert settings() == ("wal", 5000, 1, 1)
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(settings).result() == ("wal", 5000, 1, 1)


def test_busy_timeout_is_configurable(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "l.db", migrate=True, busy_timeout_ms=1234) as ledger:
        assert ledger.db.execute("PRAGMA busy_timeout").fetchone()[0] == 1234


def test_files_are_private_to_root(tmp_path: Path, ledger: Ledger) -> None:
    add_project(ledger)  # a write, so the WAL files exist
    path = tmp_path / "state" / "ledger.db"
    assert mode(path.parent) == 0o700
    assert mode(path) == 0o600
    assert mode(path.with_name("ledger.db-wal")) == 0o600
    assert mode(path.with_name("ledger.db-shm")) == 0o600


def test_private_modes_hold_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        Ledger.open(tmp_path / "new" / "ledger.db", migrate=True).close()
    finally:
        os.umask(old)
    assert mode(tmp_path / "new") == 0o700
    assert mode(tmp_path / "new" / "ledger.db") == 0o600


def test_an_existing_readable_ledger_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger.open(path, migrate=True).close()
    os.chmod(path, 0o644)
    Ledger.open(path).close()
    assert mode(path) == 0o600


def test_an_existing_parent_folder_is_left_alone(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    Ledger.open(tmp_path / "ledger.db", migrate=True).close()
    assert mode(tmp_path) == 0o755


def test_a_symlinked_ledger_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.db"
    target.touch()
    (tmp_path / "ledger.db").symlink_to(target)
    with pytest.raises(LedgerError, match="cannot open ledger"):
        Ledger.open(tmp_path / "ledger.db", migrate=True)


def test_a_ledger_on_nfs_is_refused_before_anything_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "mountinfo"
    fake.write_text(
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        f"30 22 0:40 / {tmp_path} rw shared:5 - nfs4 server:/export rw\n"
    )
    monkeypatch.setattr(fs_check, "MOUNTINFO", fake)
    path = tmp_path / "state" / "ledger.db"
    with pytest.raises(NetworkFilesystemError, match="nfs4") as caught:
        Ledger.open(path, migrate=True)
    assert str(path) in str(caught.value)
    assert not (tmp_path / "state").exists()


def test_a_hostile_path_works(tmp_path: Path) -> None:
    folder = tmp_path / 'we\'ird "dir" ;$(touch x) ?#% é\nline'
    with Ledger.open(folder / "led ger.db", migrate=True) as ledger:
        add_project(ledger)
    with Ledger.open(folder / "led ger.db") as ledger:
        assert ledger.db.table("projects").count == 1


def test_a_closed_ledger_refuses_use(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "ledger.db", migrate=True)
    ledger.close()
    with pytest.raises(LedgerError, match="closed"), ledger.transaction():
        pass


# -- transactions -------------------------------------------------------------------------------


def test_a_rolled_back_transaction_leaves_neither_change_nor_event(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rxslurm.audit")
    with pytest.raises(RuntimeError, match="boom"), ledger.transaction() as db:
        db.table("platform_users").insert(PlatformUser(id="bob", created_at=T0).to_row())
        record_event(
            db,
            actor="bob",
            actor_uid=2002,
            origin="socket",
            action="user.create",
            target_type="platform_user",
            target_id="bob",
        )
        assert db.table("events").count == 1  # visible inside the transaction
        raise RuntimeError("boom")
    assert ledger.db.table("platform_users").count == 0
    assert ledger.db.table("events").count == 0
    assert list_events(ledger) == []
    assert [r for r in caplog.records if r.name == "rxslurm.audit"] == []
    # The connection is usable again afterwards.
    add_project(ledger)


def test_a_failed_statement_rolls_back_the_whole_transaction(ledger: Ledger) -> None:
    with pytest.raises(sqlite3.IntegrityError), ledger.transaction() as db:
        db.table("platform_users").insert(PlatformUser(id="bob", created_at=T0).to_row())
        db.table("platform_users").insert(PlatformUser(id="bob", created_at=T0).to_row())
    assert ledger.db.table("platform_users").count == 0


def test_transactions_do_not_nest(ledger: Ledger) -> None:
    with (
        ledger.transaction(),
        pytest.raises(LedgerError, match="already open"),
        ledger.transaction(),
    ):
        pass


def test_the_transaction_holds_the_write_lock_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger.open(path, migrate=True, busy_timeout_ms=50) as ledger, ledger.transaction():
        # Nothing written yet, but another connection cannot start writing.
        other = sqlite3.connect(path, timeout=0.05, isolation_level=None)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
            # Readers are not blocked (WAL).
            assert other.execute("SELECT count(*) FROM projects").fetchone()[0] == 0
        finally:
            other.close()


def test_concurrent_read_modify_write_never_loses_an_update(ledger: Ledger) -> None:
    project_id = add_project(ledger)
    start = threading.Barrier(2)

    def increment_200_times() -> int:
        start.wait()
        for _ in range(200):
            with ledger.transaction() as db:
                (cpus,) = db.execute(
                    "SELECT cpus FROM projects WHERE id = ?", [project_id]
                ).fetchone()
                # Invite the other thread in between the read and the write.
                time.sleep(0)
                db.execute("UPDATE projects SET cpus = ? WHERE id = ?", [cpus + 1, project_id])
        return id(ledger.db.conn)

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(increment_200_times) for _ in range(2)]
        connections = {future.result() for future in futures}
    assert len(connections) == 2  # one connection per thread
    assert ledger.db.table("projects").get(project_id)["cpus"] == 400


def test_read_is_a_read_only_snapshot(ledger: Ledger) -> None:
    add_project(ledger)
    with ledger.read() as db:
        assert db.table("projects").count == 1
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            db.execute("DELETE FROM projects")
    # Writes work again after the snapshot.
    add_project(ledger, "p2")
    assert ledger.db.table("projects").count == 2


# -- the schema's own guarantees ----------------------------------------------------------------


def test_schema_enforces_its_constraints(ledger: Ledger) -> None:
    project_id = add_project(ledger)
    db = ledger.db
    bad_rows = [
        (
            "projects",
            {**Project(name="x", created_at=T0, created_by="a").to_row(), "run_as": "root"},
        ),
        ("projects", {**Project(name="y", created_at=T0, created_by="a").to_row(), "cpus": -1}),
        (
            "members",
            Member(
                project_id=project_id,
                platform_user_id="alice",
                role="admin",
                added_at=T0,
                added_by="alice",
            ).to_row(),
        ),
        (
            "bindings",
            Binding(
                platform_user_id="alice", uid=0, username="root", bound_at=T0, bound_by="rxd"
            ).to_row(),
        ),
        # STRICT: a uid as text is an error, not a row that never matches.
        (
            "bindings",
            {
                **Binding(
                    platform_user_id="alice", uid=1, username="a", bound_at=T0, bound_by="rxd"
                ).to_row(),
                "uid": "two thousand",
            },
        ),
        # Foreign keys are on: no member of a project that does not exist.
        (
            "members",
            Member(
                project_id=999, platform_user_id="alice", role="owner", added_at=T0, added_by="a"
            ).to_row(),
        ),
    ]
    for table, row in bad_rows:
        with pytest.raises(sqlite3.IntegrityError), ledger.transaction() as tx:
            tx.table(table).insert(row)
    assert db.table("members").count == 0
    assert db.table("bindings").count == 0


def test_one_linux_identity_per_platform_user_and_back(ledger: Ledger) -> None:
    with ledger.transaction() as db:
        for user in ("alice", "bob"):
            db.table("platform_users").insert(PlatformUser(id=user, created_at=T0).to_row())
        db.table("bindings").insert(
            Binding(
                platform_user_id="alice", uid=2001, username="rxalice", bound_at=T0, bound_by="rxd"
            ).to_row()
        )
    with pytest.raises(sqlite3.IntegrityError, match="bindings.uid"), ledger.transaction() as db:
        db.table("bindings").insert(
            Binding(
                platform_user_id="bob", uid=2001, username="rxalice", bound_at=T0, bound_by="rxd"
            ).to_row()
        )


def test_deleting_a_project_removes_its_members(ledger: Ledger) -> None:
    project_id = add_project(ledger)
    with ledger.transaction() as db:
        db.table("members").insert(
            Member(
                project_id=project_id,
                platform_user_id="alice",
                role="owner",
                added_at=T0,
                added_by="alice",
            ).to_row()
        )
        db.execute("DELETE FROM projects WHERE id = ?", [project_id])
    assert ledger.db.table("members").count == 0


def test_container_generation_grows_with_every_state_change(ledger: Ledger) -> None:
    project_id = add_project(ledger)
    container = Container(
        project_id=project_id, name="rx-p1", state="stopped", created_at=T0, updated_at=T0
    )
    with ledger.transaction() as db:
        container_id = db.table("containers").insert(container.to_row()).last_pk

    def generation() -> int:
        return int(ledger.db.table("containers").get(container_id)["generation"])

    with ledger.transaction() as db:
        # A writer that forgets to bump the generation still gets it bumped.
        db.execute("UPDATE containers SET state = 'starting' WHERE id = ?", [container_id])
    assert generation() == 1
    with ledger.transaction() as db:
        # A conditional update that bumps it itself is not bumped twice.
        cursor = db.execute(
            "UPDATE containers SET state = 'running', generation = generation + 1"
            " WHERE id = ? AND generation = ?",
            [container_id, 1],
        )
        assert cursor.rowcount == 1
    assert generation() == 2
    with ledger.transaction() as db:
        # A stale conditional update changes nothing.
        cursor = db.execute(
            "UPDATE containers SET state = 'stopped', generation = generation + 1"
            " WHERE id = ? AND generation = ?",
            [container_id, 1],
        )
        assert cursor.rowcount == 0
        # Rewriting other columns with the same state is not a state change.
        db.execute(
            "UPDATE containers SET state = 'running', reason = 'x' WHERE id = ?", [container_id]
        )
    assert generation() == 2


# -- records ------------------------------------------------------------------------------------


def all_records(project_id: int, container_id: int) -> list[Record]:
    later = T0 + timedelta(hours=1)
    return [
        Binding(
            platform_user_id="alice", uid=2001, username="rxalice", bound_at=T0, bound_by="rxd"
        ),
        BindingCode(
            code_hash="sha256:ab",
            platform_user_id="alice",
            created_at=T0,
            created_by="platform",
            expires_at=later,
            used_at=later,
            used_by_uid=2001,
        ),
        Member(
            project_id=project_id,
            platform_user_id="alice",
            role="editor",
            added_at=T0,
            added_by="alice",
        ),
        Job(
            job_id=4242,
            container_id=container_id,
            state="RUNNING",
            reason="None",
            node="n1",
            submitted_at=T0,
            started_at=later,
            exit_code="0:0",
            last_seen_at=later,
        ),
    ]


def test_records_round_trip_through_the_ledger(ledger: Ledger) -> None:
    project = Project(
        name="full",
        created_at=T0,
        created_by="alice",
        image="docker://ubuntu:22.04",
        cpus=2,
        mem_mb=4000,
        gpus=1,
        gpu_type="a100",
        gpu_driver="nvidia",
        gpu_mem_gb=40,
        partition="gpu",
        time_limit_min=600,
        idle_timeout_min=30,
        run_as="service",
        workspace="/data/full",
        settings_changed_at=T0,
    )
    with ledger.transaction() as db:
        user = PlatformUser(id="alice", display_name="Alice Ä", created_at=T0)
        db.table("platform_users").insert(user.to_row())
        project_id = db.table("projects").insert(project.to_row()).last_pk
        container = Container(
            project_id=project_id,
            name="rx-full",
            state="running",
            reason="started",
            desired="running",
            image="docker://ubuntu:22.04",
            overlay_path="/var/lib/rxslurm/overlays/full.img",
            runtime_user="rxalice",
            runtime_uid=2001,
            settings={"cpus": 2, "gres": ["gpu:a100:1"], "nested": {"a": None}},
            last_activity_at=T0,
            created_at=T0,
            updated_at=T0,
            generation=3,
        )
        container_id = db.table("containers").insert(container.to_row()).last_pk
        assert isinstance(project_id, int) and isinstance(container_id, int)
        records = all_records(project_id, container_id)
        for record in records:
            db.table(record.table).insert(record.to_row())

    db = ledger.db
    assert PlatformUser.from_row(db.table("platform_users").get("alice")) == user
    assert Project.from_row(db.table("projects").get(project_id)) == Project(
        **{**project.__dict__, "id": project_id}
    )
    stored = Container.from_row(db.table("containers").get(container_id))
    assert stored.settings == container.settings
    assert stored == Container(**{**container.__dict__, "id": container_id})
    for record in records:
        (row,) = db.table(record.table).rows
        assert type(record).from_row(row) == record


def test_timestamps_are_fixed_width_utc_text() -> None:
    assert to_timestamp(T0) == "2024-05-01T12:00:00.123456Z"
    assert to_timestamp(T0.replace(microsecond=0)) == "2024-05-01T12:00:00.000000Z"
    plus_two = timezone(timedelta(hours=2))
    assert to_timestamp(datetime(2024, 5, 1, 14, 0, tzinfo=plus_two)) == (
        "2024-05-01T12:00:00.000000Z"
    )
    assert from_timestamp("2024-05-01T12:00:00.123456Z") == T0
    with pytest.raises(ValueError, match="naive"):
        to_timestamp(datetime(2024, 5, 1))
    # Text order is time order.
    earlier, later = utcnow(), utcnow() + timedelta(microseconds=1)
    assert to_timestamp(earlier) < to_timestamp(later)


def test_an_empty_json_column_reads_as_an_empty_dict() -> None:
    row = Event(at=T0, actor="rxd", origin="reconciler", action="tick").to_row()
    assert row["detail"] == "{}"
    assert Event.from_row({**row, "detail": None}).detail == {}


# -- the audit trail ----------------------------------------------------------------------------


def test_events_keep_json_detail_and_are_logged_after_commit(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rxslurm.audit")
    detail = {"image": "docker://alpine", "gres": ["gpu:a100:2"], "why": 'quote " and \n'}
    with ledger.transaction() as db:
        event = record_event(
            db,
            actor="alice",
            actor_uid=2001,
            origin="socket",
            action="container.start",
            target_type="container",
            target_id=7,
            detail=detail,
            at=T0,
        )
        assert caplog.records == []  # not before the commit
    assert event.id is not None
    (stored,) = list_events(ledger)
    assert stored == event
    assert stored.detail == detail
    assert stored.target_id == "7"
    raw = ledger.db.execute("SELECT detail FROM events").fetchone()[0]
    assert ledger.db.execute("SELECT json_extract(?, '$.gres[0]')", [raw]).fetchone()[0] == (
        "gpu:a100:2"
    )
    (line,) = [r for r in caplog.records if r.name == "rxslurm.audit"]
    assert line.action == "container.start"  # type: ignore[attr-defined]
    assert line.event_id == event.id  # type: ignore[attr-defined]
    assert line.detail == detail  # type: ignore[attr-defined]
    assert line.at == "2024-05-01T12:00:00.123456Z"  # type: ignore[attr-defined]


def test_the_audit_line_is_one_json_object_with_rxds_formatter(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    import json

    from rxslurm.daemon.logs import JsonFormatter

    caplog.set_level(logging.INFO, logger="rxslurm.audit")
    with ledger.transaction() as db:
        record_event(
            db,
            actor="rxd",
            actor_uid=None,
            origin="reconciler",
            action="job.lost",
            target_type="job",
            target_id=12,
            detail={"state": "NODE_FAIL"},
        )
    (record,) = [r for r in caplog.records if r.name == "rxslurm.audit"]
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["logger"] == "rxslurm.audit"
    assert parsed["action"] == "job.lost"
    assert parsed["detail"] == {"state": "NODE_FAIL"}


def test_record_event_needs_a_transaction(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="inside"):
        record_event(
            ledger.db,
            actor="rxd",
            actor_uid=None,
            origin="reconciler",
            action="x",
            target_type=None,
            target_id=None,
        )
    assert ledger.db.table("events").count == 0


def test_list_events_filters_by_target_and_time_newest_kept_oldest_first(ledger: Ledger) -> None:
    with ledger.transaction() as db:
        for minute in range(6):
            record_event(
                db,
                actor="alice",
                actor_uid=2001,
                origin="socket",
                action=f"a{minute}",
                target_type="container" if minute % 2 else "project",
                target_id=minute % 3,
                at=T0 + timedelta(minutes=minute),
            )
    actions = [e.action for e in list_events(ledger)]
    assert actions == ["a0", "a1", "a2", "a3", "a4", "a5"]
    assert [e.action for e in list_events(ledger, limit=2)] == ["a4", "a5"]
    assert [e.action for e in list_events(ledger, since=T0 + timedelta(minutes=3))] == [
        "a3",
        "a4",
        "a5",
    ]
    assert [e.action for e in list_events(ledger, target=("container", None))] == [
        "a1",
        "a3",
        "a5",
    ]
    assert [e.action for e in list_events(ledger, target=("project", 0))] == ["a0"]
    assert [e.action for e in list_events(ledger, target=("container", "1"))] == ["a1"]
    with pytest.raises(ValueError, match="limit"):
        list_events(ledger, limit=0)
