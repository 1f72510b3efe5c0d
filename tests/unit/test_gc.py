"""Garbage collection's decisions (containers/gc_plan.py) and the container-folder script
(runtime/state_gc.py, here as the test's own user), and GcService over a temp-dir ledger with a
fake clock: what is unused, ages, keep=true, a dry run changes nothing, one failure never stops
the rest. No root, no Slurm."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.daemon.api.routes_gc import parse_gc_body
from rxslurm.daemon.config import Config, ContainersConfig
from rxslurm.daemon.containers.gc import GcService
from rxslurm.daemon.containers.gc_plan import (
    FRESH_SETTLED_S,
    IMPORT_SETTLED_S,
    BuiltImage,
    Container,
    container_items,
    old_quarantine,
    unused_builds,
    unused_images,
)
from rxslurm.daemon.errors import BadRequest, Conflict, Unavailable
from rxslurm.daemon.identity.actors import Actor
from rxslurm.daemon.images.cache import image_file_name
from rxslurm.daemon.images.cache_walk import CachedImage, in_use
from rxslurm.daemon.ledger.timestamps import to_timestamp
from rxslurm.daemon.projects import labels
from rxslurm.daemon.quarantine import Quarantined, moved_at
from rxslurm.daemon.runtime import state_gc
from rxslurm.daemon.runtime.state_gc import Entry, StateGcError, parse_output
from tests.unit.test_image_build_service import Builds, dev_mode
from tests.unit.test_reconciler_edges import OWNER, World, world

DAY = 86400
STRANGER = Actor(platform_user="sam", uid=65532, user="sam", admin=False, origin="socket")


# -- the decisions ---------------------------------------------------------------------------------


def test_an_image_goes_only_when_no_project_names_it_and_it_is_older_than_the_cutoff() -> None:
    used = "docker://python:3.12"
    cached = [
        CachedImage(image_file_name(used), 100, 10),
        CachedImage(image_file_name("docker://old:1"), 200, 10),
        CachedImage(image_file_name("docker://new:1"), 300, 50),
    ]
    names = in_use([used, "/shared/images/base.sif", ""])

    items = unused_images(cached, names, cutoff=20)

    assert [(i.kind, i.name, i.bytes, i.owner) for i in items] == [
        ("image", image_file_name("docker://old:1"), 200, "root")
    ]


def test_a_quarantined_folder_goes_after_the_age_and_one_not_named_by_rxd_never() -> None:
    entries = [
        Quarantined(
            "rx-old.20260101T000000Z.0a1b2c3d", 10, moved_at("rx-old.20260101T000000Z.0a1b2c3d")
        ),
        Quarantined(
            "rx-new.20261130T000000Z.0a1b2c3d", 20, moved_at("rx-new.20261130T000000Z.0a1b2c3d")
        ),
        Quarantined("something-else", 30, moved_at("something-else")),
    ]
    cutoff = moved_at("rx-x.20261101T000000Z.00000000")
    assert cutoff is not None

    assert [i.name for i in old_quarantine(entries, cutoff)] == ["rx-old.20260101T000000Z.0a1b2c3d"]


@given(st.integers(0, 2**33))
def test_moved_at_reads_back_the_time_quarantine_writes(t: int) -> None:
    import time

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t))
    assert moved_at(f"rx-a.b.{stamp}.deadbeef") == t


def plan(**values: object) -> Container:
    base: dict[str, object] = {
        "project": "alpha",
        "runtime_user": "nobody",
        "keep_jobs": frozenset({8, 9}),
        "newest_job": 9,
        "kept_snapshots": frozenset({"snap-3.img"}),
        "known_snapshots": frozenset({"snap-1.img", "snap-2.img", "snap-3.img"}),
    }
    return Container(**{**base, **values})  # type: ignore[arg-type]


def names(items: list) -> list[str]:  # type: ignore[type-arg]
    return sorted(i.name for i in items)


def test_logs_and_status_files_of_jobs_not_kept_go_and_newer_ones_than_rxd_knows_stay() -> None:
    entries = [
        Entry("job-7.out", "job-log", 5, 0),
        Entry("job-7.status", "job-status", 5, 0),
        Entry("job-8.out", "job-log", 5, 0),
        Entry("job-9.status", "job-status", 5, 0),
        Entry("job-12.out", "job-log", 5, 0),  # submitted this moment: not in the ledger yet
    ]
    assert names(container_items(plan(), entries, cutoff=0, now=0)) == ["job-7.out", "job-7.status"]
    assert container_items(plan(newest_job=None), entries, cutoff=0, now=0) == []


def test_snapshots_beyond_the_kept_go_but_one_the_ledger_does_not_know_yet_stays() -> None:
    entries = [Entry(f"snapshots/snap-{n}.img", "snapshot", 1 << 20, 0) for n in (1, 2, 3, 4)]
    assert names(container_items(plan(), entries, cutoff=0, now=0)) == [
        "snapshots/snap-1.img",
        "snapshots/snap-2.img",
    ]


def test_a_backup_goes_only_once_older_than_the_cutoff() -> None:
    entries = [
        Entry("overlay.img.before-reset-20260101T000000Z", "backup", 7, 100),
        Entry("overlay.img.before-import", "backup", 9, 300),
    ]
    items = container_items(plan(), entries, cutoff=200, now=0)
    assert [(i.name, i.owner, i.project, i.bytes) for i in items] == [
        ("overlay.img.before-reset-20260101T000000Z", "nobody", "alpha", 7)
    ]


# -- the folder script, as the test's own user ----------------------------------------------------


def folder_with_garbage(root: Path) -> Path:
    (root / "snapshots").mkdir()
    for name in (
        "overlay.img",
        "overlay.img.before-reset-20260101T000000Z",
        "job-1.out",
        "job-1.status",
        "job-5.out",
        "holder.sh",
        "snapshots/snap-1.img",
        "snapshots/.tmp-snap-2.img",
    ):
        (root / name).write_bytes(b"x" * 5000)
    return root


def test_the_script_lists_only_rx_slurms_names_and_never_a_link_or_a_fifo(tmp_path: Path) -> None:
    folder = folder_with_garbage(tmp_path)
    secret = tmp_path.parent / f"{tmp_path.name}-secret"
    secret.write_text("secret")
    (folder / "overlay.img.before-import").symlink_to(secret)
    os.mkfifo(folder / "job-2.out")

    listing = state_gc.list_entries(str(folder), None)

    assert {(e.name, e.kind) for e in listing.items} == {
        ("overlay.img.before-reset-20260101T000000Z", "backup"),
        ("job-1.out", "job-log"),
        ("job-1.status", "job-status"),
        ("job-5.out", "job-log"),
        ("snapshots/snap-1.img", "snapshot"),
    }
    assert all(e.bytes >= 4096 for e in listing.items)
    assert sorted(listing.skipped) == ["job-2.out", "overlay.img.before-import"]


def test_the_script_removes_what_it_is_told_but_never_a_name_that_is_not_rx_slurms(
    tmp_path: Path,
) -> None:
    folder = folder_with_garbage(tmp_path)
    secret = tmp_path / "snapshots" / "snap-9.img"
    target = tmp_path.parent / f"{tmp_path.name}-target"
    target.write_text("keep me")
    secret.symlink_to(target)

    done = state_gc.remove_entries(
        str(folder),
        ["job-1.out", "snapshots/snap-1.img", "overlay.img", "holder.sh", "snapshots/snap-9.img"],
        None,
    )

    assert sorted(done.removed) == ["job-1.out", "snapshots/snap-1.img"]
    assert sorted(done.skipped) == ["holder.sh", "overlay.img", "snapshots/snap-9.img"]
    assert (folder / "overlay.img").exists() and (folder / "holder.sh").exists()
    assert target.read_text() == "keep me" and secret.is_symlink()


def test_a_folder_that_is_a_link_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    folder_with_garbage(real)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(StateGcError, match="its folder"):
        state_gc.list_entries(str(link), None)


@pytest.mark.parametrize(
    "answer",
    [
        {"items": [{"name": "a", "kind": "other", "bytes": 1, "changed": 1}]},
        {"items": [{"name": "a", "kind": "backup", "bytes": -1, "changed": 1}]},
        {"items": [{"name": "a", "kind": "backup", "bytes": True, "changed": 1}]},
        {"items": [{"name": 3, "kind": "backup", "bytes": 1, "changed": 1}]},
        {"items": ["a"]},
        {"removed": [1]},
    ],
)
def test_a_malformed_answer_is_an_error(answer: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(StateGcError, match="malformed"):
        parse_output(0, json.dumps(answer))


# -- the service -----------------------------------------------------------------------------------


def gc_world(tmp_path: Path, *projects: str) -> tuple[World, GcService]:
    (tmp_path / "ledger").mkdir()
    w = world(tmp_path / "ledger", *[(p, "sleeping") for p in projects])
    for p in projects:
        folder = tmp_path / p
        folder.mkdir()
        folder_with_garbage(folder)
        w.set(p, state_dir=str(folder))
        # The ledger knows jobs 1 and 5; 5 is the newest, the one log kept.
        for job in (1, 5):
            with w.ledger.transaction() as db:
                db.table("jobs").insert(
                    {
                        "job_id": job + 100 * projects.index(p),
                        "container_id": w.row(p)["id"],
                        "state": "COMPLETED",
                    }
                )
    # Files made now are older than "now - 0" once the clock has moved on.
    w.clock.advance(60)
    service = GcService(w.ledger, Config(containers=ContainersConfig(job_logs_kept=1)), w.clock)
    service.run_as = lambda user: None
    return w, service


def test_a_dry_run_lists_each_item_with_kind_owner_size_and_the_total_and_removes_nothing(
    tmp_path: Path,
) -> None:
    w, service = gc_world(tmp_path, "alpha")
    before = sorted(p.name for p in (tmp_path / "alpha").rglob("*"))
    events = w.ledger.db.table("events").count

    answer = service.collect(OWNER, deployment=False, dry_run=True, older_than_s=0)

    assert answer["dry_run"] is True
    # job-1.* are not kept (job 5 is the newest); the backup is older than "now - 0".
    assert sorted((i["kind"], i["name"]) for i in answer["items"]) == [
        ("backup", "overlay.img.before-reset-20260101T000000Z"),
        ("job-log", "job-1.out"),
        ("job-status", "job-1.status"),
    ]
    assert {i["owner"] for i in answer["items"]} == {"nobody"}
    assert {i["project"] for i in answer["items"]} == {"alpha"}
    assert answer["bytes"] == sum(i["bytes"] for i in answer["items"]) > 0
    assert sorted(p.name for p in (tmp_path / "alpha").rglob("*")) == before
    assert w.ledger.db.table("events").count == events


def test_collecting_removes_what_the_dry_run_listed_and_audits_it(tmp_path: Path) -> None:
    w, service = gc_world(tmp_path, "alpha")
    listed = service.collect(OWNER, deployment=False, dry_run=True, older_than_s=0)

    answer = service.collect(OWNER, deployment=False, dry_run=False, older_than_s=0)

    assert answer["items"] == listed["items"] and answer["failed"] == []
    left = sorted(p.name for p in (tmp_path / "alpha").iterdir())
    assert left == ["holder.sh", "job-5.out", "overlay.img", "snapshots"]
    events = list(
        w.ledger.db.table("events").rows_where(
            "action LIKE '%gc-collected' OR action = 'gc.collected'"
        )
    )
    assert {e["action"] for e in events} == {"gc.collected", "project.gc-collected"}
    summary = json.loads(next(e for e in events if e["action"] == "gc.collected")["detail"])
    assert summary["count"] == 3 and summary["bytes"] == answer["bytes"]


def test_the_age_keeps_a_young_backup(tmp_path: Path) -> None:
    _, service = gc_world(tmp_path, "alpha")
    answer = service.collect(OWNER, deployment=False, dry_run=True, older_than_s=30 * DAY)
    assert "backup" not in {i["kind"] for i in answer["items"]}


def test_a_project_labelled_keep_true_loses_nothing(tmp_path: Path) -> None:
    w, service = gc_world(tmp_path, "alpha", "beta")
    with w.ledger.transaction() as db:
        labels.apply(db, w.row("alpha")["project_id"], {"keep": "true"}, (), at="t", by="ada")

    answer = service.collect(OWNER, deployment=False, dry_run=False, older_than_s=0)

    assert {i["project"] for i in answer["items"]} == {"beta"}
    assert (tmp_path / "alpha" / "job-1.out").exists()
    assert not (tmp_path / "beta" / "job-1.out").exists()


def test_an_owner_collects_only_in_projects_they_own(tmp_path: Path) -> None:
    _, service = gc_world(tmp_path, "alpha")
    answer = service.collect(STRANGER, deployment=False, dry_run=False, older_than_s=0)
    assert answer["items"] == []
    assert (tmp_path / "alpha" / "job-1.out").exists()


def test_one_folder_that_fails_does_not_stop_the_others(tmp_path: Path) -> None:
    w, service = gc_world(tmp_path, "alpha", "beta")
    w.set("alpha", state_dir=str(tmp_path / "gone"))

    answer = service.collect(OWNER, deployment=False, dry_run=False, older_than_s=0)

    assert [f["project"] for f in answer["failed"]] == ["alpha"]
    assert {i["project"] for i in answer["items"]} == {"beta"}


def test_snapshots_removed_are_marked_in_the_ledger(tmp_path: Path) -> None:
    w, service = gc_world(tmp_path, "alpha")
    cid = w.row("alpha")["id"]
    folder = tmp_path / "alpha" / "snapshots"
    now = to_timestamp(w.clock())
    with w.ledger.transaction() as db:
        for n in range(1, 6):
            (folder / f"snap-{n}.img").write_bytes(b"s")
            db.table("overlay_snapshots").insert(
                {
                    "container_id": cid,
                    "runtime_uid": 65534,
                    "path": str(folder / f"snap-{n}.img"),
                    "taken_at": now,
                    "size_bytes": 1,
                    "source_mtime_ns": n,
                    "covers_until": now,
                    "trigger": "sleep",
                }
            )

    answer = service.collect(OWNER, deployment=False, dry_run=False, older_than_s=30 * DAY)

    gone = sorted(i["name"] for i in answer["items"] if i["kind"] == "snapshot")
    assert gone == ["snapshots/snap-1.img", "snapshots/snap-2.img"]  # 3 kept by default
    assert sorted(p.name for p in folder.iterdir()) == [
        ".tmp-snap-2.img",
        "snap-3.img",
        "snap-4.img",
        "snap-5.img",
    ]
    marked = w.ledger.db.execute(
        "SELECT count(*) FROM overlay_snapshots WHERE removed_at IS NOT NULL"
    ).fetchone()[0]
    assert marked == 2


# -- the request ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [{"dry_run": "yes"}, {"older_than_s": -1}, {"older_than_s": "30d"}, {"older_than_s": True}],
)
def test_a_bad_gc_request_is_refused_with_a_reason(body: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(BadRequest):
        parse_gc_body(body)


def test_a_gc_request_defaults_to_thirty_days_and_no_dry_run() -> None:
    assert parse_gc_body({}) == (False, 30 * DAY)


# -- built images ---------------------------------------------------------------------------------


def test_a_built_image_goes_when_no_project_names_it_and_it_is_old_enough() -> None:
    builds = [
        BuiltImage(1, "alpha", "nobody", "/s/rx-alpha-build-1/image.sif", 10, 100),
        BuiltImage(2, "alpha", "nobody", "/s/rx-alpha-build-2/image.sif", 20, 100),
        BuiltImage(3, "alpha", "nobody", "/s/rx-alpha-build-3/image.sif", 30, 300),
        BuiltImage(4, "alpha", "nobody", "/s/rx-alpha-build-4/image.sif", 40, None),
    ]
    chosen = unused_builds(builds, {"/s/rx-alpha-build-2/image.sif"}, cutoff=200)
    assert [(b, i.kind, i.bytes, i.project) for b, i in chosen] == [(1, "built-image", 10, "alpha")]


def add_build(w: World, project: str, build_id: int, ended: str) -> str:
    path = f"/srv/rx-{project}-build-{build_id}/image.sif"
    with w.ledger.transaction() as db:
        db.table("image_builds").insert(
            {
                "id": build_id,
                "project_id": w.row(project)["project_id"],
                "name": f"img{build_id}",
                "draft": "main",
                "definition": "Bootstrap: docker",
                "state": "succeeded",
                "runtime_user": "nobody",
                "runtime_uid": 65534,
                "build_dir": f"/srv/rx-{project}-build-{build_id}",
                "context": ".",
                "image_path": path,
                "size_bytes": 1000 * build_id,
                "created_at": ended,
                "created_by": "ada",
                "ended_at": ended,
                "updated_at": ended,
            }
        )
    return path


def test_unused_built_images_are_listed_removed_through_the_build_service_and_audited(
    tmp_path: Path,
) -> None:
    w, service = gc_world(tmp_path, "alpha", "beta")
    old = to_timestamp(w.clock() - timedelta(days=60))
    add_build(w, "alpha", 1, old)
    used = add_build(w, "alpha", 2, old)
    add_build(w, "alpha", 3, to_timestamp(w.clock()))
    add_build(w, "beta", 4, old)
    w.set("alpha", image=used)
    with w.ledger.transaction() as db:
        labels.apply(db, w.row("beta")["project_id"], {"keep": "true"}, (), at="t", by="ada")
    removed: list[int] = []
    service.remove_build = removed.append

    listed = service.collect(OWNER, deployment=False, dry_run=True, older_than_s=30 * DAY)
    assert [i["name"] for i in listed["items"] if i["kind"] == "built-image"] == [
        "/srv/rx-alpha-build-1/image.sif"
    ]
    assert removed == []

    done = service.collect(OWNER, deployment=False, dry_run=False, older_than_s=30 * DAY)
    assert removed == [1]
    assert [i["bytes"] for i in done["items"] if i["kind"] == "built-image"] == [1000]


def test_a_build_that_cannot_go_is_reported_and_the_rest_goes_on(tmp_path: Path) -> None:
    w, service = gc_world(tmp_path, "alpha")
    old = to_timestamp(w.clock() - timedelta(days=60))
    add_build(w, "alpha", 1, old)
    add_build(w, "alpha", 2, old)
    removed: list[int] = []

    def remove(build_id: int) -> None:
        if build_id == 1:
            raise Unavailable("cannot remove the files of build 1: busy")
        removed.append(build_id)

    service.remove_build = remove
    done = service.collect(OWNER, deployment=False, dry_run=False, older_than_s=DAY)

    assert removed == [2]
    assert [f["kind"] for f in done["failed"]] == ["built-image"]
    assert not (tmp_path / "alpha" / "job-1.out").exists()


def test_the_build_service_keeps_a_build_named_again_and_removes_one_no_one_names(
    tmp_path: Path,
) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    dev_mode(w)
    builds = Builds(w)
    old = to_timestamp(w.clock())
    named = add_build(w, "alpha", 1, old)
    add_build(w, "alpha", 2, old)
    with w.ledger.transaction() as db:
        # Files already gone: only the record is left to remove.
        db.execute("UPDATE image_builds SET build_dir = ''")
    w.set("alpha", image=named)

    with pytest.raises(Conflict, match="in use again"):
        builds.service.remove_unused(1)
    builds.service.remove_unused(2)
    builds.service.remove_unused(99)  # gone meanwhile: nothing to do

    ids = [r["id"] for r in w.ledger.db.table("image_builds").rows]
    assert ids == [1]


ENTRIES = st.builds(
    Entry,
    name=st.text(max_size=40),
    kind=st.sampled_from(state_gc.KINDS),
    bytes=st.integers(0, 1 << 50),
    changed=st.integers(0, 1 << 40),
)


@given(st.lists(ENTRIES, max_size=5), st.lists(st.text(max_size=20), max_size=3))
def test_the_scripts_answer_reads_back_what_it_says(items: list[Entry], names: list[str]) -> None:
    answer = {
        "items": [vars(e) | {"bytes": e.bytes} for e in items],
        "removed": names,
        "skipped": [],
        "failed": [],
    }
    listing = parse_output(0, "noise\n" + json.dumps(answer))
    assert listing.items == tuple(items) and listing.removed == tuple(names)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3)))  # fmt: skip
def test_any_json_answer_is_read_or_refused_as_malformed_never_crashes(value: object) -> None:
    try:
        listing = parse_output(0, json.dumps(value))
    except StateGcError as exc:
        assert str(exc).startswith("cannot collect garbage")
    else:
        assert all(e.kind in state_gc.KINDS and e.bytes >= 0 for e in listing.items)


def test_a_references_digest_file_and_a_jobs_cached_path_are_in_use() -> None:
    """Pulls are cached by content digest (images/digests.py): the file a reference resolved to,
    and the cached file a container's job runs (its image once pulled), are never unused."""
    image_dir = Path("/var/cache/rxslurm/images")
    digest = "sha256:" + "ab" * 32
    running = image_dir / ("sha256-" + "cd" * 32 + ".sif")
    names = in_use(
        ["docker://python:3.12", str(running), "/shared/images/base.sif"],
        image_dir,
        lambda ref: digest if ref.repository.endswith("python") else None,
    )
    assert "sha256-" + "ab" * 32 + ".sif" in names
    assert running.name in names
    assert image_file_name("docker://python:3.12") in names
    assert "base.sif" not in names


