"""Ledger migrations: a blank ledger, an up-to-date one, an old one and a newer one."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlite_utils import Database, Migrations

from rxslurm.daemon.ledger import migrations as migrations_module
from rxslurm.daemon.ledger import store as ledger_module
from rxslurm.daemon.ledger.store import Ledger, MigrationsPending, SchemaTooNew
from rxslurm.daemon.ledger.timestamps import utcnow
from tests.support.ledger_rows import Member, PlatformUser, Project

EXPECTED_COLUMNS = {
    "platform_users": ["id", "display_name", "created_at"],
    "bindings": ["platform_user_id", "uid", "username", "bound_at", "bound_by"],
    "binding_codes": [
        "code_hash",
        "platform_user_id",
        "created_at",
        "created_by",
        "expires_at",
        "used_at",
        "used_by_uid",
        "for_uid",
    ],
    "projects": [
        "id",
        "name",
        "created_at",
        "created_by",
        "image",
        "cpus",
        "mem_mb",
        "gpus",
        "gpu_type",
        "gpu_driver",
        "gpu_mem_gb",
        "partition",
        "time_limit_min",
        "idle_timeout_min",
        "run_as",
        "workspace",
        "settings_changed_at",
        "run_as_user",
        "workspace_uid",
        "dev_mode",
        "account",
        "qos",
        "constraint",
        "reservation",
        "service",
        "port",
        "restart",
    ],
    "members": ["project_id", "platform_user_id", "role", "added_at", "added_by"],
    "containers": [
        "id",
        "project_id",
        "name",
        "state",
        "reason",
        "desired",
        "image",
        "overlay_path",
        "runtime_user",
        "runtime_uid",
        "settings",
        "last_error",
        "last_activity_at",
        "created_at",
        "updated_at",
        "generation",
        "job_id",
        "node",
        "instance",
        "started_at",
        "state_dir",
        "queued_at",
        "service_restarts",
    ],
    "jobs": [
        "job_id",
        "container_id",
        "state",
        "reason",
        "node",
        "submitted_at",
        "started_at",
        "ended_at",
        "exit_code",
        "last_seen_at",
    ],
    "events": [
        "id",
        "at",
        "actor",
        "actor_uid",
        "origin",
        "action",
        "target_type",
        "target_id",
        "detail",
    ],
    "image_digests": ["key", "digest", "resolved_at", "resolved_by"],
    "project_env": ["project_id", "name", "value", "set_by", "set_at"],
}

EXPECTED_INDEXES = {
    "binding_codes": [["platform_user_id"]],
    "members": [["platform_user_id"]],
    "containers": [["state"]],
    "jobs": [["container_id"]],
    "events": [["target_type", "target_id"], ["at"]],
    "image_builds": [["project_id", "name"], ["state"]],
}


ALL_MIGRATIONS = [
    "m001_initial",
    "m002_identity_targets",
    "m003_container_jobs",
    "m004_quotas_and_leases",
    "m005_workspace_owner",
    "m006_rename_unreachable_projects",
    "m007_overlay_snapshots",
    "m008_image_builds",
    "m009_image_digests",
    "m010_exec_sessions",
    "m011_job_flags",
    "m014_labels",
    "m015_env_secrets",
    "m016_volumes",
    "m017_one_shot_jobs",
    "m018_service",
    "m019_service_restarts",
]


def test_oldest_schema_migrates_to_the_newest(tmp_path: Path) -> None:
    """A ledger left at m001 by an older rxd keeps its rows and gains the new columns."""
    path = tmp_path / "ledger.db"
    with Ledger.open(path, migrate=True) as ledger:
        db = ledger.db
        db.execute("DELETE FROM _sqlite_migrations WHERE name != 'm001_initial'")
        db.execute("DROP TABLE overlay_snapshot_requests")
        db.execute("DROP TABLE overlay_snapshots")
        db.execute("DROP TABLE leases")
        db.execute("DROP TABLE quotas")
        db.execute("DROP TABLE exec_sessions")
        db.execute("ALTER TABLE containers DROP COLUMN queued_at")
        db.execute("DROP INDEX containers_job")
        for column in ("job_id", "node", "instance", "started_at", "state_dir"):
            db.execute(f"ALTER TABLE containers DROP COLUMN {column}")
        db.execute("ALTER TABLE binding_codes DROP COLUMN for_uid")
        db.execute("ALTER TABLE projects DROP COLUMN run_as_user")
        db.execute("ALTER TABLE projects DROP COLUMN workspace_uid")
        for table in (
            "one_shot_leases",
            "one_shot_jobs",
            "volume_mounts",
            "volumes",
            "build_leases",
            "image_builds",
            "image_drafts",
            "image_digests",
            "project_labels",
        ):
            db.execute(f"DROP TABLE {table}")
        db.execute("ALTER TABLE projects DROP COLUMN dev_mode")
        for column in ("account", "qos", '"constraint"', "reservation"):
            db.execute(f"ALTER TABLE projects DROP COLUMN {column}")
        db.execute("DROP TABLE project_env")
        for column in ("service", "port", "restart"):
            db.execute(f"ALTER TABLE projects DROP COLUMN {column}")
        db.execute("ALTER TABLE containers DROP COLUMN service_restarts")
        db.execute(
            "INSERT INTO projects (name, created_at, created_by)"
            " VALUES ('old', '2025-01-01T00:00:00.000000Z', 'u')"
        )
    with Ledger.open(path, migrate=True) as ledger:
        assert ledger.last_applied == ALL_MIGRATIONS[1:]
        row = next(ledger.db["projects"].rows)
        assert (row["name"], row["run_as_user"], row["workspace_uid"]) == ("old", None, None)
        # sbatch's flags (m011): none, so the job is what it was before.
        assert [row[f] for f in ("account", "qos", "constraint", "reservation")] == [""] * 4
        # A service (m018): none.
        assert (row["service"], row["port"]) == ("", 0)
        # A restart policy (m019): none.
        assert row["restart"] == ""


def schema(path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
    finally:
        conn.close()


def test_migrate_blank_ledger_creates_every_table_column_and_index(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "ledger.db", migrate=True)
    try:
        assert ledger.last_applied == ALL_MIGRATIONS
        assert ledger.schema_version() == ALL_MIGRATIONS[-1]
        db = ledger.db
        tables = set(db.table_names())
        assert set(EXPECTED_COLUMNS) <= tables
        for table, columns in EXPECTED_COLUMNS.items():
            assert [c.name for c in db.table(table).columns] == columns, table
            assert db.table(table).strict, table
        for table, indexes in EXPECTED_INDEXES.items():
            have = [index.columns for index in db.table(table).indexes]
            for columns in indexes:
                assert columns in have, (table, columns)
        assert db.table("bindings").pks == ["platform_user_id"]
        assert db.table("members").pks == ["project_id", "platform_user_id"]
        assert db.table("events").pks == ["id"]
        recorded = list(db.table("_sqlite_migrations").rows)
        assert [(r["migration_set"], r["name"]) for r in recorded] == [
            ("rxslurm", name) for name in ALL_MIGRATIONS
        ]
    finally:
        ledger.close()


def test_migrate_twice_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger.open(path, migrate=True).close()
    before = schema(path)
    with Ledger.open(path, migrate=True) as ledger:
        assert ledger.last_applied == []
        assert ledger.migrate() == []
        assert ledger.db.table("_sqlite_migrations").count == len(ALL_MIGRATIONS)
    assert schema(path) == before


def test_open_with_pending_migrations_says_run_rxd_migrate(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with pytest.raises(MigrationsPending, match=", ".join(ALL_MIGRATIONS) + ": run `rxd migrate`"):
        Ledger.open(path)
    # Refusing did not half-create the schema.
    assert [name for name, _ in schema(path)] == []


def test_open_refuses_a_ledger_migrated_by_a_newer_rxd(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger.open(path, migrate=True) as ledger, ledger.transaction() as db:
        db.table("_sqlite_migrations").insert(
            {"migration_set": "rxslurm", "name": "m999_future", "applied_at": "later"}
        )
    with pytest.raises(SchemaTooNew, match="m999_future"):
        Ledger.open(path)
    with pytest.raises(SchemaTooNew, match="newer rx-slurm"):
        Ledger.open(path, migrate=True)


UseMigrations = Callable[[Migrations], None]


def _extended(m002: Callable[[Database], None]) -> Migrations:
    """The real migrations plus one more (named m002_... here), as a later release would have."""
    extended = Migrations(migrations_module.MIGRATION_SET)
    for migration in migrations_module.migrations._migrations:
        extended(name=migration.name)(migration.fn)
    extended()(m002)
    return extended


@pytest.fixture
def use_migrations(monkeypatch: pytest.MonkeyPatch) -> UseMigrations:
    def use(extended: Migrations) -> None:
        monkeypatch.setattr(migrations_module, "migrations", extended)
        monkeypatch.setattr(ledger_module, "migrations", extended)

    return use


def _seed_project_with_member(ledger: Ledger) -> None:
    now = utcnow()
    with ledger.transaction() as db:
        db.table("platform_users").insert(PlatformUser(id="alice", created_at=now).to_row())
        project = Project(id=1, name="p1", created_at=now, created_by="alice", workspace="/w")
        db.table("projects").insert(project.to_row())
        member = Member(
            project_id=1, platform_user_id="alice", role="owner", added_at=now, added_by="alice"
        )
        db.table("members").insert(member.to_row())


def test_an_old_ledger_gets_only_the_new_migration(
    tmp_path: Path, use_migrations: UseMigrations
) -> None:
    path = tmp_path / "ledger.db"
    with Ledger.open(path, migrate=True) as ledger:
        _seed_project_with_member(ledger)

    def m002_workspace_path(db: Database) -> None:
        # Rebuilding a table that members reference ON DELETE CASCADE: with foreign keys on,
        # dropping the old table would delete every member (or sqlite-utils would refuse).
        db.table("projects").transform(rename={"workspace": "workspace_path"})

    use_migrations(_extended(m002_workspace_path))
    with pytest.raises(MigrationsPending, match=r"needs migrations m002_workspace_path: run"):
        Ledger.open(path)
    with Ledger.open(path, migrate=True) as ledger:
        assert ledger.last_applied == ["m002_workspace_path"]
        assert ledger.schema_version() == "m002_workspace_path"
        project = ledger.db.table("projects").get(1)
        assert project["workspace_path"] == "/w"
        assert "workspace" not in project
        assert ledger.db.table("members").count == 1
        assert ledger.db.table("projects").strict
        # Foreign keys are back on for normal use.
        assert ledger.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    with Ledger.open(path) as ledger:
        assert ledger.pending_migrations() == []


def test_a_failing_migration_leaves_the_previous_schema(
    tmp_path: Path, use_migrations: UseMigrations
) -> None:
    path = tmp_path / "ledger.db"
    Ledger.open(path, migrate=True).close()

    def m002_breaks(db: Database) -> None:
        db.execute("CREATE TABLE half_done (id INTEGER PRIMARY KEY)")
        raise RuntimeError("m002 failed")

    use_migrations(_extended(m002_breaks))
    with pytest.raises(RuntimeError, match="m002 failed"):
        Ledger.open(path, migrate=True)
    with pytest.raises(MigrationsPending, match="m002_breaks"):
        Ledger.open(path)
    assert "half_done" not in [name for name, _ in schema(path)]


def test_a_migration_that_breaks_foreign_keys_is_rolled_back(
    tmp_path: Path,
    use_migrations: UseMigrations,
) -> None:
    path = tmp_path / "ledger.db"
    with Ledger.open(path, migrate=True) as ledger:
        _seed_project_with_member(ledger)

    def m002_orphans(db: Database) -> None:
        db.execute("DELETE FROM platform_users")

    use_migrations(_extended(m002_orphans))
    with pytest.raises(ledger_module.LedgerError, match="foreign keys"):
        Ledger.open(path, migrate=True)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT count(*) FROM platform_users").fetchone()[0] == 1
    finally:
        conn.close()
