"""The batch plan (GET /v1/projects/NAME/batch-plan through ContainerService.batch_plan): what it
answers, who may ask (the `run` action, authorized once), and its refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rxslurm.daemon.config import parse_config
from rxslurm.daemon.containers.service import ContainerService
from rxslurm.daemon.errors import Conflict, Forbidden, NotFound
from rxslurm.daemon.identity.actors import Actor
from rxslurm.daemon.ledger.timestamps import to_timestamp
from tests.unit.test_container_service import authorizations as authorizations  # a fixture
from tests.unit.test_reconciler_edges import OWNER, World, world


def member(w: World, name: str, uid: int, role: str | None) -> Actor:
    """A platform user bound to a made-up Linux identity, in alpha with `role` (None: not a
    member)."""
    now = to_timestamp(w.clock())
    with w.ledger.transaction() as db:
        db.table("platform_users").insert({"id": name, "created_at": now})
        db.table("bindings").insert(
            {
                "platform_user_id": name,
                "uid": uid,
                "username": name,
                "bound_at": now,
                "bound_by": "test",
            }
        )
        if role is not None:
            project_id = db.table("projects").rows_where("name = 'alpha'").__next__()["id"]
            db.table("members").insert(
                {
                    "project_id": project_id,
                    "platform_user_id": name,
                    "role": role,
                    "added_at": now,
                    "added_by": "ada",
                }
            )
    return Actor(platform_user=name, uid=uid, user=name, admin=False, origin="socket")


def set_project(w: World, **values: Any) -> None:
    with w.ledger.transaction() as db:
        db.table("projects").update(w.row("alpha")["project_id"], values)


def add_snapshot(w: World, path: str, *, uid: int = 65534, removed: bool = False) -> int:
    with w.ledger.transaction() as db:
        table = db.table("overlay_snapshots")
        table.insert(
            {
                "container_id": w.row("alpha")["id"],
                "runtime_uid": uid,
                "path": path,
                "taken_at": to_timestamp(w.clock()),
                "size_bytes": 4096,
                "source_mtime_ns": 1,
                "covers_until": to_timestamp(w.clock()),
                "trigger": "sleep",
                "removed_at": to_timestamp(w.clock()) if removed else None,
            }
        )
        return int(table.last_pk)


def test_the_plan_names_image_workspace_binds_driver_and_no_snapshot_yet(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "running"))
    w.service = ContainerService(
        w.ledger,
        parse_config(
            {
                "containers": {"fixed_mounts": ["/scratch", "/datasets:/data:ro"]},
                "apptainer": {"binary": "/opt/apptainer/bin/apptainer"},
            }
        ),
        w.slurm,
        w.runtime,
        clock=w.clock,
    )

    plan = w.service.batch_plan(OWNER, "alpha").to_dict()

    assert plan == {
        "project": "alpha",
        "image": "/images/base.sif",
        "snapshot": None,
        "workspace": str(tmp_path),
        "workspace_target": "/workspace",
        "binds": ["/scratch", "/datasets:/data:ro"],
        "gpu_driver": "nvidia",
        "apptainer": "/opt/apptainer/bin/apptainer",
        "env": {},
    }


def test_the_plan_names_the_newest_snapshot_of_the_current_runtime_identity(
    tmp_path: Path,
) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    add_snapshot(w, "/c/rx-alpha/snapshots/snap-1.img")
    newest = add_snapshot(w, "/c/rx-alpha/snapshots/snap-2.img")
    add_snapshot(w, "/c/rx-alpha/snapshots/snap-3.img", removed=True)
    add_snapshot(w, "/q/rx-alpha/snapshots/snap-4.img", uid=4242)  # the former run-as user's

    plan = w.service.batch_plan(OWNER, "alpha")

    assert plan.snapshot is not None
    assert (plan.snapshot.id, plan.snapshot.path) == (newest, "/c/rx-alpha/snapshots/snap-2.img")
    assert plan.to_dict()["snapshot"]["taken_at"] == to_timestamp(w.clock())


def test_the_driver_is_named_in_apptainer_s_words_even_for_a_container_without_gpus(
    tmp_path: Path,
) -> None:
    # The container asks for no GPU (the world's default); a step's GPUs are its own job's.
    w = world(tmp_path, ("alpha", "stopped"))
    set_project(w, gpu_driver="amd")
    assert w.service.batch_plan(OWNER, "alpha").gpu_driver == "rocm"


def test_a_project_not_enabled_yet_gets_its_image_setting(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "disabled"))
    w.set("alpha", image=None)
    set_project(w, image="/images/next.sif")
    assert w.service.batch_plan(OWNER, "alpha").image == "/images/next.sif"


@pytest.mark.parametrize("role", ["owner", "manager", "editor"])
def test_members_who_may_run_get_the_plan_with_one_authorization(
    tmp_path: Path, authorizations: list[str], role: str
) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    actor = OWNER if role == "owner" else member(w, "bea", 70001, role)
    authorizations.clear()

    plan = w.service.batch_plan(actor, "alpha")

    assert plan.project == "alpha"
    assert authorizations == ["run"]


def test_a_viewer_is_refused_with_the_role_it_needs(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    viewer = member(w, "vic", 70002, "viewer")
    with pytest.raises(
        Forbidden,
        match="run in project alpha needs role owner or manager or editor; you are viewer",
    ):
        w.service.batch_plan(viewer, "alpha")


def test_a_non_member_and_an_unknown_project_are_not_found(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    stranger = member(w, "sam", 70003, None)
    with pytest.raises(NotFound):
        w.service.batch_plan(stranger, "alpha")
    with pytest.raises(NotFound):
        w.service.batch_plan(OWNER, "beta")


def test_no_run_as_identity_is_a_conflict_with_what_an_owner_does(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    set_project(w, run_as_user=None)
    with pytest.raises(Conflict, match="has no run-as identity") as refused:
        w.service.batch_plan(OWNER, "alpha")
    assert refused.value.status == 409


@pytest.mark.parametrize("image", ["", "docker://example/never-pulled:1"])
def test_no_image_or_one_not_pulled_yet_is_a_conflict(tmp_path: Path, image: str) -> None:
    w = world(tmp_path, ("alpha", "disabled"))
    w.set("alpha", image=None)
    set_project(w, image=image)
    with pytest.raises(Conflict, match="no image|not pulled yet") as refused:
        w.service.batch_plan(OWNER, "alpha")
    assert refused.value.code == "no_image"
