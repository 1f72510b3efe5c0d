"""`rxctl reset` with the fakes: a sleeping container's overlay is swapped for a new one, the old
kept as a backup (which gc then lists), audited; owners only; an awake container, or an overlay
a job holds (its lock taken), is refused with nothing changed. The swap script runs as this
process on a real folder."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

from rxslurm.daemon.containers.reset import fresh_start, reset_overlay
from rxslurm.daemon.errors import Conflict, Forbidden
from rxslurm.daemon.identity.actors import Actor
from rxslurm.daemon.ledger.timestamps import to_timestamp
from rxslurm.daemon.runtime.overlay_reset import BACKUP_PREFIX
from tests.unit.test_reconciler_edges import OWNER, World, world

MANAGER = Actor(platform_user="max", uid=65533, user="max", admin=False, origin="socket")


def sleeping(tmp_path: Path) -> tuple[World, Path]:
    (tmp_path / "ledger").mkdir()
    w = world(tmp_path / "ledger", ("alpha", "stopped"))
    folder = tmp_path / "rx-alpha"
    folder.mkdir()
    (folder / "overlay.img").write_bytes(b"installed software")
    w.set("alpha", state_dir=str(folder), overlay_path=str(folder / "overlay.img"))
    w.service.snapshots.runas = lambda user: None
    made = w.runtime.create_overlay

    def create_overlay(path: Path, size_mb: int, as_user: object) -> None:
        made(path, size_mb, as_user)  # type: ignore[arg-type]
        path.write_bytes(b"")

    w.runtime.create_overlay = create_overlay  # type: ignore[method-assign]
    return w, folder


def test_a_reset_swaps_in_a_new_overlay_and_keeps_the_old_as_a_backup(tmp_path: Path) -> None:
    w, folder = sleeping(tmp_path)

    answer = reset_overlay(w.service, OWNER, "alpha")

    backup = Path(answer["backup"])
    assert backup.parent == folder and backup.name.startswith(BACKUP_PREFIX)
    assert backup.read_bytes() == b"installed software"
    assert (folder / "overlay.img").read_bytes() == b""
    assert [p.name for p in folder.iterdir() if p.name.startswith(".new-overlay")] == []
    (event,) = w.ledger.db.table("events").rows_where("action = 'container.reset'")
    assert json.loads(event["detail"])["backup"] == backup.name


def test_an_awake_container_is_stopped_first_and_not_reset_until_it_has(tmp_path: Path) -> None:
    w, folder = sleeping(tmp_path)
    job_id = w.add_job("alpha", "RUNNING")
    w.set("alpha", state="running", desired="running")

    with pytest.raises(Conflict, match="did not stop"):
        reset_overlay(w.service, OWNER, "alpha", wait_s=0.05)

    assert w.row("alpha")["desired"] == "stopped" and job_id in w.slurm.cancelled
    assert sorted(p.name for p in folder.iterdir()) == ["overlay.img"]


def test_a_container_in_error_may_be_reset_but_not_one_being_pulled(tmp_path: Path) -> None:
    w, folder = sleeping(tmp_path)
    w.set("alpha", state="pulling")
    with pytest.raises(Conflict, match="try again later"):
        reset_overlay(w.service, OWNER, "alpha")
    w.set("alpha", state="error")
    assert Path(reset_overlay(w.service, OWNER, "alpha")["backup"]).exists()


def test_an_overlay_a_job_holds_is_not_reset_and_the_new_one_goes_again(tmp_path: Path) -> None:
    w, folder = sleeping(tmp_path)
    lock = os.open(folder / "overlay.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(Conflict, match="holds the overlay"):
            reset_overlay(w.service, OWNER, "alpha")
    finally:
        os.close(lock)
    assert sorted(p.name for p in folder.iterdir()) == ["overlay.img", "overlay.lock"]
    assert (folder / "overlay.img").read_bytes() == b"installed software"


def add_manager(w: World) -> None:
    now = to_timestamp(w.clock())
    with w.ledger.transaction() as db:
        db.table("platform_users").insert({"id": "max", "created_at": now})
        db.table("members").insert(
            {
                "project_id": w.row("alpha")["project_id"],
                "platform_user_id": "max",
                "role": "manager",
                "added_at": now,
                "added_by": "ada",
            }
        )


def test_only_an_owner_resets(tmp_path: Path) -> None:
    w, folder = sleeping(tmp_path)
    add_manager(w)
    with pytest.raises(Forbidden):
        reset_overlay(w.service, MANAGER, "alpha")
    assert (folder / "overlay.img").read_bytes() == b"installed software"


# -- start --fresh ---------------------------------------------------------------------------------


def with_instance_state(folder: Path, outside: Path) -> None:
    (folder / "apptainer" / "instances").mkdir(parents=True)
    (folder / "apptainer" / "instances" / "rx-alpha.json").write_text("{}")
    (folder / "home").mkdir()
    (folder / "home" / ".bashrc").write_text("alias x=y")
    outside.mkdir()
    (outside / "precious").write_text("not rx-slurm's")
    (folder / "home" / "link").symlink_to(outside)


def test_a_fresh_start_clears_the_instance_state_keeps_the_overlay_and_wakes(
    tmp_path: Path,
) -> None:
    w, folder = sleeping(tmp_path)
    outside = tmp_path / "outside"
    with_instance_state(folder, outside)

    view = fresh_start(w.service, OWNER, "alpha")

    assert sorted(p.name for p in folder.iterdir()) == ["overlay.img", "overlay.lock"]
    assert (folder / "overlay.img").read_bytes() == b"installed software"
    assert (outside / "precious").read_text() == "not rx-slurm's"
    assert view.state in ("starting", "waiting_for_resources") and w.slurm.jobs
    (event,) = w.ledger.db.table("events").rows_where("action = 'container.fresh'")
    assert json.loads(event["detail"])["removed"] == ["apptainer", "home"]


def test_a_fresh_start_of_a_held_or_still_awake_container_clears_nothing(tmp_path: Path) -> None:
    w, folder = sleeping(tmp_path)
    with_instance_state(folder, tmp_path / "outside")
    lock = os.open(folder / "overlay.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(Conflict, match="holds the container"):
            fresh_start(w.service, OWNER, "alpha")
    finally:
        os.close(lock)
    w.add_job("alpha", "RUNNING")
    w.set("alpha", state="running")
    with pytest.raises(Conflict, match="did not stop"):
        fresh_start(w.service, OWNER, "alpha", wait_s=0.05)
    assert (folder / "home" / ".bashrc").exists() and (folder / "apptainer").is_dir()
    assert w.row("alpha")["desired"] == "stopped"


def test_only_an_owner_starts_fresh(tmp_path: Path) -> None:
    w, folder = sleeping(tmp_path)
    add_manager(w)
    with_instance_state(folder, tmp_path / "outside")
    with pytest.raises(Forbidden):
        fresh_start(w.service, MANAGER, "alpha")
    assert (folder / "home" / ".bashrc").exists() and (folder / "apptainer").is_dir()
    assert not list(w.ledger.db.table("events").rows_where("action = 'container.fresh'"))
    assert not w.slurm.jobs
