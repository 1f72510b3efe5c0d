"""`rxctl image set` and the next start (containers/image_set.py, containers/start_image.py) on a
temp-dir ledger with fake ports: who may set the image, what it may be, that the next start runs
it on the same overlay, and that status says a restart is pending until then."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rxslurm.daemon.containers import image_set
from rxslurm.daemon.containers import start_image as start_image_module
from rxslurm.daemon.containers.pulls import Outcome, carry_on
from rxslurm.daemon.errors import BadRequest, Conflict, Forbidden
from rxslurm.daemon.identity.actors import Actor
from rxslurm.daemon.ledger.timestamps import to_timestamp
from tests.unit.test_reconciler_edges import OWNER, World, world

NEW = "/images/new.sif"
OLD = "/images/base.sif"


def member(w: World, user: str, role: str) -> Actor:
    now = to_timestamp(w.clock())
    with w.ledger.transaction() as db:
        db.table("platform_users").insert({"id": user, "created_at": now})
        db.table("members").insert(
            {
                "project_id": project_row(w)["id"],
                "platform_user_id": user,
                "role": role,
                "added_at": now,
                "added_by": "ada",
            }
        )
    return Actor(platform_user=user, uid=5000 + len(user), user=user, admin=False, origin="socket")


def project_row(w: World, name: str = "alpha") -> dict[str, Any]:
    return dict(next(w.ledger.db.table("projects").rows_where("name = ?", [name])))


def events(w: World, action: str) -> list[dict[str, Any]]:
    rows = w.ledger.db.table("events").rows_where("action = ?", [action], order_by="id")
    return [{**row, "detail": json.loads(row["detail"])} for row in rows]


def stopped_again(w: World) -> None:
    """The holder job ended (as after `rxctl stop`): the container rests, its overlay kept."""
    w.set("alpha", state="stopped", job_id=None, desired="stopped")
    with w.ledger.transaction() as db:
        db.execute("DELETE FROM leases")


def test_a_manager_sets_a_file_and_the_next_start_runs_it_on_the_same_overlay(
    tmp_path: Path,
) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    manager = member(w, "bob", "manager")
    overlay = w.row("alpha")["overlay_path"]

    answer = image_set.set_image(w.service, manager, "alpha", NEW)
    w.service.wake(manager, "alpha")

    assert (answer["image_set"], answer["kind"]) == (NEW, "path")
    assert project_row(w)["image"] == NEW
    holder = w.runtime.holders[-1]
    assert (holder.image, holder.overlay) == (NEW, overlay)
    [event] = events(w, "project.image-set")
    assert (event["actor"], event["detail"]["from"], event["detail"]["to"]) == ("bob", OLD, NEW)


def test_after_image_set_on_an_awake_container_a_restart_is_pending_and_then_runs_it(
    tmp_path: Path,
) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    w.service.wake(OWNER, "alpha")
    assert w.service.status(OWNER, "alpha").settings_pending is False

    image_set.set_image(w.service, OWNER, "alpha", NEW)

    # The job runs the old image until it is restarted, and status says so.
    assert w.service.status(OWNER, "alpha").settings_pending is True
    assert w.runtime.holders[-1].image == OLD
    stopped_again(w)
    view = w.service.wake(OWNER, "alpha")
    assert w.runtime.holders[-1].image == NEW
    assert view.state == "starting" and view.settings_pending is False


def test_a_refreshed_tag_makes_a_restart_pending_with_no_setting_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = "docker://127.0.0.1:5055/rxslurm/busybox:1"
    files = {ref: "/cache/sha256-aaaa.sif"}
    monkeypatch.setattr(
        start_image_module.digests, "local_image", lambda db, folder, image: files.get(image, image)
    )
    w = world(tmp_path, ("alpha", "stopped"), image=ref)
    w.service.wake(OWNER, "alpha")
    assert w.runtime.holders[-1].image == "/cache/sha256-aaaa.sif"
    assert w.service.status(OWNER, "alpha").settings_pending is False

    files[ref] = "/cache/sha256-bbbb.sif"  # what `rxctl image pull --refresh` records

    assert w.service.status(OWNER, "alpha").settings_pending is True
    stopped_again(w)
    w.service.wake(OWNER, "alpha")
    assert w.runtime.holders[-1].image == "/cache/sha256-bbbb.sif"


def test_a_new_reference_is_pulled_before_the_start_holding_no_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = "docker://127.0.0.1:5055/rxslurm/busybox:2"
    monkeypatch.setattr(start_image_module.digests, "local_image", lambda db, folder, image: None)
    w = world(tmp_path, ("alpha", "stopped"))
    asked: list[tuple[Any, ...]] = []
    monkeypatch.setattr(
        w.service.pulls, "request", lambda *args, **kw: asked.append((*args, kw.get("refresh")))
    )
    monkeypatch.setattr(w.service.pulls, "wait", lambda cid, timeout: None)

    image_set.set_image(w.service, OWNER, "alpha", "127.0.0.1:5055/rxslurm/busybox:2")
    view = w.service.wake(OWNER, "alpha")

    assert project_row(w)["image"] == ref
    cid = w.row("alpha")["id"]
    assert asked == [(None, ref, OWNER.uid, None), (cid, ref, OWNER.uid, None)]
    assert view.state == "pulling" and w.slurm.submitted == [] and w.lease_holders() == []
    # The pull ends: the container is queued, then started on the pulled file.
    assert carry_on(w.service, cid, Outcome(image=Path("/cache/sha256-cccc.sif")))
    assert w.state("alpha") == "waiting_for_resources"
    w.reconcile()
    assert w.runtime.holders[-1].image == "/cache/sha256-cccc.sif"


@pytest.mark.parametrize("role", ["editor", "viewer"])
def test_editors_and_viewers_cannot_set_the_image(tmp_path: Path, role: str) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    who = member(w, "carol", role)

    with pytest.raises(
        Forbidden, match=f"set-image in project alpha needs role owner or manager; you are {role}"
    ):
        image_set.set_image(w.service, who, "alpha", NEW)
    assert project_row(w)["image"] == OLD and events(w, "project.image-set") == []


@pytest.mark.parametrize(
    ("ref", "words"),
    [
        ("Python:3", "lowercase"),
        ("images/tool.sif", "relative file path"),
        ("/images/../etc/x.sif", "must not contain '..'"),
        ("build:abc", "build:ID"),
        ("build:7", "no succeeded build 7"),
        ("", "build:ID, an absolute path or an image reference"),
        ("/x\x1b]0;t\x07", "image"),
    ],
)
def test_a_bad_image_is_refused_and_changes_nothing(tmp_path: Path, ref: str, words: str) -> None:
    w = world(tmp_path, ("alpha", "stopped"))

    with pytest.raises(BadRequest, match=words):
        image_set.set_image(w.service, OWNER, "alpha", ref)
    assert project_row(w)["image"] == OLD and events(w, "project.image-set") == []


def add_build(w: World, state: str, image_path: str | None) -> int:
    now = to_timestamp(w.clock())
    with w.ledger.transaction() as db:
        return int(
            db.table("image_builds")
            .insert(
                {
                    "project_id": project_row(w)["id"],
                    "name": f"b-{state}",
                    "draft": "main",
                    "definition": "Bootstrap: docker\nFrom: busybox\n",
                    "state": state,
                    "runtime_user": "nobody",
                    "runtime_uid": 65534,
                    "build_dir": "/builds/x",
                    "context": ".",
                    "image_path": image_path,
                    "created_at": now,
                    "created_by": "ada",
                    "updated_at": now,
                }
            )
            .last_pk
        )


def test_only_a_succeeded_build_of_the_project_becomes_its_image(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    failed = add_build(w, "failed", None)
    good = add_build(w, "succeeded", "/builds/x/image.sif")

    with pytest.raises(BadRequest, match=f"no succeeded build {failed}"):
        image_set.set_image(w.service, OWNER, "alpha", f"build:{failed}")
    answer = image_set.set_image(w.service, OWNER, "alpha", f"build:{good}")
    w.service.wake(OWNER, "alpha")

    assert (answer["image_set"], answer["kind"]) == ("/builds/x/image.sif", "build")
    assert w.runtime.holders[-1].image == "/builds/x/image.sif"


def test_a_file_image_has_nothing_to_pull(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "stopped"))

    with pytest.raises(BadRequest, match="is the file /images/base.sif: there is nothing to pull"):
        image_set.pull_image(w.service, OWNER, "alpha", refresh=True, wait_s=0)


def test_a_pull_that_cannot_be_asked_for_leaves_the_container_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(start_image_module.digests, "local_image", lambda db, folder, image: None)
    w = world(tmp_path, ("alpha", "stopped"), image="docker://127.0.0.1:5055/a/b:1")

    def too_many(*args: Any, **kw: Any) -> None:
        raise Conflict("you already have 2 images being pulled (...); try again when they are done")

    monkeypatch.setattr(w.service.pulls, "request", too_many)

    with pytest.raises(Conflict, match="you already have 2 images being pulled"):
        w.service.wake(OWNER, "alpha")
    row = w.row("alpha")
    assert (row["state"], row["desired"], row["reason"]) == (
        "stopped",
        "stopped",
        "cannot pull docker://127.0.0.1:5055/a/b:1",
    )
    assert w.slurm.submitted == [] and w.lease_holders() == []
