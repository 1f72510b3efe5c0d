"""Quotas and leases (quotas/leases.py) on a real ledger: fit, bottleneck words, queue order."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rxslurm.daemon.config import Config
from rxslurm.daemon.containers.service import ContainerService
from rxslurm.daemon.containers.states import State, change_state
from rxslurm.daemon.errors import BadRequest, NotFound
from rxslurm.daemon.ledger.store import Ledger
from rxslurm.daemon.ledger.timestamps import to_timestamp, utcnow
from rxslurm.daemon.quotas import leases as quotas

PARTITIONS = {"cpu", "gpu"}


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    ledger = Ledger.open(tmp_path / "state" / "ledger.db", migrate=True)
    yield ledger
    ledger.close()


def container(
    ledger: Ledger,
    project: str,
    user: str = "rxalice",
    *,
    gpus: int = 1,
    partition: str = "gpu",
    state: State = State.STOPPED,
) -> int:
    """A project with an enabled container in `state`; returns the container id."""
    now = to_timestamp(utcnow())
    with ledger.transaction() as db:
        if not db["platform_users"].count_where("id = ?", [user]):
            db["platform_users"].insert({"id": user, "created_at": now})
        project_id = (
            db["projects"]
            .insert(
                {
                    "name": project,
                    "created_at": now,
                    "created_by": user,
                    "gpus": gpus,
                    "partition": partition,
                }
            )
            .last_pk
        )
        return (
            db["containers"]
            .insert(
                {
                    "project_id": project_id,
                    "name": f"rx-{project}",
                    "state": state.value,
                    "runtime_user": user,
                    "created_at": now,
                    "updated_at": now,
                }
            )
            .last_pk
        )


def request(project: str, user: str = "rxalice", gpus: int = 1, **more: Any) -> quotas.Request:
    values = {"partition": "gpu", "cpus": 1, "mem_mb": 0, **more}
    return quotas.Request(project=project, linux_user=user, gpus=gpus, **values)


def set_quota(ledger: Ledger, **body: Any) -> dict[str, Any]:
    with ledger.transaction() as db:
        return quotas.set_quota(db, quotas.parse_quota(body, PARTITIONS), "root")


def hold(ledger: Ledger, project: str, user: str = "rxalice", gpus: int = 1, **more: Any) -> int:
    """A running container of `project` holding a lease."""
    cid = container(ledger, project, user, gpus=gpus, state=State.RUNNING)
    with ledger.transaction() as db:
        quotas.acquire(db, cid, request(project, user, gpus, **more))
    return cid


def bottleneck(ledger: Ledger, req: quotas.Request) -> str | None:
    with ledger.read() as db:
        return quotas.bottleneck(db, req)


# -- fitting and the bottleneck in words -------------------------------------------------------


def test_without_quotas_everything_fits(ledger: Ledger) -> None:
    hold(ledger, "alpha", gpus=2)
    assert bottleneck(ledger, request("beta", gpus=6)) is None


def test_deployment_quota_names_the_limit_and_the_holders(ledger: Ledger) -> None:
    set_quota(ledger, partition="gpu", max_gpus=4)
    hold(ledger, "alpha", gpus=2)
    hold(ledger, "beta", "rxbob", gpus=2)
    assert bottleneck(ledger, request("gamma")) == (
        "partition gpu: deployment quota 4 GPUs, 4 in use by alpha (2), beta (2); "
        "this container needs 1"
    )


def test_a_request_that_fits_exactly_is_allowed(ledger: Ledger) -> None:
    set_quota(ledger, partition="gpu", max_gpus=4)
    hold(ledger, "alpha", gpus=2)
    assert bottleneck(ledger, request("beta", gpus=2)) is None
    assert bottleneck(ledger, request("beta", gpus=3)) is not None


def test_quotas_count_only_their_partition(ledger: Ledger) -> None:
    set_quota(ledger, partition="gpu", max_gpus=1)
    hold(ledger, "alpha", partition="cpu")
    assert bottleneck(ledger, request("beta")) is None
    assert bottleneck(ledger, request("gamma", partition="cpu", gpus=5)) is None


def test_project_quota_counts_only_that_project(ledger: Ledger) -> None:
    set_quota(ledger, partition="gpu", scope="project", subject="alpha", max_gpus=1)
    hold(ledger, "alpha")
    hold(ledger, "other", gpus=3)
    assert bottleneck(ledger, request("alpha")) == (
        "partition gpu: project alpha's quota 1 GPUs, 1 in use by alpha (1); this container needs 1"
    )
    assert bottleneck(ledger, request("beta")) is None


def test_user_quota_counts_the_linux_user_across_projects(ledger: Ledger) -> None:
    set_quota(ledger, partition="gpu", scope="user", subject="rxbob", max_gpus=2)
    hold(ledger, "b1", "rxbob")
    hold(ledger, "b2", "rxbob")
    hold(ledger, "a1", "rxalice", gpus=2)
    assert bottleneck(ledger, request("b3", "rxbob")) == (
        "partition gpu: user rxbob's quota 2 GPUs, 2 in use by b1 (1), b2 (1); "
        "this container needs 1"
    )
    assert bottleneck(ledger, request("a2", "rxalice")) is None


def test_user_quota_on_cpus_and_memory(ledger: Ledger) -> None:
    set_quota(ledger, partition="gpu", scope="user", subject="rxbob", max_cpus=4, max_mem_mb=8000)
    hold(ledger, "b1", "rxbob", cpus=3, mem_mb=6000)
    assert bottleneck(ledger, request("b2", "rxbob", cpus=2)) == (
        "partition gpu: user rxbob's quota 4 CPUs, 3 in use by b1 (3); this container needs 2"
    )
    assert bottleneck(ledger, request("b2", "rxbob", cpus=1, mem_mb=4000)) == (
        "partition gpu: user rxbob's quota 8000 MB of memory, 6000 in use by b1 (6000); "
        "this container needs 4000"
    )
    assert bottleneck(ledger, request("b2", "rxbob", cpus=1, mem_mb=2000)) is None


def test_max_containers_counts_running_containers_whatever_they_ask(ledger: Ledger) -> None:
    set_quota(ledger, partition="gpu", scope="user", subject="rxbob", max_containers=2)
    hold(ledger, "b1", "rxbob", gpus=0)
    hold(ledger, "b2", "rxbob", gpus=0)
    assert bottleneck(ledger, request("b3", "rxbob", gpus=0)) == (
        "partition gpu: user rxbob's quota 2 running containers, 2 in use by b1, b2"
    )


def test_the_first_quota_that_does_not_fit_is_named(ledger: Ledger) -> None:
    set_quota(ledger, partition="gpu", max_gpus=10)
    set_quota(ledger, partition="gpu", scope="user", subject="rxalice", max_gpus=1)
    hold(ledger, "alpha")
    assert "user rxalice's quota 1 GPUs" in (bottleneck(ledger, request("beta")) or "")


def test_zero_means_no_limit_of_that_kind(ledger: Ledger) -> None:
    set_quota(ledger, partition="gpu", max_gpus=1, max_cpus=0)
    hold(ledger, "alpha", gpus=0, cpus=100)
    assert bottleneck(ledger, request("beta", gpus=1, cpus=100)) is None


# -- leases ------------------------------------------------------------------------------------


def test_a_resting_container_releases_its_lease(ledger: Ledger) -> None:
    set_quota(ledger, partition="gpu", max_gpus=1)
    cid = hold(ledger, "alpha")
    assert bottleneck(ledger, request("beta")) is not None
    with ledger.transaction() as db:
        change_state(
            db, cid, State.STOPPED, allowed_from=[State.RUNNING], actor="rxd", origin="test"
        )
    with ledger.read() as db:
        assert db["leases"].count == 0
    assert bottleneck(ledger, request("beta")) is None


def test_acquire_again_replaces_the_lease(ledger: Ledger) -> None:
    cid = hold(ledger, "alpha")
    with ledger.transaction() as db:
        quotas.acquire(db, cid, request("alpha", gpus=2))
        assert [r["gpus"] for r in db["leases"].rows] == [2]


# -- queue order -------------------------------------------------------------------------------


def test_hold_back_serves_first_come_first_per_quota(ledger: Ledger) -> None:
    set_quota(ledger, partition="gpu", max_gpus=2)
    hold(ledger, "alpha")
    held: dict[int, list[str]] = {}
    with ledger.read() as db:
        # The first waiter needs 2 and does not fit; a later one needing 1 (which would fit)
        # must wait behind it, or a large request would starve.
        big = quotas.hold_back(db, held, request("big", gpus=2))
        small = quotas.hold_back(db, held, request("small", gpus=1))
    assert big == (
        "partition gpu: deployment quota 2 GPUs, 1 in use by alpha (1); this container needs 2"
    )
    assert small == "partition gpu: queued behind big for the deployment quota"


def test_hold_back_lets_others_pass_a_user_who_is_at_their_own_limit(ledger: Ledger) -> None:
    set_quota(ledger, partition="gpu", max_gpus=4)
    set_quota(ledger, partition="gpu", scope="user", subject="rxbob", max_gpus=1)
    hold(ledger, "b1", "rxbob")
    held: dict[int, list[str]] = {}
    with ledger.read() as db:
        bob = quotas.hold_back(db, held, request("b2", "rxbob"))
        alice = quotas.hold_back(db, held, request("a1", "rxalice"))
        bob_again = quotas.hold_back(db, held, request("b3", "rxbob"))
    assert bob is not None and "user rxbob's quota" in bob
    assert alice is None
    assert bob_again == "partition gpu: queued behind b2 for the user rxbob's quota"


def test_hold_all_keeps_room_for_a_waiter_that_fits(ledger: Ledger) -> None:
    set_quota(ledger, partition="gpu", max_gpus=2)
    held: dict[int, list[str]] = {}
    with ledger.read() as db:
        first = request("first")
        assert quotas.hold_back(db, held, first) is None
        quotas.hold_all(db, held, first)
        assert quotas.hold_back(db, held, request("second")) == (
            "partition gpu: queued behind first for the deployment quota"
        )
        assert quotas.hold_back(db, held, request("elsewhere", partition="cpu")) is None


def runtime(ledger: Ledger) -> ContainerService:
    return ContainerService(ledger, Config(), scheduler=None)  # type: ignore[arg-type]


def queue(ledger: Ledger, cid: int, minute: int) -> None:
    with ledger.transaction() as db:
        db["containers"].update(
            cid,
            {"state": State.WAITING.value, "queued_at": f"2024-05-01T12:{minute:02d}:00.000000Z"},
        )


def test_queued_lists_waiting_containers_in_the_order_they_came(ledger: Ledger) -> None:
    late = container(ledger, "late")
    early = container(ledger, "early")
    container(ledger, "idle")
    queue(ledger, late, 30)
    queue(ledger, early, 10)
    with ledger.read() as db:
        found = runtime(ledger).queued(db, "cpu")
    assert [(row["id"], req.project, req.partition) for row, req in found] == [
        (early, "early", "gpu"),
        (late, "late", "gpu"),
    ]


def test_a_wake_does_not_jump_the_queue(ledger: Ledger) -> None:
    set_quota(ledger, partition="gpu", max_gpus=2)
    hold(ledger, "alpha")
    waiting = container(ledger, "waiting", gpus=2)
    queue(ledger, waiting, 0)
    newcomer = container(ledger, "newcomer")
    rt = runtime(ledger)
    with ledger.read() as db:
        # One GPU is free and the newcomer needs one, but "waiting" came first.
        assert rt.admission(db, newcomer, request("newcomer"), "cpu") == (
            "partition gpu: queued behind waiting for the deployment quota"
        )
        # The waiting container itself is measured against the quota alone.
        assert "2 GPUs, 1 in use by alpha" in (
            rt.admission(db, waiting, request("waiting", gpus=2), "cpu") or ""
        )


def test_a_wake_on_another_partition_goes_past_the_queue(ledger: Ledger) -> None:
    set_quota(ledger, partition="gpu", max_gpus=1)
    hold(ledger, "alpha")
    waiting = container(ledger, "waiting")
    queue(ledger, waiting, 0)
    other = container(ledger, "other", partition="cpu")
    with ledger.read() as db:
        assert (
            runtime(ledger).admission(db, other, request("other", partition="cpu"), "cpu") is None
        )


# -- admin: parsing, setting, removing, viewing ------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"partition": "nope", "max_gpus": 1}, "unknown partition 'nope'; Slurm has: cpu, gpu"),
        ({"partition": "gpu", "scope": "team", "max_gpus": 1}, "scope must be one of"),
        ({"partition": "gpu", "subject": "x", "max_gpus": 1}, "a deployment quota has no subject"),
        ({"partition": "gpu", "scope": "user", "max_gpus": 1}, "a user quota needs the user's"),
        ({"partition": "gpu", "max_gpus": -1}, "max_gpus must be a whole number >= 0"),
        ({"partition": "gpu", "max_cpus": True}, "max_cpus must be a whole number >= 0"),
        ({"partition": "gpu", "max_gpus": 1, "mirror_qos": "yes"}, "mirror_qos must be true"),
        ({"partition": "gpu"}, "a quota needs at least one limit"),
        (
            {"partition": "gpu", "scope": "project", "subject": "a\nb", "max_gpus": 1},
            "a project quota needs",
        ),
    ],
)
def test_parse_quota_refuses(body: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest) as info:
        quotas.parse_quota(body, PARTITIONS)
    assert str(info.value).startswith(message)


def test_set_quota_again_replaces_the_limits(ledger: Ledger) -> None:
    first = set_quota(ledger, partition="gpu", scope="user", subject="rxbob", max_gpus=2)
    again = set_quota(ledger, partition="gpu", scope="user", subject="rxbob", max_containers=1)
    assert again["id"] == first["id"]
    assert (again["max_gpus"], again["max_containers"]) == (0, 1)
    with ledger.read() as db:
        assert db["quotas"].count == 1


def test_remove_quota(ledger: Ledger) -> None:
    quota = set_quota(ledger, partition="gpu", max_gpus=2)
    with ledger.transaction() as db:
        assert quotas.remove_quota(db, quota["id"])["max_gpus"] == 2
    with ledger.transaction() as db, pytest.raises(NotFound):
        quotas.remove_quota(db, quota["id"])


def test_quota_view_shows_use_and_holders(ledger: Ledger) -> None:
    quota = set_quota(ledger, partition="gpu", scope="user", subject="rxbob", max_gpus=3)
    hold(ledger, "b1", "rxbob", gpus=2, cpus=2, mem_mb=100)
    hold(ledger, "a1", "rxalice")
    with ledger.read() as db:
        view = quotas.quota_view(db, quota)
    assert view["in_use"] == {"gpus": 2, "cpus": 2, "mem_mb": 100, "containers": 1}
    assert view["holders"] == ["b1"]
    assert view["mirror_qos"] is False
