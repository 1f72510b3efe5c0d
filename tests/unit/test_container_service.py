"""The container service's commands on a temp-dir ledger with fake ports: one authorization
per command, typed views, the quota commands' side effects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rxslurm.daemon.containers import service as service_module
from rxslurm.daemon.errors import Conflict, NotFound
from tests.unit.test_reconciler_edges import OWNER, world


@pytest.fixture
def authorizations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = service_module.authorize

    def counting(db: Any, actor: Any, project: str, action: Any) -> Any:
        seen.append(str(action))
        return real(db, actor, project, action)

    monkeypatch.setattr(service_module, "authorize", counting)
    return seen


@pytest.mark.parametrize("command", ["wake", "stop", "status"])
def test_a_command_authorizes_once(tmp_path: Path, authorizations: list[str], command: str) -> None:
    w = world(tmp_path, ("alpha", "stopped"))

    view = getattr(w.service, command)(OWNER, "alpha")

    assert len(authorizations) == 1, authorizations
    assert view.project == "alpha" and view.role == "owner"


def test_retry_authorizes_once_and_starts_the_container_again(
    tmp_path: Path, authorizations: list[str]
) -> None:
    w = world(tmp_path, ("alpha", "error"))

    view = w.service.retry(OWNER, "alpha")

    assert authorizations == ["retry"]
    assert view.state == "starting" and view.job_id == w.slurm.of("rx-alpha")[0]


def test_an_exec_that_wakes_and_waits_authorizes_once(
    tmp_path: Path, authorizations: list[str]
) -> None:
    # The exec server's sequence: authorize, find no running container, wake, look again.
    w = world(tmp_path, ("alpha", "stopped"))

    access = w.service.authorize_exec(OWNER, "alpha")
    assert w.service.target_of(access) is None
    w.service.wake_for(access)
    view = w.service.view_of(access)

    assert authorizations == ["exec"]
    assert view.state == "starting" and view.job_id == w.slurm.of("rx-alpha")[0]


def test_an_exec_access_still_sees_the_project_deleted_meanwhile(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    access = w.service.authorize_exec(OWNER, "alpha")
    with w.ledger.transaction() as db:
        db.execute("DELETE FROM containers")
        db.execute("DELETE FROM members")
        db.execute("DELETE FROM projects")

    with pytest.raises(Conflict, match="deleted meanwhile"):
        w.service.target_of(access)


def test_a_wake_answers_the_typed_view_the_api_shows(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "stopped"))

    view = w.service.wake(OWNER, "alpha")

    shown = view.to_dict()
    assert shown["state"] == "starting" and shown["job_id"] == view.job_id
    assert "container_id" not in shown and "state_unknown" not in shown
    assert isinstance(shown["fixed_mounts"], list)


def test_an_error_container_is_not_woken_but_retried(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "error"))

    with pytest.raises(Conflict, match="is in error"):
        w.service.wake(OWNER, "alpha")
    assert w.slurm.submitted == []


def test_a_stranger_cannot_see_the_project(tmp_path: Path) -> None:
    from rxslurm.daemon.identity.actors import Actor

    w = world(tmp_path, ("alpha", "stopped"))
    stranger = Actor(platform_user="eve", uid=4242, user="eve", admin=False, origin="socket")

    with pytest.raises(NotFound):
        w.service.wake(stranger, "alpha")
    assert w.slurm.submitted == []


def test_setting_a_quota_is_audited_mirrored_and_looks_at_the_queue(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    pokes: list[bool] = []
    w.service.poke = lambda: pokes.append(True)
    w.service.mirror_quotas = lambda: [{"qos": "rx-gpu", "action": "created"}]
    admin = OWNER.__class__(platform_user="ada", uid=0, user="root", admin=True, origin="socket")
    values = {"partition": "gpu", "scope": "deployment", "subject": "", "max_gpus": 2}

    quota = w.service.set_quota(admin, values)

    assert quota["mirrored"] == [{"qos": "rx-gpu", "action": "created"}] and pokes
    assert [q["id"] for q in w.service.quota_views()] == [quota["id"]]
    actions = [e["action"] for e in w.ledger.db.table("events").rows_where(order_by="id")]
    assert actions[-1] == "quota.set"

    removed = w.service.remove_quota(admin, quota["id"])

    assert removed["removed"]["id"] == quota["id"] and w.service.quota_views() == []
    actions = [e["action"] for e in w.ledger.db.table("events").rows_where(order_by="id")]
    assert actions[-1] == "quota.removed"
