"""The ledger's schema, one numbered migration at a time.

Rules: a migration that has been applied anywhere is never edited or renamed; a change is a new
function `mNNN_what_it_does`. The SQL is spelled out literally (not built from constants that may
change later), so a migration means the same thing forever. `Ledger.migrate()` applies the pending
ones in one `BEGIN IMMEDIATE` transaction with foreign keys off (so `table.transform()` works on
referenced tables) and checks `PRAGMA foreign_key_check` before committing.

Conventions of the schema:
- Timestamps are ISO-8601 UTC text, "2024-05-01T12:34:56.123456Z" (see timestamps.py).
- Tables are STRICT: a uid stored as "2001" instead of 2001 is an error, not a silent mismatch.
- A project setting of 0 or "" means "the deployment's default".
- Deleting a project removes its members; a container, its jobs and bindings must be removed
  explicitly (a running Slurm job must never lose its ledger row by a cascade).
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from pathlib import PurePosixPath

from sqlite_utils import Database, Migrations

MIGRATION_SET = "rxslurm"

log = logging.getLogger("rxslurm.ledger")

migrations = Migrations(MIGRATION_SET)


@migrations()
def m001_initial(db: Database) -> None:
    statements = [
        """
        CREATE TABLE platform_users (
            id TEXT PRIMARY KEY NOT NULL,
            display_name TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL
        ) STRICT
        """,
        # One Linux identity per platform user and vice versa; never root.
        """
        CREATE TABLE bindings (
            platform_user_id TEXT PRIMARY KEY NOT NULL REFERENCES platform_users(id),
            uid INTEGER NOT NULL UNIQUE CHECK (uid > 0),
            username TEXT NOT NULL,
            bound_at TEXT NOT NULL,
            bound_by TEXT NOT NULL
        ) STRICT
        """,
        # Only the hash of a code is kept: a leaked ledger must not let anyone bind.
        """
        CREATE TABLE binding_codes (
            code_hash TEXT PRIMARY KEY NOT NULL,
            platform_user_id TEXT NOT NULL REFERENCES platform_users(id) ON DELETE CASCADE,
            created_at TEXT NOT NULL,
            created_by TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            used_at TEXT,
            used_by_uid INTEGER
        ) STRICT
        """,
        "CREATE INDEX binding_codes_platform_user ON binding_codes (platform_user_id)",
        """
        CREATE TABLE projects (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL,
            created_by TEXT NOT NULL,
            image TEXT NOT NULL DEFAULT '',
            cpus INTEGER NOT NULL DEFAULT 0 CHECK (cpus >= 0),
            mem_mb INTEGER NOT NULL DEFAULT 0 CHECK (mem_mb >= 0),
            gpus INTEGER NOT NULL DEFAULT 0 CHECK (gpus >= 0),
            gpu_type TEXT NOT NULL DEFAULT '',
            gpu_driver TEXT NOT NULL DEFAULT '',
            gpu_mem_gb INTEGER NOT NULL DEFAULT 0 CHECK (gpu_mem_gb >= 0),
            partition TEXT NOT NULL DEFAULT '',
            time_limit_min INTEGER NOT NULL DEFAULT 0 CHECK (time_limit_min >= 0),
            idle_timeout_min INTEGER NOT NULL DEFAULT 0 CHECK (idle_timeout_min >= 0),
            run_as TEXT NOT NULL DEFAULT 'bound' CHECK (run_as IN ('bound', 'service')),
            workspace TEXT NOT NULL DEFAULT '',
            settings_changed_at TEXT
        ) STRICT
        """,
        """
        CREATE TABLE members (
            project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
            platform_user_id TEXT NOT NULL REFERENCES platform_users(id),
            role TEXT NOT NULL CHECK (role IN ('owner', 'manager', 'editor', 'viewer')),
            added_at TEXT NOT NULL,
            added_by TEXT NOT NULL,
            PRIMARY KEY (project_id, platform_user_id)
        ) STRICT
        """,
        # "Which projects is this user in?"
        "CREATE INDEX members_platform_user ON members (platform_user_id)",
        """
        CREATE TABLE containers (
            id INTEGER PRIMARY KEY,
            project_id INTEGER NOT NULL UNIQUE REFERENCES projects(id),
            name TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL,
            reason TEXT,
            desired TEXT,
            image TEXT,
            overlay_path TEXT,
            runtime_user TEXT,
            runtime_uid INTEGER CHECK (runtime_uid IS NULL OR runtime_uid > 0),
            settings TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(settings)),
            last_error TEXT,
            last_activity_at TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            generation INTEGER NOT NULL DEFAULT 0
        ) STRICT
        """,
        # The reconciler walks containers by state.
        "CREATE INDEX containers_state ON containers (state)",
        # Conditional updates (`... WHERE id = ? AND generation = ?`) rely on generation
        # growing with every state change; a writer that forgets to bump it gets it bumped here.
        """
        CREATE TRIGGER containers_generation AFTER UPDATE OF state ON containers
        WHEN NEW.state IS NOT OLD.state AND NEW.generation = OLD.generation
        BEGIN
            UPDATE containers SET generation = OLD.generation + 1 WHERE id = NEW.id;
        END
        """,
        """
        CREATE TABLE jobs (
            job_id INTEGER PRIMARY KEY,
            container_id INTEGER NOT NULL REFERENCES containers(id),
            state TEXT NOT NULL,
            reason TEXT,
            node TEXT,
            submitted_at TEXT,
            started_at TEXT,
            ended_at TEXT,
            exit_code TEXT,
            last_seen_at TEXT
        ) STRICT
        """,
        "CREATE INDEX jobs_container ON jobs (container_id)",
        # AUTOINCREMENT: an event id is never reused, even after the newest rows are deleted.
        """
        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            actor_uid INTEGER,
            origin TEXT NOT NULL,
            action TEXT NOT NULL,
            target_type TEXT,
            target_id TEXT,
            detail TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(detail))
        ) STRICT
        """,
        "CREATE INDEX events_target ON events (target_type, target_id)",
        "CREATE INDEX events_at ON events (at)",
    ]
    for statement in statements:
        db.execute(statement)


def known_names() -> list[str]:
    """Every migration this rx-slurm knows, in order (sqlite-utils has no public accessor)."""
    return [m.name for m in migrations._migrations]


@migrations()
def m002_identity_targets(db: Database) -> None:
    statements = [
        # A binding code may be issued for one Linux user only; NULL: any bindable user.
        "ALTER TABLE binding_codes ADD COLUMN for_uid INTEGER",
        # With run_as = 'bound', the platform user whose Linux identity project work runs as.
        "ALTER TABLE projects ADD COLUMN run_as_user TEXT REFERENCES platform_users(id)",
    ]
    for statement in statements:
        db.execute(statement)


@migrations()
def m003_container_jobs(db: Database) -> None:
    statements = [
        # The Slurm job that currently holds the container; NULL while resting or submitting.
        "ALTER TABLE containers ADD COLUMN job_id INTEGER",
        "ALTER TABLE containers ADD COLUMN node TEXT",
        "ALTER TABLE containers ADD COLUMN instance TEXT",
        "ALTER TABLE containers ADD COLUMN started_at TEXT",
        # The folder holding the overlay, job status files and instance records.
        "ALTER TABLE containers ADD COLUMN state_dir TEXT",
        "CREATE INDEX containers_job ON containers (job_id)",
    ]
    for statement in statements:
        db.execute(statement)


@migrations()
def m004_quotas_and_leases(db: Database) -> None:
    statements = [
        # A limit per partition for the whole deployment, one project, or one Linux user
        # (the identity jobs run as). 0 means no limit of that kind.
        """
        CREATE TABLE quotas (
            id INTEGER PRIMARY KEY,
            partition TEXT NOT NULL,
            scope TEXT NOT NULL CHECK (scope IN ('deployment', 'project', 'user')),
            subject TEXT NOT NULL DEFAULT '',
            max_gpus INTEGER NOT NULL DEFAULT 0 CHECK (max_gpus >= 0),
            max_cpus INTEGER NOT NULL DEFAULT 0 CHECK (max_cpus >= 0),
            max_mem_mb INTEGER NOT NULL DEFAULT 0 CHECK (max_mem_mb >= 0),
            max_containers INTEGER NOT NULL DEFAULT 0 CHECK (max_containers >= 0),
            mirror_qos INTEGER NOT NULL DEFAULT 0 CHECK (mirror_qos IN (0, 1)),
            created_at TEXT NOT NULL,
            created_by TEXT NOT NULL,
            UNIQUE (partition, scope, subject)
        ) STRICT
        """,
        # What a starting or running container holds; the sum never exceeds a quota.
        """
        CREATE TABLE leases (
            container_id INTEGER PRIMARY KEY REFERENCES containers(id),
            partition TEXT NOT NULL,
            project TEXT NOT NULL,
            linux_user TEXT NOT NULL,
            gpus INTEGER NOT NULL,
            cpus INTEGER NOT NULL,
            mem_mb INTEGER NOT NULL,
            acquired_at TEXT NOT NULL
        ) STRICT
        """,
        "CREATE INDEX leases_partition ON leases (partition)",
        # Containers waiting for quota are served in this order.
        "ALTER TABLE containers ADD COLUMN queued_at TEXT",
    ]
    for statement in statements:
        db.execute(statement)


@migrations()
def m005_workspace_owner(db: Database) -> None:
    statements = [
        # The uid rx-slurm last handed the project's workspace folder to (0: parked as root's while
        # the project has no run-as identity); NULL: not recorded yet. A folder owned by anyone
        # else is not this project's and is never used.
        "ALTER TABLE projects ADD COLUMN workspace_uid INTEGER",
    ]
    for statement in statements:
        db.execute(statement)


@migrations()
def m006_rename_unreachable_projects(db: Database) -> None:
    """Rename projects whose names an older rxd accepted but no request can name any more.

    Before names were matched in full, "x\\n" (a trailing newline) was stored; the API now refuses
    such a name in every path, so nobody (its owners, admins) could show, stop, disable or delete
    that project, and a container of it could hold a quota lease for good. Each one becomes
    `renamed-<id>` (a suffix if that is taken), with its container, leases and project quotas,
    and an audit event `project.renamed` saying what it was called. Its workspace and container
    folder paths follow the new name like every project's: the old folders are not moved (a
    migration touches the ledger only, and their names end in a control character), they stay
    where they are, their owner's, and the event names them for an admin to move or archive.
    """
    # The rule of this migration, spelled out: later changes to the name rule do not change it.
    good = re.compile(r"[a-z](?:[a-z0-9-]{0,19}[a-z0-9])?")
    rows = db.execute("SELECT id, name, workspace FROM projects ORDER BY id").fetchall()
    taken = {name for _, name, _ in rows}
    at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    for project_id, old, workspace in rows:
        if good.fullmatch(old):
            continue
        new, n = f"renamed-{project_id}", 1
        while new in taken or _container_name_taken(db, f"rx-{new}"):
            n += 1
            new = f"renamed-{project_id}-{n}"
        taken.add(new)
        old_workspace = workspace or ""
        new_workspace = str(PurePosixPath(old_workspace).parent / new) if old_workspace else ""
        db.execute(
            "UPDATE projects SET name = ?, workspace = ? WHERE id = ?",
            [new, new_workspace, project_id],
        )
        containers = db.execute(
            "SELECT id, name, state_dir FROM containers WHERE project_id = ?", [project_id]
        ).fetchall()
        for container_id, _, _ in containers:
            db.execute("UPDATE containers SET name = ? WHERE id = ?", [f"rx-{new}", container_id])
        db.execute("UPDATE leases SET project = ? WHERE project = ?", [new, old])
        db.execute(
            "UPDATE quotas SET subject = ? WHERE scope = 'project' AND subject = ?", [new, old]
        )
        detail = {
            "from": old[:256],
            "to": new,
            "why": "its name is not one the API accepts, so nobody could reach it",
            "old_workspace": old_workspace[:4096],
            "workspace": new_workspace,
            "old_container_folders": [(state_dir or "")[:4096] for _, _, state_dir in containers],
        }
        db.execute(
            "INSERT INTO events (at, actor, actor_uid, origin, action, target_type, target_id,"
            " detail) VALUES (?, 'rxd', NULL, 'migration', 'project.renamed', 'project', ?, ?)",
            [at, new, json.dumps(detail)],
        )
        log.warning("renamed a project no request could name", extra=detail)


def _container_name_taken(db: Database, name: str) -> bool:
    return bool(db.execute("SELECT 1 FROM containers WHERE name = ?", [name]).fetchone())


@migrations()
def m007_overlay_snapshots(db: Database) -> None:
    statements = [
        # Read-only copies of a container's overlay, taken while no job mounts it, that batch
        # steps mount read-only. `covers_until`: the overlay as of this time (when it was read, or
        # found unchanged since): a job that ended later makes a new one due (a time, since
        # Slurm's job ids may start again from low numbers). `source_mtime_ns`: the
        # overlay's modification time then, to tell an unchanged overlay. `removed_at`: the
        # file went (older than the kept ones, or its folder retired); the row stays for history.
        """
        CREATE TABLE overlay_snapshots (
            id INTEGER PRIMARY KEY,
            container_id INTEGER NOT NULL REFERENCES containers(id) ON DELETE CASCADE,
            runtime_uid INTEGER NOT NULL,
            path TEXT NOT NULL,
            taken_at TEXT NOT NULL,
            size_bytes INTEGER NOT NULL,
            source_mtime_ns INTEGER NOT NULL,
            covers_until TEXT NOT NULL,
            trigger TEXT NOT NULL CHECK (trigger IN ('sleep', 'request')),
            requested_by TEXT,
            removed_at TEXT
        ) STRICT
        """,
        "CREATE INDEX overlay_snapshots_container ON overlay_snapshots (container_id)",
        # A snapshot asked for while the container was awake: taken the moment it next sleeps.
        """
        CREATE TABLE overlay_snapshot_requests (
            container_id INTEGER PRIMARY KEY REFERENCES containers(id) ON DELETE CASCADE,
            requested_at TEXT NOT NULL,
            requested_by TEXT NOT NULL
        ) STRICT
        """,
    ]
    for statement in statements:
        db.execute(statement)


@migrations()
def m008_image_builds(db: Database) -> None:
    statements = [
        # The owner's switch for image builds (docs/images.md); builds also need [builds] enabled.
        "ALTER TABLE projects ADD COLUMN dev_mode INTEGER NOT NULL DEFAULT 0"
        " CHECK (dev_mode IN (0, 1))",
        # A project's named build drafts: data, never files rxd reads from users' folders. The
        # text is capped so a draft cannot grow the ledger without bound.
        """
        CREATE TABLE image_drafts (
            id INTEGER PRIMARY KEY,
            project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('dockerfile', 'definition')),
            text TEXT NOT NULL CHECK (length(CAST(text AS BLOB)) <= 262144),
            context TEXT NOT NULL DEFAULT '.',
            ignore TEXT NOT NULL DEFAULT '' CHECK (length(CAST(ignore AS BLOB)) <= 65536),
            created_at TEXT NOT NULL,
            created_by TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            updated_by TEXT NOT NULL,
            UNIQUE (project_id, name)
        ) STRICT
        """,
        # One image build, a Slurm job as the project's runtime identity. The definition built
        # is kept as it was at submission (the draft may change meanwhile).
        """
        CREATE TABLE image_builds (
            id INTEGER PRIMARY KEY,
            project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            draft TEXT NOT NULL,
            definition TEXT NOT NULL,
            base TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL
                CHECK (state IN ('queued', 'building', 'succeeded', 'failed', 'cancelled')),
            reason TEXT,
            job_id INTEGER,
            node TEXT,
            runtime_user TEXT NOT NULL,
            runtime_uid INTEGER NOT NULL CHECK (runtime_uid > 0),
            build_dir TEXT NOT NULL,
            context TEXT NOT NULL,
            image_path TEXT,
            size_bytes INTEGER,
            sha256 TEXT,
            partition TEXT NOT NULL DEFAULT '',
            cpus INTEGER NOT NULL DEFAULT 1,
            mem_mb INTEGER NOT NULL DEFAULT 0,
            time_limit_min INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            created_by TEXT NOT NULL,
            started_at TEXT,
            ended_at TEXT,
            updated_at TEXT NOT NULL
        ) STRICT
        """,
        # A name belongs to one live image of a project; a failed or cancelled build frees it.
        "CREATE UNIQUE INDEX image_builds_name ON image_builds (project_id, name)"
        " WHERE state IN ('queued', 'building', 'succeeded')",
        "CREATE INDEX image_builds_state ON image_builds (state)",
        # What a queued or running build holds against partition quotas, like a container's lease.
        """
        CREATE TABLE build_leases (
            build_id INTEGER PRIMARY KEY REFERENCES image_builds(id) ON DELETE CASCADE,
            partition TEXT NOT NULL,
            project TEXT NOT NULL,
            linux_user TEXT NOT NULL,
            gpus INTEGER NOT NULL,
            cpus INTEGER NOT NULL,
            mem_mb INTEGER NOT NULL,
            acquired_at TEXT NOT NULL
        ) STRICT
        """,
    ]
    for statement in statements:
        db.execute(statement)


@migrations()
def m009_image_digests(db: Database) -> None:
    statements = [
        # What each pulled image reference resolved to: its key (the reference however it was
        # written: docker://docker.io/library/python:3.12-slim) -> the registry's content digest.
        # Pulled images are cached by digest, so references to the same content share one file;
        # a reference is resolved again only when someone asks (`rxctl image pull --refresh`).
        """
        CREATE TABLE image_digests (
            key TEXT PRIMARY KEY,
            digest TEXT NOT NULL,
            resolved_at TEXT NOT NULL,
            resolved_by INTEGER
        ) STRICT
        """,
    ]
    for statement in statements:
        db.execute(statement)


@migrations()
def m010_exec_sessions(db: Database) -> None:
    """Detached commands (`rxctl exec --detach`): each is a step of its container's job, with
    who started it, what it runs, and how it ended (exit_code NULL: not known, e.g. rxd was
    restarted while it ran). Interactive sessions are not stored: they live as long as their
    connection to rxd."""
    db.execute(
        """
        CREATE TABLE exec_sessions (
            id TEXT PRIMARY KEY NOT NULL,
            container_id INTEGER NOT NULL REFERENCES containers(id),
            project_id INTEGER NOT NULL,
            job_id INTEGER NOT NULL,
            step_name TEXT NOT NULL,
            argv TEXT NOT NULL,
            cwd TEXT,
            started_by TEXT NOT NULL,
            started_at TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'running',
            ended_at TEXT,
            exit_code INTEGER,
            signalled TEXT
        ) STRICT
        """
    )
    db.execute("CREATE INDEX exec_sessions_container ON exec_sessions (container_id, state)")


@migrations()
def m011_job_flags(db: Database) -> None:
    # sbatch's --account, --qos, --constraint and --reservation as project settings; "" is none
    # (the user's default account, the default QOS).
    statements = [
        "ALTER TABLE projects ADD COLUMN account TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE projects ADD COLUMN qos TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE projects ADD COLUMN \"constraint\" TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE projects ADD COLUMN reservation TEXT NOT NULL DEFAULT ''",
    ]
    for statement in statements:
        db.execute(statement)


@migrations()
def m014_labels(db: Database) -> None:
    # A project's labels: `keep=true` (garbage collection leaves the project alone) and free-form
    # key=value pairs, shown in status and filtered on in `rxctl list`. Names and values are
    # checked by projects/labels.py; the lengths are capped here too.
    db.execute(
        """
        CREATE TABLE project_labels (
            project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
            key TEXT NOT NULL CHECK (length(key) BETWEEN 1 AND 63),
            value TEXT NOT NULL CHECK (length(value) <= 255),
            set_at TEXT NOT NULL,
            set_by TEXT NOT NULL,
            PRIMARY KEY (project_id, key)
        ) STRICT
        """
    )


@migrations()
def m015_env_secrets(db: Database) -> None:
    # A project's environment variables (`rxctl env`), plain text: they are not secrets. Secrets
    # are not in the ledger at all (projects/secret_store.py, docs/security.md).
    db.execute(
        """
        CREATE TABLE project_env (
            project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            value TEXT NOT NULL,
            set_by TEXT NOT NULL,
            set_at TEXT NOT NULL,
            PRIMARY KEY (project_id, name)
        ) STRICT
        """
    )


@migrations()
def m016_volumes(db: Database) -> None:
    """Named volumes (docs/volumes.md): a folder under [volumes] root that one project owns (its
    runtime identity owns the folder; `folder_uid` is whom root handed it to, as
    projects.workspace_uid) and projects of the same owners mount at a path of their choice."""
    statements = [
        """
        CREATE TABLE volumes (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            project_id INTEGER NOT NULL REFERENCES projects(id),
            path TEXT NOT NULL,
            folder_uid INTEGER,
            created_by TEXT NOT NULL,
            created_at TEXT NOT NULL
        ) STRICT
        """,
        "CREATE INDEX volumes_project ON volumes (project_id)",
        """
        CREATE TABLE volume_mounts (
            project_id INTEGER NOT NULL REFERENCES projects(id),
            volume_id INTEGER NOT NULL REFERENCES volumes(id),
            target TEXT NOT NULL,
            read_only INTEGER NOT NULL,
            PRIMARY KEY (project_id, volume_id),
            UNIQUE (project_id, target)
        ) STRICT
        """,
        "CREATE INDEX volume_mounts_volume ON volume_mounts (volume_id)",
    ]
    for statement in statements:
        db.execute(statement)


@migrations()
def m017_one_shot_jobs(db: Database) -> None:
    """One-shot commands (`rxctl run-once`): each is a Slurm job of its own that runs one command
    in the project's image as its runtime identity and ends; its record keeps the command's
    exit code for the caller. A queued or running one holds a lease against partition quotas,
    as a build does."""
    statements = [
        """
        CREATE TABLE one_shot_jobs (
            id INTEGER PRIMARY KEY,
            project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
            container_id INTEGER NOT NULL,
            state TEXT NOT NULL,
            argv TEXT NOT NULL,
            runtime_user TEXT NOT NULL,
            state_dir TEXT NOT NULL,
            partition TEXT NOT NULL,
            gpus INTEGER NOT NULL,
            cpus INTEGER NOT NULL,
            mem_mb INTEGER NOT NULL,
            time_limit_min INTEGER,
            job_id INTEGER,
            node TEXT,
            exit_code INTEGER,
            reason TEXT,
            -- 1 once its caller read its output to the end after it ended: the file may go.
            output_read INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            created_by TEXT NOT NULL,
            started_at TEXT,
            ended_at TEXT,
            updated_at TEXT NOT NULL
        ) STRICT
        """,
        "CREATE INDEX one_shot_jobs_state ON one_shot_jobs (state)",
        """
        CREATE TABLE one_shot_leases (
            one_shot_id INTEGER PRIMARY KEY REFERENCES one_shot_jobs(id) ON DELETE CASCADE,
            partition TEXT NOT NULL,
            project TEXT NOT NULL,
            linux_user TEXT NOT NULL,
            gpus INTEGER NOT NULL,
            cpus INTEGER NOT NULL,
            mem_mb INTEGER NOT NULL,
            acquired_at TEXT NOT NULL
        ) STRICT
        """,
    ]
    for statement in statements:
        db.execute(statement)


@migrations()
def m018_service(db: Database) -> None:
    # A project's service (docs/services.md): its command as a JSON list of words ("" for none)
    # and the port it listens on (0 for none), settings like the others.
    db.execute("ALTER TABLE projects ADD COLUMN service TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE projects ADD COLUMN port INTEGER NOT NULL DEFAULT 0")


@migrations()
def m019_service_restarts(db: Database) -> None:
    # A service's restart policy ("", "never", "on-failure[:N]"), a setting like the others, and
    # how many times the container's current job has started its service again.
    db.execute("ALTER TABLE projects ADD COLUMN restart TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE containers ADD COLUMN service_restarts INTEGER NOT NULL DEFAULT 0")
