"""`rxctl image set` and `rxctl image pull` on the real cluster with the real Apptainer, pulling
from the loopback registry (tests/cluster/registry.sh): a manager changes the image of a running
container, status says a restart is pending, and after stop/start the container runs the new
image with what was written in its overlay before; pulled images are cached by content digest
(two references to one manifest share a file) and a moved tag is pulled again only on --refresh.
Nothing reaches the internet: the images are pushed to the loopback registry here."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import ok
from tests.support.cluster import wait_for
from tests.support.daemon import Rxd
from tests.support.lifecycle import lifecycle_rxd, status, wait_state
from tests.support.real_apptainer import BASE_IMAGE
from tests.support.registry import (
    REGISTRY,
    copy_tag,
    pull_events,
    pulling_rxd,
    push_marked,
    registry_digest,
)

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("container_runtime")]

MARKER = "IMAGESET-MARKER"
MARKED = "rxslurm/imageset-marked:1"  # busybox plus /IMAGESET-MARKER
START_TIMEOUT_S = 180.0


@pytest.fixture(scope="module")
def marked() -> str:
    """The marked image pushed to the loopback registry; its digest."""
    with tempfile.TemporaryDirectory() as work:
        push_marked(MARKED, MARKER, Path(work))
    return registry_digest(MARKED)


@pytest.fixture
def rxd() -> Iterator[Rxd]:
    with pulling_rxd(enable_wait_s="3") as daemon:
        yield daemon


def exec_out(rxd: Rxd, project: str, *argv: str) -> str:
    return ok(rxd.rxctl("rxalice", "exec", "--project", project, "--", *argv)).stdout


def digests(rxd: Rxd) -> dict[str, str]:
    return dict(rxd.ledger_rows("SELECT key, digest FROM image_digests"))


def test_a_manager_sets_the_image_and_the_restart_runs_it_keeping_the_overlay(
    rxd: Rxd, marked: str
) -> None:
    ok(rxd.rxctl("rxalice", "project", "create", "swap", "--image", str(BASE_IMAGE)))
    ok(rxd.rxctl("rxalice", "project", "member", "add", "swap", "rxbob", "--role", "manager"))
    ok(rxd.rxctl("rxalice", "enable", "--project", "swap"))
    first = wait_state(rxd, "swap", "running", timeout=START_TIMEOUT_S)
    install = "mkdir -p /opt/kept && echo from-the-old-base > /opt/kept/note"
    exec_out(rxd, "swap", "sh", "-c", install)
    assert exec_out(rxd, "swap", "sh", "-c", f"test -e /{MARKER} || echo absent") == "absent\n"

    # A bare reference with a registry's port, as people write it.
    answer = ok(rxd.rxctl("rxbob", "image", "set", "--project", "swap", f"{REGISTRY}/{MARKED}"))
    assert answer.stdout == (
        f"swap: image set to docker://{REGISTRY}/{MARKED}\nnew settings apply on the next start\n"
    )
    awake = status(rxd, "rxalice", "swap")
    assert (awake["state"], awake["job_id"]) == ("running", first["job_id"])
    assert awake["settings_pending"] is True
    shown = ok(rxd.rxctl("rxalice", "status", "--project", "swap")).stdout
    assert "new settings apply on the next start" in shown

    ok(rxd.rxctl("rxbob", "stop", "--project", "swap"))
    wait_state(rxd, "swap", "stopped")
    ok(rxd.rxctl("rxbob", "start", "--project", "swap"))
    again = wait_state(rxd, "swap", "running", timeout=START_TIMEOUT_S)

    assert again["settings_pending"] is False
    assert again["image"].endswith(f"/{marked.replace(':', '-')}.sif"), again
    # The new image's file, and what the old base's container wrote in the overlay.
    assert exec_out(rxd, "swap", "cat", f"/{MARKER}", "/opt/kept/note") == (
        f"{MARKER}\nfrom-the-old-base\n"
    )
    [event] = [
        json.loads(detail)
        for actor, detail in rxd.ledger_rows(
            "SELECT actor, detail FROM events WHERE action = 'project.image-set'"
        )
        if actor == "rxbob"
    ]
    assert (event["from"], event["to"], event["kind"]) == (
        str(BASE_IMAGE),
        f"docker://{REGISTRY}/{MARKED}",
        "reference",
    )
    assert digests(rxd) == {f"docker://{REGISTRY}/{MARKED}": marked}
    ok(rxd.rxctl("rxalice", "stop", "--project", "swap"))
    wait_state(rxd, "swap", "stopped")


def pull(rxd: Rxd, project: str, *flags: str) -> dict:
    return json.loads(
        ok(rxd.rxctl("rxalice", "image", "pull", "--project", project, "--json", *flags)).stdout
    )


def test_references_to_one_manifest_share_a_file_and_a_moved_tag_needs_a_refresh(
    rxd: Rxd, marked: str
) -> None:
    copy_tag("rxslurm/busybox:1", "rxslurm/imageset-same:1")
    copy_tag("rxslurm/busybox:1", "rxslurm/imageset-moving:1")
    small = registry_digest("rxslurm/busybox:1")
    projects = {
        "one": f"docker://{REGISTRY}/rxslurm/busybox:1",
        "same": f"{REGISTRY}/rxslurm/imageset-same:1",
        "pinned": f"{REGISTRY}/rxslurm/imageset-same@{small}",
        "moving": f"{REGISTRY}/rxslurm/imageset-moving:1",
    }
    for project, ref in projects.items():
        ok(rxd.rxctl("rxalice", "project", "create", project, "--image", ref))
    pulled = {project: pull(rxd, project) for project in projects}

    assert {p["digest"] for p in pulled.values()} == {small}
    assert len({p["file"] for p in pulled.values()}) == 1
    assert sorted(f.name for f in (rxd.root / "images").iterdir()) == [
        f"{small.replace(':', '-')}.sif"
    ]
    # Only the first pulled bytes; the others found the digest's file.
    sizes = [e.get("bytes") for e in pull_events(rxd) if e["outcome"] == "pulled"]
    assert len(sizes) == 4 and sizes[0] > 0 and sizes[1:] == [None, None, None]

    # The tag moves at the registry: nothing changes here until someone refreshes it.
    copy_tag(MARKED, "rxslurm/imageset-moving:1")
    assert pull(rxd, "moving")["digest"] == small
    refreshed = pull(rxd, "moving", "--refresh")
    assert refreshed["digest"] == marked and refreshed["file"] != pulled["moving"]["file"]
    assert digests(rxd)[f"docker://{REGISTRY}/rxslurm/imageset-moving:1"] == marked
    # The other references keep theirs, and their file.
    assert pull(rxd, "same")["digest"] == small
    assert Path(pulled["one"]["file"]).is_file()
    shown = ok(rxd.rxctl("rxalice", "image", "pull", "--project", "same")).stdout
    assert shown == f"same: docker://{REGISTRY}/rxslurm/imageset-same:1 ({small}) is pulled\n"
    # A file has nothing to pull, and a viewer may not pull: one line each, nothing changed.
    ok(rxd.rxctl("rxalice", "project", "create", "local", "--image", str(BASE_IMAGE)))
    nothing = rxd.rxctl("rxalice", "image", "pull", "--project", "local")
    assert (nothing.returncode, nothing.stderr) == (
        1,
        f"Error: the image of local is the file {BASE_IMAGE}: there is nothing to pull\n",
    )
    ok(rxd.rxctl("rxalice", "project", "member", "add", "same", "rxdave", "--role", "viewer"))
    viewer = rxd.rxctl("rxdave", "image", "pull", "--project", "same", "--refresh")
    assert viewer.returncode == 1
    assert viewer.stderr == (
        "Error: set-image in project same needs role owner or manager; you are viewer\n"
    )


BUILDS = "[builds]\nenabled = true\ncpus = 1\nmem_mb = 500\ntime_limit_min = 15\n"
BUILT_DOCKERFILE = f"""\
FROM {REGISTRY}/rxslurm/busybox:1
RUN echo built-here > /BUILT-MARKER
"""


def test_a_build_set_by_a_manager_runs_after_a_restart_with_the_overlay_kept() -> None:
    """The issue's whole path: a draft built as a Slurm job, set as the project's image by a
    manager, and the restarted container runs on it with what its overlay held before."""
    plain_http = f'[pulls]\nplain_http = ["{REGISTRY}"]\n'
    with lifecycle_rxd(BUILDS + plain_http, bind=("rxalice", "rxbob")) as rxd:
        ok(rxd.rxctl("rxalice", "project", "create", "built", "--image", str(BASE_IMAGE)))
        ok(rxd.rxctl("rxalice", "project", "member", "add", "built", "rxbob", "--role", "manager"))
        ok(rxd.rxctl("rxalice", "project", "set", "built", "--dev-mode", "on"))
        ok(rxd.rxctl("rxalice", "enable", "--project", "built"))
        wait_state(rxd, "built", "running", timeout=START_TIMEOUT_S)
        exec_out(rxd, "built", "sh", "-c", "mkdir -p /opt/kept && echo before > /opt/kept/note")

        draft = rxd.root / "Dockerfile"
        draft.write_text(BUILT_DOCKERFILE)
        draft.chmod(0o644)
        ok(rxd.rxctl("rxalice", "image", "draft", "create", "--project", "built", "main",
                     "--file", str(draft)))  # fmt: skip
        started = json.loads(
            ok(
                rxd.rxctl("rxalice", "image", "build", "--project", "built", "main", "--json")
            ).stdout
        )

        def built() -> dict | None:
            now = json.loads(
                ok(
                    rxd.rxctl(
                        "rxalice",
                        "image",
                        "status",
                        "--project",
                        "built",
                        str(started["id"]),
                        "--json",
                    )
                ).stdout  # fmt: skip
            )
            return now if now["state"] in ("succeeded", "failed", "cancelled") else None

        done = wait_for(built, timeout=300, what="the build to end")
        assert done["state"] == "succeeded", done

        answer = ok(rxd.rxctl("rxbob", "image", "set", "--project", "built", f"build:{done['id']}"))
        assert answer.stdout.startswith(f"built: image set to {done['image']}\n"), answer.stdout
        assert status(rxd, "rxalice", "built")["settings_pending"] is True
        ok(rxd.rxctl("rxbob", "stop", "--project", "built"))
        wait_state(rxd, "built", "stopped")
        ok(rxd.rxctl("rxbob", "start", "--project", "built"))
        again = wait_state(rxd, "built", "running", timeout=START_TIMEOUT_S)

        assert again["image"] == done["image"] and again["settings_pending"] is False
        assert exec_out(rxd, "built", "cat", "/BUILT-MARKER", "/opt/kept/note") == (
            "built-here\nbefore\n"
        )
        ok(rxd.rxctl("rxalice", "stop", "--project", "built"))
        wait_state(rxd, "built", "stopped")
