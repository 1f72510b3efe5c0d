"""A service's restart policy without Slurm: the setting as rxd reads it, what the holder is
asked for, and what the reconciler makes of the holder's restart reports (status, reason,
history). tests/test_real_apptainer.py runs the holder's restarts; tests/test_service_e2e.py
the whole of it on the cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.daemon.config import ConfigError, parse_config
from rxslurm.daemon.containers.service_reports import (
    ServiceReport,
    parse_service_report,
    service_reason,
)
from rxslurm.daemon.errors import BadRequest
from rxslurm.daemon.settings import Settings, apply_changes, check_static, service_restarts
from tests.unit.test_reconciler_edges import OWNER, World, world

SERVICE = json.dumps(["python3", "-m", "http.server"])


@pytest.mark.parametrize(
    ("policy", "restarts"),
    [("", 0), ("never", 0), ("on-failure", 3), ("on-failure:1", 1), ("on-failure:100", 100)],
)
def test_a_policy_is_how_many_restarts(policy: str, restarts: int) -> None:
    check_static(apply_changes(Settings(), {"restart": policy}))
    assert service_restarts(policy) == restarts


@pytest.mark.parametrize(
    "policy",
    [
        "always",
        "on-failure:0",
        "on-failure:101",
        "on-failure:",
        "never:2",
        "on-failure:-1",
        "on-failure:3\n",
        "ON-FAILURE",
        "on-failure:٣",
    ],
)
def test_any_other_policy_is_refused(policy: str) -> None:
    with pytest.raises(BadRequest, match="restart"):
        check_static(apply_changes(Settings(), {"restart": policy}))


def test_the_deployment_has_no_default_policy() -> None:
    with pytest.raises(ConfigError, match="defaults.restart is a project's own setting"):
        parse_config({"defaults": {"restart": "on-failure"}})


def test_the_holder_is_asked_for_the_policys_restarts_only_with_a_service(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"), service=SERVICE, port=8000, restart="on-failure:2")
    w.clock.advance(w.service.config.slurm.timeout + 6)
    w.reconcile()
    assert w.runtime.holders[-1].restarts == 2
    bare = world(tmp_path / "b", ("beta", "starting"), restart="on-failure:2")
    bare.clock.advance(bare.service.config.slurm.timeout + 6)
    bare.reconcile()
    assert bare.runtime.holders[-1].restarts == 0


@given(st.text(max_size=80))
def test_any_line_is_a_report_or_none(line: str) -> None:
    report = parse_service_report(line)
    if report is not None:
        assert report.kind in ("up", "restarting", "exited") and report.restarts >= 0
        reason = service_reason(report)
        assert reason is None or "\n" not in reason


def test_reports_as_the_holder_writes_them() -> None:
    assert parse_service_report("running rx-a-7 service 8000") == ServiceReport("up", "", 0, "")
    assert parse_service_report("running rx-a-7 service-restarting 1") == ServiceReport(
        "restarting", "1", 0, ""
    )
    assert parse_service_report("running rx-a-7 service 8000 restarts 2 1") == ServiceReport(
        "up", "", 2, "1"
    )
    assert parse_service_report("running rx-a-7 service-exited 1 restarts 3 1") == ServiceReport(
        "exited", "1", 3, "1"
    )
    assert parse_service_report("running rx-a-7") is None


def container_events(w: World) -> list[dict[str, Any]]:
    return [dict(r) for r in w.ledger.db.table("events").rows_where("target_type = 'container'")]


def test_restarts_show_in_status_reason_and_history(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"), service=SERVICE, port=8000, restart="on-failure:2")
    w.set("alpha", settings=json.dumps({"effective": {"port": 8000}}))
    job_id = w.add_job("alpha", "RUNNING")
    instance = f"rx-alpha-{job_id}"
    w.runtime.report(job_id, f"running {instance} service 8000")
    w.reconcile()
    assert w.service.status(OWNER, "alpha").service_restarts == 0

    w.runtime.report(job_id, f"running {instance} service-restarting 1")
    assert w.reconcile() == 1
    view = w.service.status(OWNER, "alpha")
    assert view.service is None  # nothing listens while it waits
    assert view.reason == (
        "the service failed (status 1) and is restarted soon; see `rxctl logs --service`"
    )

    w.runtime.report(job_id, f"running {instance} service 8000 restarts 1 1")
    assert w.reconcile() == 1
    view = w.service.status(OWNER, "alpha")
    assert (view.service, view.service_restarts) == ("n1:8000", 1)
    assert view.reason == "the service was restarted once (last exit status 1)"
    assert w.reconcile() == 0  # said once

    w.runtime.report(job_id, f"running {instance} service-exited 1 restarts 2 1")
    w.reconcile()
    view = w.service.status(OWNER, "alpha")
    assert view.service_restarts == 2 and view.service is None
    assert view.reason == (
        "the service exited (status 1) after it was restarted 2 times; see `rxctl logs`"
    )
    assert w.row("alpha")["last_error"] == view.reason
    # Each step is in the container's history, with its reason.
    reasons = [json.loads(e["detail"] or "{}").get("reason") for e in container_events(w)]
    assert "the service was restarted once (last exit status 1)" in reasons
    assert view.reason in reasons
