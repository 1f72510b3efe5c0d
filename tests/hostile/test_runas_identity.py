"""Finding 5: a project never goes on running as someone who is no longer one of its owners.

Before the fix, a co-owner could remove (or demote) the creator and keep running and exec'ing as
the creator's Linux identity, while the creator could no longer even see the project.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from rxslurm.daemon.config import Config
from rxslurm.daemon.containers.service import ContainerService
from rxslurm.daemon.errors import Conflict
from rxslurm.daemon.identity import bindings as identities
from rxslurm.daemon.identity.actors import Actor
from rxslurm.daemon.ledger.store import Ledger
from rxslurm.daemon.ledger.timestamps import to_timestamp, utcnow
from rxslurm.daemon.projects import service as projects
from tests.hostile.helpers import IMAGE, container_daemon, uid, wait_state, workspace_of
from tests.support.cli import ok, refused
from tests.support.cluster import run_as
from tests.support.daemon import Rxd, running_rxd

CONFIG = Config()
BOB = Actor(platform_user="bob", uid=2002, user="rxbob", admin=False, origin="socket")
ADMIN = Actor(platform_user=None, uid=0, user="root", admin=True, origin="socket")
JOB = 4242


# -- the ledger's part, without Slurm or root ----------------------------------------------------


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    """Project `shared` runs as alice (rxalice) and is running; alice and bob are its owners."""
    ledger = Ledger.open(tmp_path / "ledger.db", migrate=True)
    now = to_timestamp(utcnow())
    with ledger.transaction() as db:
        for user, linux, uid in (("alice", "rxalice", 2001), ("bob", "rxbob", 2002)):
            db["platform_users"].insert({"id": user, "created_at": now})
            db["bindings"].insert(
                {
                    "platform_user_id": user,
                    "uid": uid,
                    "username": linux,
                    "bound_at": now,
                    "bound_by": "test",
                }
            )
        project_id = (
            db["projects"]
            .insert(
                {
                    "name": "shared",
                    "created_at": now,
                    "created_by": "alice",
                    "image": IMAGE,
                    "run_as": "bound",
                    "run_as_user": "alice",
                    "workspace": str(tmp_path / "ws"),
                }
            )
            .last_pk
        )
        for user in ("alice", "bob"):
            db["members"].insert(
                {
                    "project_id": project_id,
                    "platform_user_id": user,
                    "role": "owner",
                    "added_at": now,
                    "added_by": "alice",
                }
            )
        db["containers"].insert(
            {
                "project_id": project_id,
                "name": "rx-shared",
                "state": "running",
                "desired": "running",
                "runtime_user": "rxalice",
                "runtime_uid": 2001,
                "job_id": JOB,
                "instance": "rx-shared-4242",
                "node": "n1",
                "state_dir": str(tmp_path / "rx-shared"),
                "created_at": now,
                "updated_at": now,
            }
        )
    yield ledger
    ledger.close()


def project(ledger: Ledger) -> dict:
    return next(ledger.db["projects"].rows_where("name = 'shared'"))


def container(ledger: Ledger) -> dict:
    return next(ledger.db["containers"].rows)


def released_events(ledger: Ledger) -> list[dict]:
    rows = ledger.db["events"].rows_where("action = 'project.run-as-released'")
    return [json.loads(r["detail"]) for r in rows]


def assert_released(ledger: Ledger, why: str) -> None:
    assert project(ledger)["run_as_user"] is None
    row = container(ledger)
    assert (row["state"], row["desired"]) == ("stopping", "stopped")
    (event,) = released_events(ledger)
    assert event["run_as_user"] == "alice" and why in event["why"] and event["job_id"] == JOB


def test_removing_the_run_as_owner_clears_it_and_stops_the_container(ledger: Ledger) -> None:
    cancelled: list[int] = []
    projects.remove_member(ledger, CONFIG, BOB, "shared", "alice", cancel=cancelled.append)
    assert cancelled == [JOB]
    assert_released(ledger, "alice is no longer a member")


def test_demoting_the_run_as_owner_clears_it_and_stops_the_container(ledger: Ledger) -> None:
    cancelled: list[int] = []
    projects.set_member_role(
        ledger, CONFIG, BOB, "shared", "alice", "manager", cancel=cancelled.append
    )
    assert cancelled == [JOB]
    assert_released(ledger, "alice is no longer an owner")


def test_demoting_another_owner_leaves_the_run_as_user_alone(ledger: Ledger) -> None:
    alice = Actor(platform_user="alice", uid=2001, user="rxalice", admin=False, origin="socket")
    cancelled: list[int] = []
    projects.set_member_role(
        ledger, CONFIG, alice, "shared", "bob", "viewer", cancel=cancelled.append
    )
    assert cancelled == [] and released_events(ledger) == []
    assert project(ledger)["run_as_user"] == "alice" and container(ledger)["state"] == "running"


def test_unbinding_the_run_as_user_releases_every_project_that_runs_as_it(ledger: Ledger) -> None:
    cancelled: list[int] = []
    answer = identities.unbind(ledger, ADMIN, platform_user="alice", cancel=cancelled.append)
    assert answer["released"] == ["shared"] and cancelled == [JOB]
    assert_released(ledger, "alice was unbound")


def test_choosing_another_identity_stops_the_container_running_as_the_old_one(
    ledger: Ledger,
) -> None:
    cancelled: list[int] = []
    view = projects.set_run_as(ledger, CONFIG, BOB, "shared", "bound", cancel=cancelled.append)
    assert view["runtime_user"] == "rxbob" and cancelled == [JOB]
    assert container(ledger)["state"] == "stopping"


def test_enable_wake_and_exec_refuse_until_an_owner_chooses_again(ledger: Ledger) -> None:
    projects.remove_member(ledger, CONFIG, BOB, "shared", "alice")
    rt = ContainerService(ledger=ledger, config=CONFIG, scheduler=None)  # type: ignore[arg-type]
    for call in (rt.enable, rt.wake, rt.exec_target):
        with pytest.raises(Conflict) as refused_call:
            call(BOB, "shared")
        assert "rxctl project run-as --project shared bound" in refused_call.value.message
        assert refused_call.value.code == "no_run_as"


def test_exec_refuses_a_container_that_still_runs_as_the_former_identity(ledger: Ledger) -> None:
    # The stop is under way but the job still runs: nothing more may run as alice.
    projects.set_run_as(ledger, CONFIG, BOB, "shared", "bound")
    with ledger.transaction() as db:
        db["containers"].update(container(ledger)["id"], {"state": "running"})
    rt = ContainerService(ledger=ledger, config=CONFIG, scheduler=None)  # type: ignore[arg-type]
    with pytest.raises(Conflict, match="still runs as rxalice"):
        rt.exec_target(BOB, "shared")


# -- on the cluster ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    with container_daemon() as daemon:
        yield daemon


def squeue_user(job_id: int) -> str:
    import subprocess

    out = subprocess.run(
        ["squeue", "-h", "-j", str(job_id), "-o", "%u"], capture_output=True, text=True
    ).stdout
    return out.strip()


def audit_actions(rxd: Rxd, project_name: str) -> list[str]:
    rows = rxd.ledger_rows(
        "SELECT action FROM events WHERE target_id = ? ORDER BY id", [project_name]
    )
    return [r[0] for r in rows]


@pytest.mark.cluster
@pytest.mark.parametrize("how", ["removed", "demoted"])
def test_a_run_as_owner_who_leaves_takes_their_identity_along(rxd: Rxd, how: str) -> None:
    name = f"who-{how}"
    ok(rxd.rxctl("rxalice", "project", "create", name, "--image", IMAGE))
    ok(
        rxd.rxctl(
            "rxalice", "project", "member", "add", "--project", name, "rxbob", "--role", "owner"
        )
    )
    ok(rxd.rxctl("rxalice", "enable", "--project", name))
    assert wait_state(rxd, "rxbob", name, "running")["runtime_user"] == "rxalice"

    if how == "removed":
        ok(rxd.rxctl("rxbob", "project", "member", "rm", "--project", name, "rxalice"))
    else:
        ok(
            rxd.rxctl(
                "rxbob", "project", "member", "set-role", "--project", name, "rxalice", "viewer"
            )
        )
    wait_state(rxd, "rxbob", name, "stopped", timeout=60)
    assert "project.run-as-released" in audit_actions(rxd, name)
    folder = workspace_of(rxd, "rxbob", name)
    assert folder.stat().st_uid == 0  # parked: alice no longer owns it
    for args in (("enable",), ("start",), ("exec",)):
        argv = [*args, "--project", name] + (["--", "id", "-un"] if args == ("exec",) else [])
        line = refused(rxd.rxctl("rxbob", *argv), 125 if args == ("exec",) else 1)
        assert "no run-as identity" in line
        assert f"rxctl project run-as --project {name} bound" in line

    if how == "demoted":
        # Disabling does not act as alice either: her container folder goes to quarantine.
        ok(rxd.rxctl("rxbob", "disable", "--project", name))
        (old,) = (rxd.root / "containers" / ".quarantine").glob(f"rx-{name}.*")
        assert old.stat().st_uid == 0
    shown = json.loads(
        ok(rxd.rxctl("rxbob", "project", "run-as", "--project", name, "bound", "--json")).stdout
    )
    assert shown["runtime_user"] == "rxbob"
    assert folder.stat().st_uid == uid("rxbob")  # handed over to the new identity
    if how == "removed":
        assert run_as("rxalice", ["ls", str(folder)]).returncode != 0
    ok(rxd.rxctl("rxbob", "enable" if how == "demoted" else "start", "--project", name))
    running = wait_state(rxd, "rxbob", name, "running")
    assert running["runtime_user"] == "rxbob" and squeue_user(running["job_id"]) == "rxbob"
    # Root inside (--fakeroot) is the runtime user outside: what it writes is rxbob's on the host.
    ok(rxd.rxctl("rxbob", "exec", "--project", name, "--", "touch", "/workspace/written-by"))
    assert (folder / "written-by").stat().st_uid == uid("rxbob")
    ok(rxd.rxctl("rxbob", "disable", "--project", name))


@pytest.mark.cluster
def test_unbinding_the_run_as_user_parks_the_workspace_and_forgets_the_identity() -> None:
    with running_rxd('[identity]\nmode = "platform"\n') as daemon:
        for platform_user, linux_user in (("alice", "rxalice"), ("bob", "rxbob")):
            ok(daemon.rxctl("rxop", "admin", "bind", platform_user, linux_user))
        ok(daemon.rxctl("rxalice", "project", "create", "unbound"))
        ok(
            daemon.rxctl(
                "rxalice",
                "project",
                "member",
                "add",
                "--project",
                "unbound",
                "bob",
                "--role",
                "owner",
            )
        )
        folder = workspace_of(daemon, "rxalice", "unbound")
        assert folder.stat().st_uid == uid("rxalice")

        answer = json.loads(ok(daemon.rxctl("rxop", "admin", "unbind", "alice", "--json")).stdout)
        assert answer["released"] == ["unbound"]
        assert folder.stat().st_uid == 0  # parked: the Linux account no longer owns it
        assert run_as("rxalice", ["ls", str(folder)]).returncode != 0
        assert ok(run_as("rxbob", ["ls", str(folder)]))  # a member keeps access
        shown = json.loads(
            ok(daemon.rxctl("rxbob", "project", "show", "--project", "unbound", "--json")).stdout
        )
        assert shown["run_as_user"] is None and shown["runtime_user"] is None
        # Bound again, alice does not silently become the project's identity again.
        ok(daemon.rxctl("rxop", "admin", "bind", "alice", "rxalice"))
        shown = json.loads(
            ok(daemon.rxctl("rxbob", "project", "show", "--project", "unbound", "--json")).stdout
        )
        assert shown["run_as_user"] is None
