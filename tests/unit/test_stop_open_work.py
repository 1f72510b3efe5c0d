"""A stop with open work: refused (409) naming the sessions and detached commands unless forced;
`rxctl stop --force` and `rxctl stop --all` without rxd."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner

from rxslurm.cli.client import ClientError
from rxslurm.cli.commands_container import stop
from rxslurm.daemon.api import routes_containers
from rxslurm.daemon.api.app import make_app
from rxslurm.daemon.api.context import DAEMON
from rxslurm.daemon.containers.open_work import OpenSession, OpenWork, RunningCommand
from rxslurm.daemon.containers.sessions import DetachedCommands, LiveSession
from rxslurm.daemon.errors import Conflict
from rxslurm.sdk import Container
from tests.unit.test_reconciler_edges import OWNER, World, running, world
from tests.unit.test_sdk import StandInClient


def with_commands(w: World) -> DetachedCommands:
    return DetachedCommands(w.service, w.reconciler.sessions)


def open_shell(commands: DetachedCommands, w: World, job_id: int, who: str = "ada") -> None:
    commands.live.add(
        LiveSession(w.row("alpha")["id"], job_id, "rx-exec-11111111", who, ("bash",), "t", True)
    )


def detached(w: World, job_id: int, command_id: str, argv: list[str], state: str) -> None:
    row = w.row("alpha")
    with w.ledger.transaction() as db:
        db.table("exec_sessions").insert(
            {
                "id": command_id,
                "container_id": row["id"],
                "project_id": row["project_id"],
                "job_id": job_id,
                "step_name": f"rx-exec-{command_id}",
                "argv": json.dumps(argv),
                "started_by": "ada",
                "started_at": "2026-12-01T00:00:00Z",
                "state": state,
            }
        )


def test_a_stop_with_an_open_shell_and_a_detached_command_is_refused_naming_them(
    tmp_path: Path,
) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    job_id = running(w, "alpha")
    commands = with_commands(w)
    open_shell(commands, w, job_id)
    detached(w, job_id, "0a1b2c3d", ["/usr/bin/python", "train.py"], "running")
    detached(w, job_id, "0a1b2c3e", ["true"], "ended")
    detached(w, job_id - 1, "0a1b2c3f", ["sleep", "9"], "running")  # an older job's: ended too

    with pytest.raises(Conflict) as refused:
        w.service.stop(OWNER, "alpha")

    message = refused.value.message
    assert "1 open session (shell by ada)" in message
    assert "1 running detached command (0a1b2c3d python by ada)" in message
    assert (
        "0a1b2c3e" not in message
        and "0a1b2c3f" not in message
        and "--force" in message
        and "\n" not in message
    )
    assert w.state("alpha") == "running" and w.row("alpha")["desired"] != "stopped"
    assert w.slurm.cancelled == []


def test_a_forced_stop_ends_the_open_work_with_the_job(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    job_id = running(w, "alpha")
    open_shell(with_commands(w), w, job_id)

    view = w.service.stop(OWNER, "alpha", force=True)

    assert view.state == "stopping"
    assert w.slurm.cancelled == [job_id]


def test_a_stop_with_nothing_open_needs_no_force(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    job_id = running(w, "alpha")
    with_commands(w)

    assert w.service.stop(OWNER, "alpha").state == "stopping"
    assert w.slurm.cancelled == [job_id]


def test_an_admin_stop_does_not_ask_for_force(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    job_id = running(w, "alpha")
    open_shell(with_commands(w), w, job_id)

    w.service.admin_stop(replace(OWNER, admin=True), "alpha")

    assert w.slurm.cancelled == [job_id]


def test_the_line_counts_everything_and_names_a_few() -> None:
    work = OpenWork(
        sessions=(OpenSession("exec", "bea"),),
        commands=tuple(RunningCommand(f"0000000{i}", "sleep", "ada") for i in range(5)),
    )

    line = work.describe()

    assert line.startswith("1 open session (exec by bea) and 5 running detached commands (")
    assert line.endswith(", and 2 more)")
    assert not OpenWork() and OpenWork().describe() == ""


# -- rxctl stop, without rxd ------------------------------------------------------------------


class FakeClient:
    door = None
    path = "/nowhere/rxd.sock"

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, str, dict[str, Any] | None]] = []

    def get(self, route: str) -> Any:
        self.asked.append(("GET", route, None))
        return self.answers[route]

    def post(self, route: str, body: dict[str, Any] | None = None) -> Any:
        self.asked.append(("POST", route, body))
        answer = self.answers[route]
        if isinstance(answer, Exception):
            raise answer
        return answer


def stopping(project: str) -> dict[str, Any]:
    return {"project": project, "state": "stopping", "reason": "stopped by user"}


def test_rxctl_stop_force_sends_force_true() -> None:
    client = FakeClient({"/v1/projects/alpha/stop": stopping("alpha")})

    result = CliRunner().invoke(stop, ["--project", "alpha", "--force"], obj=client)

    assert result.exit_code == 0, result.output
    assert client.asked == [("POST", "/v1/projects/alpha/stop", {"force": True})]
    assert "alpha: stopping" in result.output


def test_rxctl_stop_all_stops_only_the_callers_awake_containers_it_may_stop() -> None:
    mine = [
        {"project": "alpha", "role": "owner", "state": "running"},
        {"project": "beta", "role": "manager", "state": "waiting"},
        {"project": "gamma", "role": "viewer", "state": "running"},
        {"project": "delta", "role": "owner", "state": "stopped"},
        {"project": "eps", "role": "owner", "state": "running"},
    ]
    client = FakeClient(
        {
            "/v1/containers": {"containers": mine},
            "/v1/projects/alpha/stop": stopping("alpha"),
            "/v1/projects/beta/stop": stopping("beta"),
            "/v1/projects/eps/stop": ClientError("eps has 1 open session (exec by ada)"),
        }
    )

    result = CliRunner().invoke(stop, ["--all"], obj=client)

    posted = [route for method, route, _ in client.asked if method == "POST"]
    assert posted == [
        "/v1/projects/alpha/stop",
        "/v1/projects/beta/stop",
        "/v1/projects/eps/stop",
    ]
    lines = result.output.splitlines()
    assert lines[0].startswith("alpha: stopping") and lines[1].startswith("beta: stopping")
    assert lines[2] == "eps: not stopped: eps has 1 open session (exec by ada)"
    assert result.exit_code == 1


def test_rxctl_stop_all_with_a_project_is_a_usage_error_that_sends_nothing() -> None:
    client = FakeClient({})

    result = CliRunner().invoke(stop, ["--all", "--project", "alpha"], obj=client)

    assert result.exit_code == 2 and client.asked == []


# -- the API stop -----------------------------------------------------------------------------


@web.middleware
async def as_owner(request: web.Request, handler: Any) -> web.StreamResponse:
    request["actor"] = OWNER
    return await handler(request)


def post(w: World, route: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    app = make_app(
        routes_containers.routes, {DAEMON: SimpleNamespace(containers=w.service)}, identify=as_owner
    )

    async def run() -> tuple[int, dict[str, Any]]:
        async with TestClient(TestServer(app)) as client:
            response = await client.post(route, json=body)
            return response.status, await response.json()

    return asyncio.run(run())


def test_the_api_stop_answers_409_with_open_work_and_stops_with_force_true(
    tmp_path: Path,
) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    job_id = running(w, "alpha")
    open_shell(with_commands(w), w, job_id)

    status, refused = post(w, "/v1/projects/alpha/stop")
    assert status == 409 and "1 open session (shell by ada)" in refused["error"]["message"]
    assert w.slurm.cancelled == []

    status, answer = post(w, "/v1/projects/alpha/stop", {"force": True})
    assert status == 200 and answer["state"] == "stopping"
    assert w.slurm.cancelled == [job_id]


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/projects/alpha/stop", {"force": "yes"}),
        ("/v1/projects/alpha/stop", {"force": 1}),
        ("/v1/projects/alpha/start", {"force": True}),
        ("/v1/projects/alpha/stop", {"forse": True}),
    ],
)
def test_a_bad_force_is_a_400_that_changes_nothing(
    tmp_path: Path, route: str, body: dict[str, Any]
) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    running(w, "alpha")

    status, answer = post(w, route, body)

    assert status == 400, answer
    assert w.state("alpha") == "running" and w.slurm.cancelled == []


def test_the_sdks_stop_sends_force_only_when_asked() -> None:
    class Stopped(StandInClient):
        def request(self, method: str, path: str, body: Any = None) -> Any:
            super().request(method, path, body)
            return {"project": "alpha", "name": "rx-alpha", "state": "stopped"}

    fake = Stopped()
    box = Container("alpha")
    box._client = fake  # type: ignore[assignment]

    box.stop()
    box.stop(force=True)

    assert [(p, b) for m, p, b in fake.requests if m == "POST"] == [
        ("/v1/projects/alpha/stop", None),
        ("/v1/projects/alpha/stop", {"force": True}),
    ]