# -- what a `start --fresh` cut short left (.fresh-*) ---------------------------------------------


def test_a_leftover_goes_once_settled_whatever_the_cutoff() -> None:
    now = 100_000
    entries = [
        Entry(".fresh-home-0123456789ab", "fresh-leftover", 7, now - FRESH_SETTLED_S),
        Entry(".fresh-apptainer-0123456789ab", "fresh-leftover", 9, now - FRESH_SETTLED_S + 1),
        Entry("import-1", "import-leftover", 11, now - IMPORT_SETTLED_S),
        Entry("import-2", "import-leftover", 13, now - FRESH_SETTLED_S),  # may be uploading
    ]
    items = container_items(plan(), entries, cutoff=0, now=now)
    assert [(i.name, i.kind, i.bytes) for i in items] == [
        (".fresh-home-0123456789ab", "fresh-leftover", 7),
        ("import-1", "import-leftover", 11),
    ]


def fresh_leftover(folder: Path, name: str = ".fresh-home-0123456789ab") -> Path:
    """A home the fresh script renamed and did not finish removing: folders, files, and a link
    out that must never be followed."""
    left = folder / name
    (left / "sub" / "deeper").mkdir(parents=True)
    (left / "sub" / "deeper" / "data").write_bytes(b"y" * 20000)
    (left / "f").write_bytes(b"z" * 5000)
    (left / "out").symlink_to(folder.parent)
    return left


