"""One image for the pull pool (images/fetch.py), with the registry, the pull and the cache folder
faked: a recorded digest's file is used as it is, a tag is resolved once and pulled by digest,
only a refresh asks the registry again, and two references to one digest share its file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rxslurm.daemon.images import cache as image_cache
from rxslurm.daemon.images import fetch as fetch_module
from rxslurm.daemon.images.fetch import fetch
from rxslurm.daemon.images.pull import PullSettings
from rxslurm.daemon.ledger.store import Ledger
from rxslurm.slurm.runas import RunAs

FIRST = "sha256:" + "1" * 64
MOVED = "sha256:" + "2" * 64
TAG = "docker://127.0.0.1:5055/org/app:1"


class Fakes:
    def __init__(self, images: Path) -> None:
        self.images = images
        self.files: set[str] = set()
        self.tags = {"org/app:1": FIRST, "org/other:7": FIRST}
        self.resolved: list[str] = []
        self.pulled: list[str] = []

    def cached_file(self, folder: Path, name: str) -> Path | None:
        return folder / name if name in self.files else None

    def resolve(self, settings: Any, ref: Any, cancel: Any = None) -> str:
        self.resolved.append(str(ref))
        return self.tags[f"{ref.full_repository}:{ref.tag}"]

    def pull(self, settings: Any, uri: str, cancel: Any = None, name: str | None = None) -> Any:
        assert name is not None
        self.pulled.append(uri)
        self.files.add(name)
        return self.images / name, 1000


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Fakes, PullSettings, Ledger]:
    fakes = Fakes(tmp_path / "images")
    monkeypatch.setattr(image_cache, "cached_file", fakes.cached_file)
    monkeypatch.setattr(image_cache, "cached_image", lambda folder, uri: None)
    monkeypatch.setattr(fetch_module.image_resolve, "resolve", fakes.resolve)
    monkeypatch.setattr(fetch_module.image_pull, "pull", fakes.pull)
    settings = PullSettings(
        account=RunAs("nobody", 65534, 65534, ()),
        work_dir=tmp_path / "work",
        image_dir=tmp_path / "images",
        binary="/bin/false",
        timeout_s=30.0,
        max_bytes=1 << 20,
    )
    return fakes, settings, Ledger.open(tmp_path / "ledger.db", migrate=True)


def test_a_tag_is_resolved_once_and_pulled_by_its_digest(world: Any) -> None:
    fakes, settings, ledger = world
    first = fetch(settings, ledger, TAG)
    again = fetch(settings, ledger, TAG)

    assert first.digest == again.digest == FIRST
    assert first.image == again.image == settings.image_dir / f"sha256-{'1' * 64}.sif"
    assert (first.size, again.size) == (1000, None)
    assert fakes.resolved == [TAG]
    assert fakes.pulled == [f"docker://127.0.0.1:5055/org/app@{FIRST}"]


def test_two_references_to_one_digest_share_its_file(world: Any) -> None:
    fakes, settings, ledger = world
    one = fetch(settings, ledger, TAG)
    other = fetch(settings, ledger, "docker://127.0.0.1:5055/org/other:7")
    pinned = fetch(settings, ledger, f"docker://127.0.0.1:5055/org/third@{FIRST}")

    assert one.image == other.image == pinned.image
    assert len(fakes.pulled) == 1 and other.size is None and pinned.size is None
    assert fakes.resolved == [TAG, "docker://127.0.0.1:5055/org/other:7"]


def test_a_moved_tag_is_followed_only_on_refresh(world: Any) -> None:
    fakes, settings, ledger = world
    fetch(settings, ledger, TAG)
    fakes.tags["org/app:1"] = MOVED

    assert fetch(settings, ledger, TAG).digest == FIRST
    refreshed = fetch(settings, ledger, TAG, refresh=True, requester_uid=2001)

    assert refreshed.digest == MOVED and refreshed.size == 1000
    row = ledger.db["image_digests"].get("docker://127.0.0.1:5055/org/app:1")
    assert (row["digest"], row["resolved_by"]) == (MOVED, 2001)


def test_a_recorded_digest_whose_file_went_is_pulled_again_as_it_was(world: Any) -> None:
    fakes, settings, ledger = world
    fetch(settings, ledger, TAG)
    fakes.tags["org/app:1"] = MOVED
    fakes.files.clear()  # an admin removed the file

    again = fetch(settings, ledger, TAG)

    assert again.digest == FIRST and fakes.resolved == [TAG]
    assert fakes.pulled == [f"docker://127.0.0.1:5055/org/app@{FIRST}"] * 2
