"""Garbage collection on the real cluster with the real Apptainer: `rxctl admin gc --dry-run`
lists an image no project names and a deleted project's quarantined container folder with their
sizes and changes nothing; `rxctl admin gc` frees them; a project labelled keep=true keeps its
overlay and its backups; the removal is audited. A reset keeps the old overlay as a backup that
`rxctl gc` later removes; `rxctl start --fresh` recreates the instance state on the same overlay.
Links, FIFOs and folders the runtime user plants under rx-slurm's names are left alone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import ok, output
from tests.support.cluster import run_as
from tests.support.daemon import Rxd, running_rxd
from tests.support.lifecycle import ADMIN, lifecycle_config, make_project, status, wait_state
from tests.support.registry import SMALL, pull_config, require_registry

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("container_runtime")]

OWNER = "rxalice"
GONE = "gcgone"
KEPT = "gckept"
BACKUP = "overlay.img.before-reset-20260101T000000Z"


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    """An rxd that runs containers and pulls from the test registry."""
    require_registry()
    with running_rxd(
        lambda root: lifecycle_config(root) + pull_config(root), bind=(OWNER,)
    ) as daemon:
        yield daemon


def ran_once(rxd: Rxd, project: str, *options: str) -> Path:
    """The project's container ran and stopped: its folder holds an overlay and a job's log."""
    make_project(rxd, project, *options)
    ok(rxd.rxctl(OWNER, "enable", "--project", project))
    wait_state(rxd, project, "running")
    ok(rxd.rxctl(OWNER, "stop", "--project", project))
    wait_state(rxd, project, "stopped")
    return rxd.root / "containers" / f"rx-{project}"


def admin_gc(rxd: Rxd, *options: str) -> dict:
    return json.loads(
        ok(rxd.rxctl(ADMIN, "admin", "gc", "--older-than", "0", *options, "--json")).stdout
    )


def test_gc_frees_a_deleted_projects_pulled_image_and_folder_and_keeps_keep_true(
    rxd: Rxd,
) -> None:
    kept = ran_once(rxd, KEPT)
    ok(rxd.rxctl(OWNER, "project", "label", "--project", KEPT, "keep=true", "team=cv"))
    # The deleted project's image is pulled (as the pull account) for it alone.
    gone_folder = ran_once(rxd, GONE, "--image", SMALL)
    image = Path(status(rxd, OWNER, GONE)["image"])
    assert image.parent == rxd.root / "images"
    listed = rxd.rxctl(OWNER, "list", "--label", "keep=true", "--noheader", "--format", "project")
    assert output(listed).split() == [KEPT]
    assert "keep=true team=cv" in output(rxd.rxctl(OWNER, "status", "--project", KEPT))
    # A backup as a reset leaves it, made by the runtime user in its own folder.
    ok(run_as(OWNER, ["cp", "--sparse=always", str(kept / "overlay.img"), str(kept / BACKUP)]))
    assert gone_folder.is_dir()
    ok(rxd.rxctl(OWNER, "disable", "--project", GONE))
    wait_state(rxd, GONE, "disabled")
    ok(rxd.rxctl(OWNER, "project", "delete", "--project", GONE, "--yes"))
    assert not gone_folder.exists()
    (quarantined,) = [
        p
        for p in (rxd.root / "containers" / ".quarantine").iterdir()
        if p.name.startswith(f"rx-{GONE}.")
    ]

    listed = admin_gc(rxd, "--dry-run")

    by_kind = {(i["kind"], i["name"]): i for i in listed["items"]}
    assert by_kind[("image", image.name)]["bytes"] >= image.stat().st_size // 2 > 0
    assert by_kind[("quarantined", quarantined.name)]["bytes"] > 0
    assert by_kind[("image", image.name)]["owner"] == "root"
    assert KEPT not in {i["project"] for i in listed["items"]}
    assert listed["bytes"] == sum(i["bytes"] for i in listed["items"])
    assert image.exists() and quarantined.exists()
    text = output(rxd.rxctl(ADMIN, "admin", "gc", "--older-than", "0", "--dry-run"))
    assert image.name in text and "would free" in text

    freed = admin_gc(rxd)

    assert freed["failed"] == []
    assert {(i["kind"], i["name"]) for i in freed["items"]} >= {
        ("image", image.name),
        ("quarantined", quarantined.name),
    }
    assert not image.exists() and not quarantined.exists()
    assert (kept / "overlay.img").exists() and (kept / BACKUP).exists()
    ((detail,),) = rxd.ledger_rows("SELECT detail FROM events WHERE action = 'gc.collected'")
    assert json.loads(detail)["bytes"] == freed["bytes"]
    each = rxd.ledger_rows("SELECT target_id, detail FROM events WHERE action = 'gc.removed'")
    names = {(kind, i["name"]) for kind, d in each for i in json.loads(d)["removed"]}
    assert {("image", image.name), ("quarantined", quarantined.name)} <= names


def test_a_member_who_is_no_admin_cannot_collect_for_the_deployment(rxd: Rxd) -> None:
    result = rxd.rxctl(OWNER, "admin", "gc", "--dry-run")
    assert result.returncode != 0
    assert "admin" in result.stderr


RESET = "gcreset"
INSTALL = "mkdir -p /opt/rx && echo v1 > /opt/rx/VERSION"


def test_reset_keeps_the_old_layer_as_a_backup_that_gc_later_removes(rxd: Rxd) -> None:
    make_project(rxd, RESET)
    ok(rxd.rxctl(OWNER, "enable", "--project", RESET))
    wait_state(rxd, RESET, "running")
    ok(rxd.rxctl(OWNER, "exec", "--project", RESET, "--", "sh", "-c", INSTALL))
    unknown = rxd.rxctl(OWNER, "reset", "--project", "nosuch")
    assert unknown.returncode == 1 and len(unknown.stderr.strip().splitlines()) == 1

    # Awake: it is stopped first, then reset.
    answer = json.loads(ok(rxd.rxctl(OWNER, "reset", "--project", RESET, "--json")).stdout)

    backup = Path(answer["backup"])
    assert backup.name.startswith("overlay.img.before-reset-") and answer["backup_bytes"] > 0
    assert wait_state(rxd, RESET, "stopped")["state"] == "stopped"
    ok(rxd.rxctl(OWNER, "start", "--project", RESET))
    wait_state(rxd, RESET, "running")
    gone = rxd.rxctl(OWNER, "exec", "--project", RESET, "--", "test", "-e", "/opt/rx/VERSION")
    assert gone.returncode == 1, "the reset container still has what was installed"
    ok(rxd.rxctl(OWNER, "stop", "--project", RESET))
    wait_state(rxd, RESET, "stopped")
    assert rxd.ledger_rows("SELECT 1 FROM events WHERE action = 'container.reset'")
    kept = json.loads(ok(rxd.rxctl(OWNER, "gc", "--dry-run", "--json")).stdout)
    assert backup.name not in {i["name"] for i in kept["items"]}  # younger than 30 days

    freed = json.loads(ok(rxd.rxctl(OWNER, "gc", "--older-than", "0", "--json")).stdout)

    (item,) = [i for i in freed["items"] if i["kind"] == "backup"]
    assert (item["name"], item["project"], item["owner"]) == (backup.name, RESET, OWNER)
    assert item["bytes"] > 0
    assert not backup.exists()
    assert (backup.parent / "overlay.img").exists()


FRESH = "gcfresh"


def test_start_fresh_recreates_the_instance_state_on_the_same_overlay(rxd: Rxd) -> None:
    folder = ran_once(rxd, FRESH)
    ok(rxd.rxctl(OWNER, "start", "--project", FRESH))
    wait_state(rxd, FRESH, "running")
    ok(rxd.rxctl(OWNER, "exec", "--project", FRESH, "--", "sh", "-c", INSTALL))
    records = (folder / "apptainer").stat().st_ino

    # Awake: it is stopped, its instance state cleared, and it starts again.
    ok(rxd.rxctl(OWNER, "start", "--project", FRESH, "--fresh"))

    wait_state(rxd, FRESH, "running")
    assert (folder / "apptainer").stat().st_ino != records
    ok(rxd.rxctl(OWNER, "exec", "--project", FRESH, "--", "test", "-e", "/opt/rx/VERSION"))
    assert rxd.ledger_rows("SELECT 1 FROM events WHERE action = 'container.fresh'")
    ok(rxd.rxctl(OWNER, "stop", "--project", FRESH))
    wait_state(rxd, FRESH, "stopped")


HOSTILE = "gchostile"


def test_links_fifos_and_folders_named_as_rx_slurms_files_are_never_followed_or_removed(
    rxd: Rxd,
) -> None:
    folder = ran_once(rxd, HOSTILE)
    victim = rxd.root / "victim"
    victim.write_text("root's own file")
    victim.chmod(0o644)
    plant = (
        f"ln -s {victim} overlay.img.before-reset-evil && ln -s {victim} snapshots/snap-1.img && "
        "mkfifo job-3.status && mkdir job-4.out && echo x > job-4.out/inner"
    )
    ok(run_as(OWNER, ["sh", "-c", f"cd {folder} && mkdir -p snapshots && {plant}"]))

    freed = admin_gc(rxd)

    assert freed["failed"] == []
    mine = {i["name"] for i in freed["items"] if i["project"] == HOSTILE}
    assert not mine & {"overlay.img.before-reset-evil", "snapshots/snap-1.img", "job-3.status"}
    assert victim.read_text() == "root's own file"
    assert (folder / "overlay.img.before-reset-evil").is_symlink()
    assert (folder / "snapshots" / "snap-1.img").is_symlink()
    assert (folder / "job-3.status").exists() and (folder / "job-4.out" / "inner").exists()
    assert (folder / "overlay.img").exists()
