"""The research platform runs a one-shot command (`rxctl run-once`) as a member through its TCP
door, in one streaming answer: real rxd, real cluster, real Apptainer. The member gets the
output and the exit status; a viewer is refused before anything runs; a timeout cancels it."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import lifecycle
from tests.support.cli import ok
from tests.support.daemon import Rxd, free_port, running_rxd
from tests.support.lifecycle import ADMIN, lifecycle_config
from tests.test_platform_e2e import TOKEN
from tests.test_platform_exec_e2e import Answer, platform_lines

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("container_runtime")]

OWNER = "rxalice"
MANAGER = "rxbob"
VIEWER = "rxdave"
PROJECT = "pe-once"
# Other developers' jobs may fill the cluster for a while: a job waits that long for its node.
BUSY_CLUSTER_S = 300


@pytest.fixture(scope="module")
def platform() -> Iterator[tuple[Rxd, int]]:
    port = free_port()
    with running_rxd(
        lambda root: lifecycle_config(root) + platform_lines(root, port),
        bind=(OWNER, MANAGER, VIEWER),
    ) as daemon:
        lifecycle.make_project(daemon, PROJECT)
        for user, role in ((MANAGER, "manager"), (VIEWER, "viewer")):
            member = ("project", "member", "add", "--project", PROJECT, user, "--role", role)
            ok(daemon.rxctl(OWNER, *member))
        # The container's folder, where a one-shot's output goes, is made by its first start.
        ok(daemon.rxctl(OWNER, "enable", "--project", PROJECT))
        lifecycle.wait_state(daemon, PROJECT, "running", timeout=BUSY_CLUSTER_S)
        ok(daemon.rxctl(OWNER, "stop", "--project", PROJECT))
        lifecycle.wait_state(daemon, PROJECT, "stopped", timeout=120)
        yield daemon, port


def run_once(port: int, user: str, **body: Any) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=BUSY_CLUSTER_S + 120)
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {TOKEN}",
        "X-RX-User": user,
    }
    path = f"/v1/projects/{PROJECT}/run-once/stream"
    conn.request("POST", path, body=json.dumps(body), headers=headers)
    response = conn.getresponse()
    answer = Answer(response.status, response.getheader("Content-Type", ""), response.read())
    conn.close()
    return answer


def one_shots(rxd: Rxd) -> list[tuple[Any, ...]]:
    return rxd.ledger_rows("SELECT id, state, job_id FROM one_shot_jobs ORDER BY id", [])


def test_a_member_runs_a_one_shot_and_gets_its_output_and_exit_status(
    platform: tuple[Rxd, int],
) -> None:
    rxd, port = platform
    answer = run_once(port, MANAGER, command=["sh", "-c", "echo hello from once; exit 3"])

    assert answer.status == 200
    assert answer.stdout == b"hello from once\n"
    first, final = answer.control[0], answer.final
    assert set(first) == {"one_shot", "job_id"} and first["job_id"]
    assert final == {"exit": 3, "one_shot": first["one_shot"]}
    # It is an ordinary one-shot: ended, and audited as the member.
    assert (first["one_shot"], "exited", first["job_id"]) in one_shots(rxd)
    events = json.loads(
        ok(rxd.rxctl(ADMIN, "admin", "audit", "--project", PROJECT, "--json")).stdout
    )
    started = [e for e in events["events"] if e["action"] == "run-once.submitted"]
    assert started and started[-1]["actor"] == MANAGER


def test_a_viewer_is_refused_before_anything_runs(platform: tuple[Rxd, int]) -> None:
    rxd, port = platform
    before = one_shots(rxd)
    answer = run_once(port, VIEWER, command=["true"])
    assert answer.status == 403 and answer.error
    assert one_shots(rxd) == before


def test_bad_input_is_a_400_that_runs_nothing(platform: tuple[Rxd, int]) -> None:
    rxd, port = platform
    before = one_shots(rxd)
    for body in ({"command": ["true"], "timeout": 0}, {"command": []}, {"command": ["x"], "x": 1}):
        assert run_once(port, MANAGER, **body).status == 400, body
    assert one_shots(rxd) == before


def test_a_one_shot_past_its_timeout_is_cancelled(platform: tuple[Rxd, int]) -> None:
    rxd, port = platform
    answer = run_once(port, MANAGER, command=["sleep", "600"], timeout=20)

    assert answer.status == 200
    final = answer.final
    assert (final["code"], final["timed_out"]) == ("timeout", True)
    assert (final["one_shot"], "cancelled") in [(i, s) for i, s, _ in one_shots(rxd)]
