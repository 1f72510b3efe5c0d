"""Named volumes without root or Slurm: names and mount paths, the mount rule (an owner of the
volume's project also owns the mounting project), what reaches the holder and batch steps, and
`--volume NAME:/path[:ro]` as rxctl splits it."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.cli.commands_volume import copy, inside
from rxslurm.cli.volume_spec import BadVolumeSpec, split_mount
from rxslurm.daemon.config import ConfigError, parse_config
from rxslurm.daemon.containers.service import ContainerService
from rxslurm.daemon.errors import BadRequest, Conflict, Forbidden, NotFound
from rxslurm.daemon.identity.actors import Actor
from rxslurm.daemon.ledger.timestamps import to_timestamp
from rxslurm.daemon.projects import volumes
from rxslurm.daemon.projects.service import delete_project
from rxslurm.daemon.projects.volume_rules import (
    RESERVED_TARGETS,
    Mount,
    check_mount,
    check_target,
    check_volume_name,
    may_mount,
)
from rxslurm.daemon.settings import Settings
from tests.unit.test_batch_plan import member
from tests.unit.test_reconciler_edges import OWNER, World, world

# -- names and paths ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["d", "datasets", "run-2024", "a" * 32])
def test_good_volume_names_pass(name: str) -> None:
    assert check_volume_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "Data", "2data", "data-", "a" * 33, "da_ta", "da/ta", "data\n", "..", None, 3]
)
def test_bad_volume_names_are_refused(name: Any) -> None:
    with pytest.raises(BadRequest, match="volume name"):
        check_volume_name(name)


@pytest.mark.parametrize("target", ["/data", "/data/shared", "/mnt/v-1.2_x", "/home/data"])
def test_good_mount_paths_pass(target: str) -> None:
    assert check_target(target) == target


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("data", "absolute"),
        ("", "absolute"),
        ("/", "below"),
        ("/data/", "below"),
        ("//data", "below"),
        ("/data/../etc", r"'\.\.'"),
        ("/data/./x", r"'\.\.'"),
        ("/da ta", "letters"),
        ("/data:ro", "letters"),
        ("/a,b", "letters"),
        ("/workspace", "container needs"),
        ("/workspace/data", "container needs"),
        ("/etc", "container needs"),
        ("/usr/local/data", "container needs"),
        ("/proc/x", "container needs"),
        ("/.singularity.d", "container needs"),
        ("/" + "a" * 200, "at most"),
    ],
)
def test_bad_mount_paths_are_refused_with_the_reason(target: str, why: str) -> None:
    with pytest.raises(BadRequest, match=why):
        check_target(target)


def test_a_folder_whose_name_only_starts_like_a_reserved_one_is_fine() -> None:
    assert check_target("/workspaces") == "/workspaces"
    assert check_target("/etcetera") == "/etcetera"


@given(st.sampled_from(RESERVED_TARGETS), st.from_regex(r"(/[a-z0-9]{1,8}){0,3}", fullmatch=True))
def test_nothing_at_or_below_a_reserved_path_passes(reserved: str, below: str) -> None:
    with pytest.raises(BadRequest):
        check_target(reserved + below)


@given(st.text(max_size=60))
def test_a_path_that_passes_is_absolute_plain_and_bindable(target: str) -> None:
    try:
        checked = check_target(target)
    except BadRequest:
        return
    parts = checked.split("/")[1:]
    assert checked.startswith("/") and all(p not in ("", ".", "..") for p in parts)
    assert not set(",: \x00\n") & set(checked)


def test_a_mount_as_the_api_takes_it() -> None:
    assert check_mount({"volume": "data", "target": "/data", "read_only": True}) == Mount(
        "data", "/data", True
    )
    assert check_mount({"volume": "data", "target": "/data"}).read_only is False
    with pytest.raises(BadRequest, match="read_only"):
        check_mount({"volume": "data", "target": "/data", "read_only": "yes"})
    with pytest.raises(BadRequest):
        check_mount(["data", "/data"])


def test_a_bind_names_the_folder_the_target_and_the_mode() -> None:
    assert Mount("data", "/data", True).bind("/srv/v/data") == "/srv/v/data:/data:ro"
    assert Mount("data", "/mnt/d", False).bind("/srv/v/data") == "/srv/v/data:/mnt/d:rw"


# -- the rule -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("volume_owners", "mounting_owners", "allowed"),
    [
        ({"ada"}, {"ada"}, True),
        ({"ada", "bob"}, {"bob"}, True),
        ({"ada"}, {"ada", "cy"}, True),
        ({"ada"}, {"bob"}, False),
        (set(), {"ada"}, False),
        ({"ada"}, set(), False),
    ],
)
def test_a_project_may_mount_when_an_owner_of_the_volume_owns_it_too(
    volume_owners: set[str], mounting_owners: set[str], allowed: bool
) -> None:
    assert may_mount(volume_owners, mounting_owners) is allowed


# -- the records, through the ledger --------------------------------------------------------------


def add_volume(w: World, name: str, project: str, tmp_path: Path) -> None:
    with w.ledger.transaction() as db:
        project_id = next(db.table("projects").rows_where("name = ?", [project]))["id"]
        db.table("volumes").insert(
            {
                "name": name,
                "project_id": project_id,
                "path": str(tmp_path / "volumes" / name),
                "created_by": "ada",
                "created_at": to_timestamp(w.clock()),
            }
        )


def owner_of(w: World, project: str, user: str) -> None:
    with w.ledger.transaction() as db:
        project_id = next(db.table("projects").rows_where("name = ?", [project]))["id"]
        db.execute("DELETE FROM members WHERE project_id = ?", [project_id])
        db.table("members").insert(
            {
                "project_id": project_id,
                "platform_user_id": user,
                "role": "owner",
                "added_at": to_timestamp(w.clock()),
                "added_by": user,
            }
        )


def config_for(tmp_path: Path) -> Any:
    # Not root-owned: preparing the folder fails in the unit tier, and is reported as a warning.
    return parse_config({"volumes": {"root": str(tmp_path / "volumes")}})


def test_a_mount_of_the_same_owner_reaches_the_holder_and_the_batch_plan(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "running"), ("beta", "running"))
    config = config_for(tmp_path)
    w.service = ContainerService(w.ledger, config, w.slurm, w.runtime, clock=w.clock)
    add_volume(w, "shared", "alpha", tmp_path)
    body = {"volume": "shared", "target": "/data", "read_only": True}

    answer = volumes.set_mount(w.ledger, config, OWNER, "beta", body)

    assert answer["mounts"] == [
        {
            "volume": "shared",
            "project": "alpha",
            "path": str(tmp_path / "volumes" / "shared"),
            "target": "/data",
            "read_only": True,
            "allowed": True,
        }
    ]
    assert "not prepared" in answer["warnings"][0]  # no root here: the folder is not made
    bind = f"{tmp_path}/volumes/shared:/data:ro"
    assert w.service.batch_plan(OWNER, "beta").binds == (bind,)
    assert w.service.batch_plan(OWNER, "alpha").binds == ()
    with w.ledger.read() as db:
        beta = next(db.table("projects").rows_where("name = 'beta'"))
        container = next(db.table("containers").rows_where("name = 'rx-beta'"))
    w.service.holder_job(container, beta, Settings.from_row(beta))
    assert w.runtime.holders[-1].binds == (bind,)
    events = [r[0] for r in w.ledger.db.execute("SELECT action FROM events").fetchall()]
    assert "volume.mounted" in events


def test_another_owner_s_project_may_not_mount_and_nothing_changes(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "running"), ("beta", "running"))
    config = config_for(tmp_path)
    add_volume(w, "shared", "alpha", tmp_path)
    member(w, "bob", 70001, None)
    owner_of(w, "beta", "bob")
    bob = Actor(platform_user="bob", uid=70001, user="bob", admin=False, origin="socket")
    body = {"volume": "shared", "target": "/data"}

    with pytest.raises(Forbidden, match="no owner of the volume's project"):
        volumes.set_mount(w.ledger, config, bob, "beta", body)
    # Ada is not in beta at all: she cannot even see it.
    with pytest.raises(NotFound):
        volumes.set_mount(w.ledger, config, OWNER, "beta", body)
    assert w.ledger.db.execute("SELECT count(*) FROM volume_mounts").fetchone()[0] == 0


def test_a_mount_the_rule_no_longer_allows_is_left_out_of_the_plan(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "running"), ("beta", "running"))
    config = config_for(tmp_path)
    w.service = ContainerService(w.ledger, config, w.slurm, w.runtime, clock=w.clock)
    add_volume(w, "shared", "alpha", tmp_path)
    volumes.set_mount(w.ledger, config, OWNER, "beta", {"volume": "shared", "target": "/data"})
    member(w, "bob", 70001, None)
    owner_of(w, "alpha", "bob")  # ada no longer owns the volume's project

    bob = Actor(platform_user="bob", uid=70001, user="bob", admin=False, origin="socket")
    assert w.service.batch_plan(OWNER, "beta").binds == ()
    assert volumes.list_volumes(w.ledger, OWNER, "beta")["mounts"][0]["allowed"] is False
    assert volumes.list_volumes(w.ledger, bob, "alpha")["volumes"][0]["mounted_by"] == [
        {"project": "beta", "target": "/data", "read_only": False}
    ]


def test_two_volumes_may_not_share_a_mount_path_and_a_mounted_volume_is_not_removed(
    tmp_path: Path,
) -> None:
    w = world(tmp_path, ("alpha", "running"), ("beta", "running"))
    config = config_for(tmp_path)
    add_volume(w, "one", "alpha", tmp_path)
    add_volume(w, "two", "alpha", tmp_path)
    volumes.set_mount(w.ledger, config, OWNER, "beta", {"volume": "one", "target": "/data"})

    with pytest.raises(Conflict, match="already mounts a volume at /data"):
        volumes.set_mount(w.ledger, config, OWNER, "beta", {"volume": "two", "target": "/data"})
    with pytest.raises(Conflict, match="mounted by beta"):
        volumes.remove_volume(w.ledger, config, OWNER, "alpha", "one")
    volumes.remove_mount(w.ledger, config, OWNER, "beta", "one")
    assert volumes.list_volumes(w.ledger, OWNER, "beta")["mounts"] == []
    with pytest.raises(NotFound):
        volumes.remove_mount(w.ledger, config, OWNER, "beta", "one")


# -- config and rxctl's splitting -----------------------------------------------------------------


@pytest.mark.parametrize("root", ["relative/volumes", "/srv/a:b", "/srv/a,b"])
def test_a_volumes_root_that_cannot_be_bound_is_a_config_error(root: str) -> None:
    with pytest.raises(ConfigError, match="volumes.root"):
        parse_config({"volumes": {"root": root}})


@pytest.mark.parametrize(
    ("text", "mount"),
    [
        ("data:/data", {"volume": "data", "target": "/data", "read_only": False}),
        ("data:/data:ro", {"volume": "data", "target": "/data", "read_only": True}),
        ("data:/data:rw", {"volume": "data", "target": "/data", "read_only": False}),
    ],
)
def test_rxctl_splits_name_path_and_mode(text: str, mount: dict[str, Any]) -> None:
    assert split_mount(text) == mount


@pytest.mark.parametrize("text", ["data", ":/data", "data:", ""])
def test_rxctl_refuses_a_volume_without_name_or_path(text: str) -> None:
    with pytest.raises(BadVolumeSpec):
        split_mount(text)


@given(
    st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
    st.from_regex(r"(/[A-Za-z0-9_.-]{1,6}){1,3}", fullmatch=True),
    st.sampled_from(["", ":ro", ":rw"]),
)
def test_what_rxctl_splits_is_what_was_written(name: str, target: str, mode: str) -> None:
    mount = split_mount(f"{name}:{target}{mode}")
    assert (mount["volume"], mount["target"], mount["read_only"]) == (name, target, mode == ":ro")


def test_a_project_that_owns_a_volume_is_not_deleted_and_one_that_mounts_one_is(
    tmp_path: Path,
) -> None:
    w = world(tmp_path, ("alpha", "disabled"), ("beta", "disabled"))
    config = config_for(tmp_path)
    add_volume(w, "shared", "alpha", tmp_path)
    volumes.set_mount(w.ledger, config, OWNER, "beta", {"volume": "shared", "target": "/data"})

    with pytest.raises(Conflict, match="owns volume"):
        delete_project(w.ledger, OWNER, "alpha")
    delete_project(w.ledger, OWNER, "beta")

    assert w.ledger.db.execute("SELECT count(*) FROM volume_mounts").fetchone()[0] == 0
    assert volumes.list_volumes(w.ledger, OWNER, "alpha")["volumes"][0]["mounted_by"] == []


# -- rxctl's copies (as the caller) ---------------------------------------------------------------


def test_a_folder_is_copied_into_a_folder_as_cp_r_does_with_links_kept_as_links(
    tmp_path: Path,
) -> None:
    source = tmp_path / "in"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "a.txt").write_text("a")
    (source / "link").symlink_to("/etc/passwd")
    volume = tmp_path / "volume"
    volume.mkdir()

    copy(source, volume, keep_modes=False)
    copy(source / "sub" / "a.txt", volume / "b.txt", keep_modes=False)

    assert (volume / "in" / "sub" / "a.txt").read_text() == "a"
    assert os.readlink(volume / "in" / "link") == "/etc/passwd"
    assert (volume / "b.txt").read_text() == "a"


def test_a_copy_into_a_volume_sets_no_mode_so_its_default_acls_apply(tmp_path: Path) -> None:
    source = tmp_path / "script.sh"
    source.write_text("#!/bin/sh\n")
    source.chmod(0o700)
    volume = tmp_path / "volume"
    volume.mkdir()
    old = os.umask(0o022)
    try:
        copy(source, volume, keep_modes=False)
        copy(source, tmp_path / "kept.sh", keep_modes=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE((volume / "script.sh").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "kept.sh").stat().st_mode) == 0o700


@pytest.mark.parametrize("path", ["/etc/passwd", "../x", "a/../../x"])
def test_a_path_outside_the_volume_is_refused(tmp_path: Path, path: str) -> None:
    with pytest.raises(click.ClickException, match="inside the volume"):
        inside(tmp_path, path)
