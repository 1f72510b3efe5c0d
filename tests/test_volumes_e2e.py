"""Named volumes on the real cluster and the real Apptainer: two projects of the same owner mount
one volume, a file one container writes the other reads, and nobody outside the owning project
reads it (docs/volumes.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import ok
from tests.support.cluster import run_as
from tests.support.daemon import Rxd, running_rxd
from tests.support.lifecycle import lifecycle_config, make_project, wait_state

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("container_runtime")]

# Jobs are Slurm singletons named rx-<project>: these names are this module's own.
WRITER = "vol-writer"
READER = "vol-reader"
OTHER = "vol-other"


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    def config(root: Path) -> str:
        return lifecycle_config(root) + f'[volumes]\nroot = "{root}/volumes"\n'

    with running_rxd(config, bind=("rxalice", "rxbob", "rxdave")) as daemon:
        yield daemon
        # The containers this module started (none when only some of its tests ran).
        made = [
            p
            for p in (WRITER, READER)
            if daemon.rxctl("rxalice", "stop", "--project", p).returncode == 0
        ]
        for project in made:
            wait_state(daemon, project, "stopped", "disabled", "error", timeout=60)


def volume_list(rxd: Rxd, project: str) -> dict:
    return json.loads(
        ok(rxd.rxctl("rxalice", "volume", "list", "--project", project, "--json")).stdout
    )


def test_two_projects_of_one_owner_share_a_volume_and_a_non_member_cannot_read_it(
    rxd: Rxd, tmp_path: Path
) -> None:
    make_project(rxd, WRITER)
    make_project(rxd, READER)
    created = json.loads(
        ok(rxd.rxctl("rxalice", "volume", "create", "--project", WRITER, "shared", "--json")).stdout
    )
    folder = Path(created["path"])
    # The owning project's runtime identity (rxalice, bound) owns the folder, as a workspace.
    assert folder.stat().st_uid == int(ok(run_as("rxalice", ["id", "-u"])).stdout)
    ok(rxd.rxctl("rxalice", "project", "set", "--project", WRITER, "--volume", "shared:/data"))
    ok(rxd.rxctl("rxalice", "project", "set", "--project", READER, "--volume", "shared:/data:ro"))
    assert volume_list(rxd, WRITER)["volumes"][0]["mounted_by"] == [
        {"project": READER, "target": "/data", "read_only": True},
        {"project": WRITER, "target": "/data", "read_only": False},
    ]
    for project in (WRITER, READER):
        ok(rxd.rxctl("rxalice", "enable", "--project", project))
    for project in (WRITER, READER):
        wait_state(rxd, project, "running", timeout=300)

    written = rxd.rxctl(
        "rxalice", "exec", "--project", WRITER, "--", "sh", "-c", "echo from-writer > /data/note"
    )
    assert written.returncode == 0, written.stderr
    read = rxd.rxctl("rxalice", "exec", "--project", READER, "--", "cat", "/data/note")
    assert read.returncode == 0 and read.stdout.strip() == "from-writer", read.stderr
    # Mounted read-only in the reader.
    refused = rxd.rxctl("rxalice", "exec", "--project", READER, "--", "touch", "/data/mine")
    assert refused.returncode != 0

    # A batch step of the reader (rxctl run, as the member, outside the container) mounts it too.
    step = rxd.rxctl("rxalice", "run", "--project", READER, "--", "cat", "/data/note")
    assert step.returncode == 0 and step.stdout.strip() == "from-writer", step.stderr

    # A non-member: the folder's ACLs keep them out, and rxd does not show them the volume.
    assert run_as("rxdave", ["cat", str(folder / "note")]).returncode != 0
    assert run_as("rxdave", ["ls", str(folder)]).returncode != 0
    got = rxd.rxctl("rxdave", "volume", "get", "--project", WRITER, "shared", "note", "/tmp/x")
    assert got.returncode != 0 and "no project named" in got.stderr

    # put and get as the caller: what the owner puts, the writer's container reads.
    source = Path(ok(run_as("rxalice", ["mktemp", "-d"])).stdout.strip())
    ok(run_as("rxalice", ["sh", "-c", f"echo put-by-alice > {source}/in.txt"]))
    ok(rxd.rxctl("rxalice", "volume", "put", "--project", WRITER, "shared", f"{source}/in.txt"))
    seen = rxd.rxctl("rxalice", "exec", "--project", READER, "--", "cat", "/data/in.txt")
    assert seen.stdout.strip() == "put-by-alice", seen.stderr
    ok(
        rxd.rxctl(
            "rxalice", "volume", "get", "--project", WRITER, "shared", "note", f"{source}/out"
        )
    )
    assert ok(run_as("rxalice", ["cat", f"{source}/out"])).stdout.strip() == "from-writer"
    escape = rxd.rxctl("rxalice", "volume", "get", "--project", WRITER, "shared", "../x", "/tmp")
    assert escape.returncode != 0 and "inside the volume" in escape.stderr

    # Another owner's project may not mount it; a mounted volume is not removed.
    ok(rxd.rxctl("rxdave", "project", "create", OTHER))
    foreign = rxd.rxctl("rxdave", "project", "set", "--project", OTHER, "--volume", "shared:/d")
    assert foreign.returncode != 0 and "may not mount" in foreign.stderr
    busy = rxd.rxctl("rxalice", "volume", "rm", "--project", WRITER, "shared")
    assert busy.returncode != 0 and "unmount it first" in busy.stderr
    events = {row[0] for row in rxd.ledger_rows("SELECT action FROM events")}
    assert {"volume.created", "volume.mounted"} <= events


def test_the_owning_project_s_members_get_the_folder_by_role_and_lose_it_when_removed(
    rxd: Rxd,
) -> None:
    project = "vol-members"
    make_project(rxd, project)
    created = ok(rxd.rxctl("rxalice", "volume", "create", "--project", project, "team", "--json"))
    folder = Path(json.loads(created.stdout)["path"])
    ok(run_as("rxalice", ["sh", "-c", f"echo by-alice > {folder}/a.txt"]))
    member = ("project", "member", "add", "--project", project, "rxbob", "--role", "viewer")
    ok(rxd.rxctl("rxalice", *member))

    assert ok(run_as("rxbob", ["cat", str(folder / "a.txt")])).stdout.strip() == "by-alice"
    assert run_as("rxbob", ["touch", str(folder / "b.txt")]).returncode != 0
    ok(
        rxd.rxctl(
            "rxalice", "project", "member", "set-role", "--project", project, "rxbob", "editor"
        )
    )
    ok(run_as("rxbob", ["touch", str(folder / "b.txt")]))
    ok(rxd.rxctl("rxalice", "project", "member", "rm", "--project", project, "rxbob"))
    assert run_as("rxbob", ["cat", str(folder / "a.txt")]).returncode != 0

    removed = json.loads(
        ok(rxd.rxctl("rxalice", "volume", "rm", "--project", project, "team", "--json")).stdout
    )
    assert not folder.exists() and len(removed["quarantined"]) == 1


def test_a_mounting_project_s_runtime_identity_gets_the_folder_while_the_rule_holds(
    rxd: Rxd,
) -> None:
    owning, mounting = "vol-own", "vol-mount"
    make_project(rxd, owning)
    created = ok(rxd.rxctl("rxalice", "volume", "create", "--project", owning, "ruled", "--json"))
    folder = Path(json.loads(created.stdout)["path"])
    ok(run_as("rxalice", ["sh", "-c", f"echo data > {folder}/f.txt"]))
    # The mounting project: alice and bob own it, and it runs as bob.
    make_project(rxd, mounting)
    owner = ("project", "member", "add", "--project", mounting, "rxbob", "--role", "owner")
    ok(rxd.rxctl("rxalice", *owner))
    ok(rxd.rxctl("rxbob", "project", "run-as", "--project", mounting, "bound"))
    assert run_as("rxbob", ["cat", str(folder / "f.txt")]).returncode != 0

    ok(rxd.rxctl("rxbob", "project", "set", "--project", mounting, "--volume", "ruled:/data:ro"))
    assert ok(run_as("rxbob", ["cat", str(folder / "f.txt")])).stdout.strip() == "data"
    assert run_as("rxbob", ["touch", str(folder / "g.txt")]).returncode != 0  # :ro, r-x

    # Alice leaves the mounting project: no owner of the volume's project owns it any more.
    ok(rxd.rxctl("rxbob", "project", "member", "rm", "--project", mounting, "rxalice"))
    assert run_as("rxbob", ["cat", str(folder / "f.txt")]).returncode != 0
    listed = json.loads(
        ok(rxd.rxctl("rxbob", "volume", "list", "--project", mounting, "--json")).stdout
    )
    assert [m["allowed"] for m in listed["mounts"]] == [False]