def test_the_script_lists_leftovers_with_their_whole_size_and_removes_them_whole(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep me")
    left = fresh_leftover(folder)
    (left / "to-outside").symlink_to(outside)
    (folder / ".fresh-home-notours").mkdir()  # not a name rx-slurm gives: never touched
    (folder / ".fresh-apptainer-ba9876543210").symlink_to(outside)  # a link: never followed
    killed = folder / "import-20261201000000000000"
    killed.mkdir()
    (killed / "archive.tar.gz").write_bytes(b"a" * 30000)
    os.utime(killed / "archive.tar.gz", (0, 2_000_000_000))  # written last in 2033

    listing = state_gc.list_entries(str(folder), None)

    entries = {e.name: e for e in listing.items}
    assert {n: e.kind for n, e in entries.items()} == {
        ".fresh-home-0123456789ab": "fresh-leftover",
        "import-20261201000000000000": "import-leftover",
    }
    assert entries[".fresh-home-0123456789ab"].bytes >= 25000  # what is below, not the folder
    assert entries["import-20261201000000000000"].bytes >= 30000
    assert entries["import-20261201000000000000"].changed == 2_000_000_000  # the newest inside
    assert listing.skipped == (".fresh-apptainer-ba9876543210",)
    done = state_gc.remove_entries(
        str(folder),
        [".fresh-home-0123456789ab", ".fresh-apptainer-ba9876543210", killed.name],
        None,
    )
    assert sorted(done.removed) == [".fresh-home-0123456789ab", killed.name]
    assert done.skipped == (".fresh-apptainer-ba9876543210",)
    assert sorted(p.name for p in folder.iterdir()) == [
        ".fresh-apptainer-ba9876543210",
        ".fresh-home-notours",
    ]
    assert (outside / "keep").read_text() == "keep me"


def test_gc_lists_and_removes_a_settled_fresh_leftover_and_keep_true_keeps_it(
    tmp_path: Path,
) -> None:
    w, service = gc_world(tmp_path, "alpha", "beta")
    for project in ("alpha", "beta"):
        fresh_leftover(tmp_path / project)
    with w.ledger.transaction() as db:
        labels.apply(db, w.row("beta")["project_id"], {"keep": "true"}, (), at="t", by="ada")

    young = service.collect(OWNER, deployment=False, dry_run=True, older_than_s=0)
    assert "fresh-leftover" not in {i["kind"] for i in young["items"]}  # may still be going

    w.clock.advance(FRESH_SETTLED_S)
    listed = service.collect(OWNER, deployment=False, dry_run=True, older_than_s=30 * DAY)
    [item] = [i for i in listed["items"] if i["kind"] == "fresh-leftover"]
    assert (item["project"], item["name"], item["owner"]) == (
        "alpha",
        ".fresh-home-0123456789ab",
        "nobody",
    )
    assert item["bytes"] >= 25000
    assert (tmp_path / "alpha" / ".fresh-home-0123456789ab").exists()

    done = service.collect(OWNER, deployment=False, dry_run=False, older_than_s=30 * DAY)
    assert [i["name"] for i in done["items"] if i["kind"] == "fresh-leftover"] == [
        ".fresh-home-0123456789ab"
    ]
    assert {i["project"] for i in done["items"]} == {"alpha"}
    assert not (tmp_path / "alpha" / ".fresh-home-0123456789ab").exists()
    assert (tmp_path / "beta" / ".fresh-home-0123456789ab" / "f").exists()
