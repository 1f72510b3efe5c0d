"""The research platform runs commands in a project's container as a member: real rxd, real
cluster, real Apptainer, the platform's TCP door with its token."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rxslurm.protocol.exec_frames import CONTENT_TYPE, FrameReader
from tests.support.cli import ok
from tests.support.daemon import Rxd, free_port, running_rxd
from tests.support.lifecycle import ADMIN, lifecycle_config, make_project, wait_state
from tests.test_platform_e2e import TOKEN, write_token

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("container_runtime")]

OWNER = "rxalice"
MANAGER = "rxbob"
VIEWER = "rxdave"
PROJECT = "pe-main"
# Other developers' jobs may fill the cluster for a while: a wake waits that long for its node.
BUSY_CLUSTER_S = 300


def platform_lines(root: Path, port: int) -> str:
    return f'[platform]\nlisten = "127.0.0.1:{port}"\ntoken_file = "{write_token(root)}"\n'


@pytest.fixture(scope="module")
def platform() -> Iterator[tuple[Rxd, int]]:
    port = free_port()
    with running_rxd(
        lambda root: lifecycle_config(root) + platform_lines(root, port),
        bind=(OWNER, MANAGER, VIEWER),
    ) as daemon:
        try:
            yield daemon, port
        finally:
            daemon.rxctl(OWNER, "stop", "--project", PROJECT)


@pytest.fixture(scope="module")
def project(platform: tuple[Rxd, int]) -> str:
    rxd, _ = platform
    make_project(rxd, PROJECT)
    for user, role in ((MANAGER, "manager"), (VIEWER, "viewer")):
        ok(rxd.rxctl(OWNER, "project", "member", "add", "--project", PROJECT, user, "--role", role))
    ok(rxd.rxctl(OWNER, "enable", "--project", PROJECT))
    wait_state(rxd, PROJECT, "running", timeout=BUSY_CLUSTER_S)
    return PROJECT


class Answer:
    def __init__(self, status: int, content_type: str, body: bytes) -> None:
        self.status = status
        self.content_type = content_type
        self.stdout = b""
        self.stderr = b""
        self.control: list[dict[str, Any]] = []
        if content_type != CONTENT_TYPE:
            self.error = json.loads(body)["error"]
            return
        reader = FrameReader()
        for channel, payload in reader.feed(body):
            if channel == b"1":
                self.stdout += payload
            elif channel == b"2":
                self.stderr += payload
            else:
                self.control.append(json.loads(payload))
        assert not reader.pending, "the answer ended inside a record"

    @property
    def final(self) -> dict[str, Any]:
        return self.control[-1]


def platform_exec(port: int, user: str, project: str, **body: Any) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=BUSY_CLUSTER_S)
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {TOKEN}",
        "X-RX-User": user,
    }
    conn.request("POST", f"/v1/projects/{project}/exec", body=json.dumps(body), headers=headers)
    response = conn.getresponse()
    answer = Answer(response.status, response.getheader("Content-Type", ""), response.read())
    conn.close()
    return answer


def audit(rxd: Rxd, project: str) -> list[dict[str, Any]]:
    result = ok(rxd.rxctl(ADMIN, "admin", "audit", "--project", project, "--json"))
    rows: list[dict[str, Any]] = json.loads(result.stdout)["events"]
    return rows


def test_the_platform_runs_a_command_as_a_member_and_gets_its_output_and_exit_code(
    platform: tuple[Rxd, int], project: str
) -> None:
    rxd, port = platform
    script = "read line; echo out:$line; pwd; echo err >&2; exit 3"
    answer = platform_exec(port, MANAGER, project, argv=["sh", "-c", script], stdin="hello\n")
    assert answer.status == 200
    assert answer.stdout == b"out:hello\n/workspace\n"
    assert answer.stderr == b"err\n"
    assert answer.final == {"exit": 3}
    events = [e for e in audit(rxd, project) if e["action"].startswith("exec.")]
    started = [e for e in events if e["action"] == "exec.started"]
    assert (started[-1]["actor"], started[-1]["origin"]) == (MANAGER, "tcp"), events
    assert started[-1]["detail"]["door"] == "platform"
    assert started[-1]["detail"]["argv"] == ["sh", "-c", script]
    ended = [e for e in events if e["action"] == "exec.ended"]
    assert ended[-1]["actor"] == MANAGER
    assert ended[-1]["detail"]["exit"] == 3


def test_a_viewer_is_refused_with_a_reason_and_nothing_runs(
    platform: tuple[Rxd, int], project: str
) -> None:
    rxd, port = platform
    before = len(audit(rxd, project))
    answer = platform_exec(port, VIEWER, project, argv=["touch", "/workspace/viewer-was-here"])
    assert answer.status == 403
    assert answer.error["code"] == "forbidden"
    assert "exec" in answer.error["message"]
    assert not any(e["action"].startswith("exec.") for e in audit(rxd, project)[before:])


def test_a_command_past_its_timeout_is_ended_and_the_answer_says_so(
    platform: tuple[Rxd, int], project: str
) -> None:
    _, port = platform
    answer = platform_exec(
        port, OWNER, project, argv=["sh", "-c", "echo started; sleep 600"], timeout=3
    )
    assert answer.status == 200
    assert answer.stdout == b"started\n"
    assert answer.final.get("timed_out") is True
    assert answer.final.get("exit") not in (None, 0)
