"""Image build records: which build gives a project an image (succeeded_image), and finding a
build by id or by its image's name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rxslurm.daemon.images.builds import (
    BuildState,
    find_build,
    succeeded_image,
)
from rxslurm.daemon.ledger.store import Ledger
from rxslurm.daemon.ledger.timestamps import to_timestamp, utcnow


def add_project(ledger: Ledger, name: str) -> int:
    with ledger.transaction() as db:
        pk = (
            db.table("projects")
            .insert({"name": name, "created_at": to_timestamp(utcnow()), "created_by": "ada"})
            .last_pk
        )
    assert isinstance(pk, int)
    return pk


def add_build(ledger: Ledger, project_id: int, name: str, state: str, **values: Any) -> int:
    now = to_timestamp(utcnow())
    with ledger.transaction() as db:
        pk = (
            db.table("image_builds")
            .insert(
                {
                    "project_id": project_id,
                    "name": name,
                    "draft": "main",
                    "definition": "Bootstrap: localimage\nFrom: /b.sif\n",
                    "state": state,
                    "runtime_user": "ada",
                    "runtime_uid": 65534,
                    "build_dir": f"/srv/c/rxbuild-x-{name}",
                    "context": ".",
                    "created_at": now,
                    "created_by": "ada",
                    "updated_at": now,
                    **values,
                }
            )
            .last_pk
        )
    assert isinstance(pk, int)
    return pk


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger.open(tmp_path / "ledger.db", migrate=True)


def test_only_a_succeeded_build_of_that_project_gives_its_image(ledger: Ledger) -> None:
    alpha, beta = add_project(ledger, "alpha"), add_project(ledger, "beta")
    done = add_build(ledger, alpha, "py", "succeeded", image_path="/srv/c/b1/image.sif")
    failed = add_build(ledger, alpha, "broken", "failed", image_path="/srv/c/b2/image.sif")
    running = add_build(ledger, alpha, "soon", "building")

    assert succeeded_image(ledger, alpha, done) == Path("/srv/c/b1/image.sif")
    assert succeeded_image(ledger.db, alpha, done) == Path("/srv/c/b1/image.sif")
    assert succeeded_image(ledger, beta, done) is None  # another project's build
    assert succeeded_image(ledger, alpha, failed) is None
    assert succeeded_image(ledger, alpha, running) is None
    assert succeeded_image(ledger, alpha, 999) is None


def test_a_live_image_name_is_unique_but_a_failed_build_frees_it(ledger: Ledger) -> None:
    alpha = add_project(ledger, "alpha")
    first = add_build(ledger, alpha, "py", "failed")
    second = add_build(ledger, alpha, "py", "succeeded", image_path="/x.sif")
    with pytest.raises(Exception, match="UNIQUE"):
        add_build(ledger, alpha, "py", "queued")

    found = find_build(ledger, alpha, "py")
    assert found is not None and found.id == second and found.state is BuildState.SUCCEEDED
    by_id = find_build(ledger, alpha, str(first))
    assert by_id is not None and by_id.state is BuildState.FAILED
    assert find_build(ledger, alpha, "nope") is None
