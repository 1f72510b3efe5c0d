"""The research platform runs commands in a project's container as a member: real rxd, real
cluster, real Apptainer, the platform's TCP door with its token."""

from __future__ import annotations

import http.client
import json
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rxslurm.protocol.exec_frames import CONTENT_TYPE, FrameReader
from tests.support.cli import ok
from tests.support.cluster import processes_with, wait_for
from tests.support.daemon import Rxd, free_port, running_rxd
from tests.support.lifecycle import ADMIN, lifecycle_config, make_project, wait_state
from tests.support.lifecycle import status as lifecycle_status
from tests.test_platform_e2e import TOKEN, write_token

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("container_runtime")]

OWNER = "rxalice"
MANAGER = "rxbob"
VIEWER = "rxdave"
PROJECT = "pe-main"
QUEUED = "pe-queued"
DEFAULT_PARTITION = "cpu"  # the test cluster's (tests/cluster)
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


def status_of(rxd: Rxd, project: str) -> dict[str, Any]:
    return lifecycle_status(rxd, OWNER, project)


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


def files_call(
    port: int, method: str, user: str, project: str, path: str, body: bytes | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    query = urllib.parse.urlencode({"path": path})
    headers = {"Authorization": f"Bearer {TOKEN}", "X-RX-User": user}
    conn.request(method, f"/v1/projects/{project}/files?{query}", body=body, headers=headers)
    response = conn.getresponse()
    answer = response.status, response.read()
    conn.close()
    return answer


def test_a_file_written_through_the_api_is_read_in_the_container_and_back(
    platform: tuple[Rxd, int], project: str
) -> None:
    rxd, port = platform
    data = bytes(range(256)) * 4
    status, body = files_call(port, "PUT", MANAGER, project, "api/in.bin", data)
    assert status == 200, body
    assert json.loads(body) == {"path": "api/in.bin", "size": len(data)}
    answer = platform_exec(port, MANAGER, project, argv=["cat", "/workspace/api/in.bin"])
    assert answer.stdout == data and answer.final == {"exit": 0}
    # And the other way: what a command writes there, the API reads.
    script = "printf 'from the container\\n' > /workspace/api/out.txt"
    assert platform_exec(port, OWNER, project, argv=["sh", "-c", script]).final == {"exit": 0}
    assert files_call(port, "GET", VIEWER, project, "api/out.txt") == (
        200,
        b"from the container\n",
    )
    actions = [(e["action"], e["actor"]) for e in audit(rxd, project)]
    assert ("workspace.file-written", MANAGER) in actions
    assert ("workspace.file-read", VIEWER) in actions


def test_dotdot_and_symlink_paths_are_refused_and_a_viewer_cannot_write(
    platform: tuple[Rxd, int], project: str
) -> None:
    _, port = platform
    for path in ("../etc/passwd", "api/../../x", "/etc/passwd"):
        status, body = files_call(port, "GET", OWNER, project, path)
        assert status == 400, (path, body)
    # A link made inside the container, to a file only root may read, and to a folder.
    script = "ln -sfn /etc/shadow /workspace/shadow-link && ln -sfn /etc /workspace/etc-link"
    assert platform_exec(port, OWNER, project, argv=["sh", "-c", script]).final == {"exit": 0}
    for path in ("shadow-link", "etc-link/passwd"):
        status, body = files_call(port, "GET", OWNER, project, path)
        assert status == 400 and b"symbolic link" in body, (path, body)
        status, body = files_call(port, "PUT", OWNER, project, path, b"through the link")
        assert status == 400, (path, body)
    status, body = files_call(port, "PUT", VIEWER, project, "viewer.txt", b"no")
    assert status == 403 and b"not write it" in body
    assert files_call(port, "GET", OWNER, project, "viewer.txt")[0] == 404


def test_a_platform_that_hangs_up_ends_its_silent_command(
    platform: tuple[Rxd, int], project: str
) -> None:
    _, port = platform
    marker = f"pe-hangup-{uuid.uuid4().hex[:8]}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {TOKEN}", "X-RX-User": OWNER}
    body = {"argv": ["sh", "-c", f"sleep 600; : {marker}"]}
    conn.request("POST", f"/v1/projects/{project}/exec", body=json.dumps(body), headers=headers)
    response = conn.getresponse()
    assert response.status == 200
    wait_for(lambda: bool(processes_with(marker)), timeout=60, what="the command to start")
    conn.close()
    wait_for(lambda: not processes_with(marker), timeout=60, what="the command to end")


def test_a_sleeping_container_is_woken_for_the_command_with_its_progress_streamed(
    platform: tuple[Rxd, int], project: str
) -> None:
    rxd, port = platform
    ok(rxd.rxctl(OWNER, "stop", "--project", project))
    wait_state(rxd, project, "stopped")
    answer = platform_exec(port, MANAGER, project, argv=["echo", "awake"])
    assert answer.stdout == b"awake\n"
    assert answer.final == {"exit": 0}
    progress = [m for m in answer.control if "progress" in m]
    assert progress and progress[0]["state"] in ("starting", "waiting_for_resources", "pulling")
    # The platform's own request said nothing of the wake's handshake: rxd answered it.
    assert not any("ready" in m for m in answer.control)


def test_a_timeout_while_the_container_waits_for_its_quota_says_so(
    platform: tuple[Rxd, int], project: str
) -> None:
    rxd, port = platform
    # The running project holds the owner's one container on its partition: the next one waits.
    partition = wait_state(rxd, project, "running")["partition"] or DEFAULT_PARTITION
    make_project(rxd, QUEUED, "--partition", partition)
    quota = ("--partition", partition, "--user", OWNER)
    ok(rxd.rxctl(ADMIN, "admin", "quota", "set", *quota, "--containers", "1"))
    try:
        ok(rxd.rxctl(OWNER, "enable", "--project", QUEUED))
        assert status_of(rxd, QUEUED)["state"] == "waiting_for_resources"
        answer = platform_exec(port, OWNER, QUEUED, argv=["echo", "never"], timeout=2)
        assert answer.stdout == b""
        assert answer.final.get("code") == "timeout", answer.final
        assert answer.final["timed_out"] is True
        assert "did not start within" in answer.final["error"]
        assert status_of(rxd, QUEUED)["state"] == "waiting_for_resources"
    finally:
        rxd.rxctl(OWNER, "stop", "--project", QUEUED)
        rxd.rxctl(ADMIN, "admin", "quota", "rm", *quota)
