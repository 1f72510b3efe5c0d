"""Finding 6: a container that can never be submitted must not keep a quota lease.

Recipe (security review, section 6): with a deployment GPU quota, a project whose image holds
`\\r`, or whose name ends in `\\n`, sent straight to the API socket; enabling it took the lease and
stayed `starting` forever, so every other user's container waited. The recipe runs on the real
cluster as the ordinary test users, each test with its own rxd; the fast tests below pin the two
paths (before and after the lease) on a throwaway ledger with a Slurm that records submissions.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from rxslurm.daemon.config import Config
from rxslurm.daemon.containers.service import ContainerService
from rxslurm.daemon.errors import BadRequest
from rxslurm.daemon.identity.actors import Actor
from rxslurm.daemon.ledger.store import Ledger
from rxslurm.daemon.ledger.timestamps import to_timestamp, utcnow
from rxslurm.daemon.quotas import leases as quotas
from rxslurm.daemon.settings import Settings
from tests.support.cli import ok
from tests.support.cluster import run_as, wait_for
from tests.support.daemon import VENV_BIN, Rxd
from tests.support.lifecycle import gpu_leases, gpu_quota_rxd
from tests.support.real_apptainer import BASE_IMAGE

pytestmark = pytest.mark.hostile

# Built locally by tests/cluster/images.sh: nothing to pull before the enables race for leases.
IMAGE = str(BASE_IMAGE)

# As a test user: one raw request on the API socket, as curl would send it (no CLI checks).
RAW_REQUEST = r"""
import http.client, socket, sys
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(sys.argv[1])
c = C("rxd")
body = sys.argv[4].encode() if len(sys.argv) > 4 else None
c.request(sys.argv[2], sys.argv[3], body=body, headers={"Content-Type": "application/json"})
r = c.getresponse()
print(r.status, r.read().decode())
"""


def raw(rxd: Rxd, user: str, method: str, path: str, body: Any = None) -> tuple[int, dict]:
    argv = [str(VENV_BIN / "python"), "-c", RAW_REQUEST, str(rxd.socket), method, path]
    if body is not None:
        argv.append(json.dumps(body))
    result = run_as(user, argv)
    assert result.returncode == 0, result.stderr
    status, _, text = result.stdout.partition(" ")
    return int(status), json.loads(text)


def state_of(rxd: Rxd, user: str, project: str) -> dict[str, Any]:
    result = ok(rxd.rxctl(user, "status", "--project", project, "--json"))
    return json.loads(result.stdout)


def wait_for_state(rxd: Rxd, user: str, project: str, *states: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen.update(state_of(rxd, user, project))
        return seen["state"] in states

    try:
        wait_for(reached, timeout=120, what=f"{project} to reach {states}")
    except TimeoutError as exc:
        raise AssertionError(
            f"{exc}; last: {seen}; leases: {gpu_leases(rxd)}\n{rxd.log_text()[-3000:]}"
        ) from None
    return seen


def wait_started(rxd: Rxd, user: str, project: str) -> dict[str, Any]:
    """Its lease taken and its job submitted. Whether Slurm runs the job now is up to the shared
    cluster (other developers' jobs, drained nodes): not what these tests are about."""
    seen: dict[str, Any] = {}

    def started() -> bool:
        seen.update(state_of(rxd, user, project))
        return seen["job_id"] is not None and not seen["over_quota"]

    try:
        wait_for(started, timeout=120, what=f"{project} to have a job")
    except TimeoutError as exc:
        raise AssertionError(
            f"{exc}; last: {seen}; leases: {gpu_leases(rxd)}\n{rxd.log_text()[-3000:]}"
        ) from None
    return seen


def gpu_project(rxd: Rxd, user: str, name: str) -> None:
    ok(
        rxd.rxctl(
            user, "project", "create", name, "--image", IMAGE, "--gpus", "1", "--partition", "gpu"
        )
    )


@pytest.mark.cluster
def test_a_carriage_return_image_or_newline_name_is_refused_and_another_user_starts() -> None:
    with gpu_quota_rxd(1) as rxd:
        hog = {"image": "/x\r", "gpus": 1, "partition": "gpu"}
        status, answer = raw(
            rxd, "rxdave", "POST", "/v1/projects", {"name": "hog", "settings": hog}
        )
        assert status == 400, answer
        assert "image must not contain control or bidi characters" in answer["error"]["message"]

        good = {"image": IMAGE, "gpus": 1, "partition": "gpu"}
        status, answer = raw(
            rxd, "rxdave", "POST", "/v1/projects", {"name": "hog\n", "settings": good}
        )
        assert status == 400, answer
        assert "project name must be" in answer["error"]["message"]
        # The same name through the URL, as `hog%0A`: never matched as "hog".
        ok(rxd.rxctl("rxdave", "project", "create", "hog", "--image", IMAGE, "--gpus", "1",
                     "--partition", "gpu"))  # fmt: skip
        status, answer = raw(rxd, "rxdave", "POST", "/v1/projects/hog%0A/enable")
        assert status == 400, answer
        status, answer = raw(rxd, "rxdave", "PATCH", "/v1/projects/hog/settings", {"image": "/x\r"})
        assert status == 400, answer

        assert rxd.ledger_rows("SELECT name FROM projects") == [("hog",)]
        assert rxd.ledger_rows("SELECT count(*) FROM containers") == [(0,)]
        assert gpu_leases(rxd) == {}

        gpu_project(rxd, "rxalice", "g1")
        ok(rxd.rxctl("rxalice", "enable", "--project", "g1"))
        wait_started(rxd, "rxalice", "g1")
        assert gpu_leases(rxd) == {"g1": 1}


@pytest.mark.cluster
def test_a_failure_after_the_lease_ends_in_error_frees_it_and_the_next_user_starts() -> None:
    with gpu_quota_rxd(1) as rxd:
        gpu_project(rxd, "rxbob", "first")
        ok(rxd.rxctl("rxbob", "enable", "--project", "first"))
        wait_started(rxd, "rxbob", "first")
        # Queued behind `first`, in this order: hog takes the lease first when it frees up.
        for user, name in (("rxdave", "hog"), ("rxalice", "g1")):
            gpu_project(rxd, user, name)
            ok(rxd.rxctl(user, "enable", "--project", name))
            assert wait_for_state(rxd, user, name, "waiting_for_resources")["over_quota"]
        # A value saved before today's checks (an older rxd): the holder script cannot be made
        # from it, which shows only after the lease is taken.
        # Every start runs the project's image as it is now, so it is the project's setting.
        conn = sqlite3.connect(rxd.ledger, timeout=30)
        with conn:
            conn.execute("UPDATE projects SET image = '/x' || char(13) WHERE name = 'hog'")
            conn.execute("UPDATE containers SET image = '/x' || char(13) WHERE name = 'rx-hog'")
        conn.close()

        ok(rxd.rxctl("rxbob", "stop", "--project", "first"))
        hog = wait_for_state(rxd, "rxdave", "hog", "error")
        assert "carriage return" in hog["last_error"], hog
        wait_started(rxd, "rxalice", "g1")
        assert gpu_leases(rxd) == {"g1": 1}
        assert hog["job_id"] is None

        # Woken again (retry) it is refused before any lease is taken, and says why.
        result = rxd.rxctl("rxdave", "retry", "--project", "hog")
        assert result.returncode == 1, result
        assert result.stderr.startswith("Error: the container of hog cannot start: "), result
        assert "carriage return" in result.stderr
        assert state_of(rxd, "rxdave", "hog")["state"] == "error"
        assert gpu_leases(rxd) == {"g1": 1}


# -- fast: the same two paths without Slurm -------------------------------------------------


class RecordingSlurm:
    def __init__(self) -> None:
        self.submitted: list[str] = []

    def submit(self, script: str, spec: Any, as_user: Any) -> int:
        self.submitted.append(spec.name)
        return 1


def _ledger_with_container(tmp_path: Path, state: str, image: str) -> Ledger:
    ledger = Ledger.open(tmp_path / "ledger.db", migrate=True)
    now = to_timestamp(utcnow())
    with ledger.transaction() as db:
        db["platform_users"].insert({"id": "dave", "created_at": now})
        db["bindings"].insert(
            {
                "platform_user_id": "dave",
                "uid": 2004,
                "username": "rxdave",
                "bound_at": now,
                "bound_by": "test",
            }
        )
        project = (
            db["projects"]
            .insert(
                {
                    "name": "hog",
                    "created_at": now,
                    "created_by": "dave",
                    "workspace": str(tmp_path),
                    "gpus": 1,
                    "partition": "gpu",
                    # What an older rxd saved: every start runs the project's image as it is.
                    "image": image,
                    "run_as": "bound",
                    "run_as_user": "dave",
                }
            )
            .last_pk
        )
        db["members"].insert(
            {
                "project_id": project,
                "platform_user_id": "dave",
                "role": "owner",
                "added_at": now,
                "added_by": "dave",
            }
        )
        db["containers"].insert(
            {
                "project_id": project,
                "name": "rx-hog",
                "state": state,
                "desired": "running",
                "runtime_user": "rxdave",
                # What an older rxd saved: the holder script cannot be made from it.
                "image": image,
                "overlay_path": str(tmp_path / "overlay.img"),
                "state_dir": str(tmp_path),
                "created_at": now,
                "updated_at": now,
            }
        )
    return ledger


DAVE = Actor(platform_user="dave", uid=2004, user="rxdave", admin=False, origin="socket")


def test_a_job_that_cannot_be_built_after_the_lease_ends_in_error_and_frees_it(
    tmp_path: Path,
) -> None:
    ledger = _ledger_with_container(tmp_path, "starting", "/x\r")
    request = quotas.Request("gpu", "hog", "rxdave", gpus=1, cpus=1, mem_mb=0)
    with ledger.transaction() as db:
        quotas.acquire(db, 1, request)
    slurm = RecordingSlurm()
    rt = ContainerService(ledger, Config(), slurm)  # type: ignore[arg-type]

    with pytest.raises(BadRequest, match="the container of hog cannot start: .*carriage return"):
        rt.submit(1, Settings(gpus=1, partition="gpu"), actor="rxd", origin="reconciler")

    container = ledger.db["containers"].get(1)
    assert container["state"] == "error"
    assert (
        container["last_error"]
        == "cannot build the job: image: the value contains a carriage return"
    )
    assert ledger.db["leases"].count == 0
    assert slurm.submitted == []


def test_a_job_that_cannot_be_built_is_refused_before_a_lease_is_taken(tmp_path: Path) -> None:
    ledger = _ledger_with_container(tmp_path, "stopped", "/x\r")
    slurm = RecordingSlurm()
    rt = ContainerService(ledger, Config(), slurm, default_partition=lambda: "cpu")  # type: ignore[arg-type]

    with pytest.raises(BadRequest, match="the container of hog cannot start"):
        rt.wake(DAVE, "hog")

    assert ledger.db["containers"].get(1)["state"] == "error"
    assert ledger.db["leases"].count == 0
    assert slurm.submitted == []
    events = [e["action"] for e in ledger.db["events"].rows_where(order_by="id")]
    assert events == ["container.state"]  # stopped -> error, nothing else
