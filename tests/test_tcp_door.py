"""rxd's network door on the real cluster: rxctl over TCP with MUNGE, refusals, the hooks."""

from __future__ import annotations

import http.client
import json
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rxslurm.daemon.api.munge_door import AUDIT_BURST
from rxslurm.slurm.hooks import job_event
from tests.support.cli import ok
from tests.support.cluster import run_as, wait_for
from tests.support.daemon import RXCTL, VENV_BIN, Rxd, free_port, running_rxd
from tests.support.lifecycle import lifecycle_config
from tests.support.munge import needs_munged, other_munged  # noqa: F401
from tests.support.real_apptainer import BASE_IMAGE

pytestmark = [pytest.mark.cluster, needs_munged]

ALICE_UID = 2001
BOB_UID = 2002
IMAGE = str(BASE_IMAGE)  # built locally by tests/cluster/images.sh


class Door:
    def __init__(self, rxd: Rxd, port: int) -> None:
        self.rxd = rxd
        self.port = port
        self.server = f"127.0.0.1:{port}"

    def rxctl(self, user: str, *args: str, env: dict[str, str] | None = None):
        """rxctl as `user`, finding rxd only through $RXSLURM_SERVER (no --socket)."""
        return run_as(user, [RXCTL, *args], env={"RXSLURM_SERVER": self.server, **(env or {})})

    def send(
        self, method: str, target: str, body: bytes = b"", credential: str | None = None
    ) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Content-Type": "application/json"}
        if credential is not None:
            headers["X-RX-Munge"] = credential
        try:
            conn.request(method, target, body=body or None, headers=headers)
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            conn.close()

    def refusals(self) -> list[dict]:
        rows = self.rxd.ledger_rows(
            "SELECT actor, actor_uid, origin, detail FROM events "
            "WHERE action = 'door.refused' ORDER BY id"
        )
        return [{"actor": a, "actor_uid": u, "origin": o, **json.loads(d)} for a, u, o, d in rows]

    def projects(self) -> list[str]:
        return [name for (name,) in self.rxd.ledger_rows("SELECT name FROM projects ORDER BY name")]


@contextmanager
def opened_door() -> Iterator[Door]:
    """An rxd that runs containers and listens on a network door; shut down afterwards."""
    port = free_port()
    with running_rxd(lambda root: f'listen = "127.0.0.1:{port}"\n' + lifecycle_config(root)) as rxd:
        yield Door(rxd, port)


@pytest.fixture
def door() -> Iterator[Door]:
    """A fresh rxd with its network door (fresh, so each test has its own audit allowance)."""
    with opened_door() as opened:
        yield opened


CREDENTIAL_SCRIPT = """
import sys
from rxslurm.slurm import munge, request_binding
method, target, body, claim, ttl, sock = sys.argv[1:]
import os
binding = request_binding.bind(method, target, body.encode(), int(claim) if claim else os.getuid())
print(munge.encode(binding.to_payload(), socket=sock or None, ttl=int(ttl) if ttl else None))
"""


def credential_as(
    user: str,
    method: str,
    target: str,
    body: bytes = b"",
    *,
    claim_uid: int | None = None,
    ttl: int | None = None,
    munge_socket: str | None = None,
) -> str:
    """A credential made by `user`'s own process, bound as rxctl binds (or claiming claim_uid)."""
    argv = [str(VENV_BIN / "python"), "-c", CREDENTIAL_SCRIPT, method, target, body.decode()]
    argv += [str(claim_uid or ""), str(ttl or ""), munge_socket or ""]
    return ok(run_as(user, argv)).stdout.strip()


def project_body(name: str) -> bytes:
    return json.dumps({"name": name, "settings": {"image": IMAGE}}).encode()


def test_rxctl_over_the_network_door_is_the_same_user(door: Door) -> None:
    me = json.loads(ok(door.rxctl("rxalice", "whoami", "--json")).stdout)
    assert (me["user"], me["uid"], me["door"], me["admin"]) == (
        "rxalice",
        ALICE_UID,
        "munge",
        False,
    )
    bob = json.loads(ok(door.rxctl("rxbob", "whoami", "--json")).stdout)
    assert (bob["user"], bob["uid"]) == ("rxbob", BOB_UID)


def test_doctor_names_the_network_door_and_checks_munge(door: Door) -> None:
    report = json.loads(ok(door.rxctl("rxalice", "doctor", "--json")).stdout)
    checks = report["checks"]
    assert checks["door"]["detail"] == (
        f"network door {door.server}, MUNGE-authenticated ($RXSLURM_SERVER)"
    )
    assert (
        checks["munge"]["ok"] and "rxd accepted this host's credential" in checks["munge"]["detail"]
    )
    assert checks["daemon"]["ok"] and report["ok"]
    local = json.loads(ok(door.rxd.rxctl("rxalice", "doctor", "--json")).stdout)
    assert local["checks"]["door"]["detail"] == f"local socket {door.rxd.socket} (--socket)"


def test_a_container_lifecycle_over_the_network_door(door: Door) -> None:
    ok(door.rxctl("rxalice", "project", "create", "netproj", "--image", IMAGE))
    ok(door.rxctl("rxalice", "enable", "--project", "netproj"))

    def state(user: str = "rxalice") -> dict:
        return json.loads(ok(door.rxctl(user, "status", "--project", "netproj", "--json")).stdout)

    running = wait_for(
        lambda: (s := state())["state"] == "running" and s, 120, 0.5, what="netproj running"
    )
    assert running["job_id"]
    jobs = subprocess_squeue(running["job_id"])
    assert jobs == "rxalice", jobs  # the job runs as the project's owner, as over the socket
    refused = door.rxctl("rxbob", "status", "--project", "netproj")
    assert refused.returncode == 1
    assert refused.stderr == "Error: no project named 'netproj' (or you are not a member)\n"
    ok(door.rxctl("rxalice", "stop", "--project", "netproj"))
    wait_for(lambda: state()["state"] == "stopped", 90, 0.5, what="netproj stopped")
    origins = door.rxd.ledger_rows(
        "SELECT DISTINCT actor, origin FROM events WHERE action LIKE 'project.%' "
        "OR action LIKE 'container.%'"
    )
    assert ("rxalice", "munge") in origins
    assert all(origin != "socket" for _, origin in origins)


def subprocess_squeue(job_id: int) -> str:
    import subprocess

    out = subprocess.run(
        ["squeue", "-h", "-j", str(job_id), "-o", "%u"], capture_output=True, text=True, timeout=30
    )
    return out.stdout.strip()


def test_no_credential_is_refused_audited_and_changes_nothing(door: Door) -> None:
    status, data = door.send("POST", "/v1/projects", project_body("nocred"))
    assert status == 401
    assert data["error"]["message"] == (
        "no MUNGE credential: the network door needs the X-RX-Munge header (use rxctl)"
    )
    assert door.projects() == []
    [row] = door.refusals()
    assert (row["origin"], row["code"], row["target"], row["peer"]) == (
        "munge",
        "no_credential",
        "/v1/projects",
        "127.0.0.1",
    )


@pytest.mark.parametrize("forged", ["MUNGE:garbage:", "MUNGE:" + "QUFB" * 40 + ":", "Bearer x"])
def test_a_forged_credential_is_refused(door: Door, forged: str) -> None:
    status, data = door.send("POST", "/v1/projects", project_body("forged"), forged)
    assert status == 401
    assert data["error"]["code"] == "bad_credential"
    assert data["error"]["message"].startswith("MUNGE credential")
    assert door.projects() == []
    assert [r["code"] for r in door.refusals()] == ["bad_credential"]


def test_a_replayed_request_is_refused_and_audited_with_whose_it_was(door: Door) -> None:
    body = project_body("once")
    credential = credential_as("rxalice", "POST", "/v1/projects", body)
    status, data = door.send("POST", "/v1/projects", body, credential)
    assert status == 201, data
    status, data = door.send("POST", "/v1/projects", body, credential)
    assert status == 401
    assert data["error"]["message"] == ("MUNGE credential replayed (each credential is good once)")
    assert door.projects() == ["once"]
    [row] = door.refusals()
    assert (row["actor"], row["actor_uid"], row["code"]) == (
        f"uid:{ALICE_UID}",
        ALICE_UID,
        "bad_credential",
    )


@pytest.mark.parametrize(
    ("method", "target", "body"),
    [
        ("POST", "/v1/projects", project_body("altered-b")),  # another body
        ("POST", "/v1/projects?x=1", project_body("altered-a")),  # another target
        ("PUT", "/v1/projects", project_body("altered-a")),  # another method
    ],
)
def test_an_altered_request_is_refused(door: Door, method: str, target: str, body: bytes) -> None:
    credential = credential_as("rxalice", "POST", "/v1/projects", project_body("altered-a"))
    status, data = door.send(method, target, body, credential)
    assert status == 401
    assert data["error"]["message"] == (
        "the request does not match its credential (altered, or moved)"
    )
    assert door.projects() == []
    [row] = door.refusals()
    assert (row["code"], row["actor_uid"]) == ("altered", ALICE_UID)


def test_an_expired_credential_is_refused(door: Door) -> None:
    import time

    credential = credential_as("rxalice", "GET", "/v1/whoami", ttl=1)
    deadline = time.time() + 2.5
    # The clock passing the TTL is what this test needs; poll it rather than sleep a fixed time.
    wait_for(lambda: time.time() > deadline, timeout=10, interval=0.1, what="the TTL to pass")
    status, data = door.send("GET", "/v1/whoami", b"", credential)
    assert status == 401
    assert data["error"]["message"] == "MUNGE credential expired (its TTL passed; clocks in step?)"
    assert door.refusals()[0]["actor_uid"] == ALICE_UID


def test_another_munge_key_is_refused(door: Door, other_munged: str) -> None:  # noqa: F811
    credential = credential_as("rxalice", "GET", "/v1/whoami", munge_socket=other_munged)
    status, data = door.send("GET", "/v1/whoami", b"", credential)
    assert status == 401
    assert data["error"]["message"] == "MUNGE credential invalid (forged, or another MUNGE key)"
    # rxctl on a host with another key: one line, exit 1, nothing created.
    result = door.rxctl(
        "rxalice",
        "project",
        "create",
        "otherkey",
        "--image",
        IMAGE,
        env={"RXSLURM_MUNGE_SOCKET": other_munged},
    )
    assert result.returncode == 1
    assert result.stderr == "Error: MUNGE credential invalid (forged, or another MUNGE key)\n"
    assert door.projects() == []
    assert [r["code"] for r in door.refusals()] == ["bad_credential", "bad_credential"]


def test_a_credential_of_one_uid_claiming_another_is_refused(door: Door) -> None:
    body = project_body("claimed")
    credential = credential_as("rxalice", "POST", "/v1/projects", body, claim_uid=BOB_UID)
    status, data = door.send("POST", "/v1/projects", body, credential)
    assert status == 403
    assert data["error"]["message"] == (
        f"the credential is uid {ALICE_UID}'s but the request claims uid {BOB_UID}"
    )
    assert door.projects() == []
    [row] = door.refusals()
    assert (row["code"], row["actor_uid"]) == ("uid_mismatch", ALICE_UID)


def test_a_flood_of_refusals_is_answered_but_audited_only_up_to_the_burst(door: Door) -> None:
    for _ in range(AUDIT_BURST + 5):
        assert door.send("GET", "/v1/whoami", b"", "MUNGE:garbage:")[0] == 401
    assert len(door.refusals()) == AUDIT_BURST
    # Refusals are never by address: a good request from the same address is served.
    assert ok(door.rxctl("rxalice", "whoami")).stdout.startswith("rxalice")


def test_admins_do_not_administer_through_the_network_door(door: Door) -> None:
    import os
    import subprocess

    env = {**os.environ, "RXSLURM_SERVER": door.server}
    env.pop("RXCTL_SOCKET", None)
    result = subprocess.run(
        [RXCTL, "admin", "bindings"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert result.stderr == "Error: this needs an rx-slurm admin (root or the admin group)\n"
    root = json.loads(
        subprocess.run(
            [RXCTL, "whoami", "--json"], env=env, capture_output=True, text=True, timeout=60
        ).stdout
    )
    assert (root["uid"], root["admin"], root["door"]) == (0, False, "munge")
    # The same root on the service host's socket is an admin.
    assert ok(door.rxd.rxctl(None, "admin", "bindings")).returncode == 0


def test_the_controller_hook_pokes_rxd_over_the_network_door(door: Door, tmp_path: Path) -> None:
    listing = tmp_path / "hook-sockets"
    listing.write_text(f"# rxd on the service host\n{door.server}\n")
    env = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "rx-x",
        "SLURM_SCRIPT_CONTEXT": "epilog_slurmctld",
    }
    # This test runs as root, which is SlurmUser on the test cluster (slurm.hook_users).
    assert job_event.poke(door.server, {"event": "end", "job_id": 4242}) is True
    assert job_event.main(env, listing) == 0

    def poked() -> int:
        return sum(
            1
            for line in door.rxd.log_text().splitlines()
            if '"path": "/v1/hooks/job"' in line
            and '"status": 202' in line
            and '"who": "root"' in line
        )

    assert wait_for(lambda: poked() >= 2, 10, what="two hook pokes in rxd's log")
    # A researcher's credential is proved, then refused by the route: hooks are SlurmUser's.
    script = (
        "from rxslurm.slurm.hooks import job_event\n"
        f"print(job_event.poke({door.server!r}, {{'event': 'end', 'job_id': 1}}))\n"
    )
    result = ok(run_as("rxalice", [sys.executable, "-c", script]))
    assert result.stdout == "False\n"
    assert door.refusals() == []  # proved but forbidden is the route's answer, not the door's


def test_exec_over_the_network_door_checks_membership_as_the_socket_does(door: Door) -> None:
    result = door.rxctl("rxalice", "exec", "--project", "netproj", "true")
    assert result.returncode == 125
    assert result.stderr == "Error: no project named 'netproj' (or you are not a member)\n"


def test_the_exec_stream_needs_a_credential(door: Door) -> None:
    status, data = door.send("GET", "/v1/exec?digest=" + "0" * 64)
    assert status == 401
    assert data["error"]["code"] == "no_credential"


ALTERED_EXEC_SCRIPT = """
import json
from rxslurm.cli.door import find_door
from rxslurm.cli.exec_remote import CONTROL, FrameReader, frame, handshake
proved = json.dumps({"project": "netproj", "argv": ["true"]}).encode()
sock, rest = handshake(find_door(), proved)
sock.sendall(frame(CONTROL + proved.replace(b"true", b"id")))
reader = FrameReader()
got = reader.feed(rest)
while not got:
    got = reader.feed(sock.recv(65536))
print(got[0][1][1:].decode())
"""


def test_an_exec_request_other_than_the_one_proved_is_refused(door: Door) -> None:
    argv = [str(VENV_BIN / "python"), "-c", ALTERED_EXEC_SCRIPT]
    out = ok(run_as("rxalice", argv, env={"RXSLURM_SERVER": door.server})).stdout
    assert json.loads(out) == {
        "error": "exec protocol error: the exec request does not match the digest its "
        "credential proves"
    }


def test_a_uid_without_a_passwd_entry_is_refused(door: Door) -> None:
    import subprocess

    # MUNGE proves uid 4242 (no account on rxd's host); rxd names callers as for the socket.
    made = subprocess.run(
        [str(VENV_BIN / "python"), "-c", CREDENTIAL_SCRIPT, "GET", "/v1/whoami", "", "", "", ""],
        user=4242,
        group=4242,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
    )
    assert made.returncode == 0, made.stderr
    status, data = door.send("GET", "/v1/whoami", b"", made.stdout.strip())
    assert status == 403
    assert data["error"] == {"code": "unknown_caller", "message": "uid 4242 has no passwd entry"}
    [row] = door.refusals()
    assert (row["actor"], row["actor_uid"]) == ("uid:4242", 4242)


def test_rxctl_in_a_researchers_batch_job_reaches_rxd_over_the_network_door(door: Door) -> None:
    import os
    import pwd

    from tests.support.daemon import test_root

    out_dir = test_root()
    alice = pwd.getpwnam("rxalice")
    os.chown(out_dir, alice.pw_uid, alice.pw_gid)
    out = out_dir / "whoami.json"
    submitted = run_as(
        "rxalice",
        [
            "sbatch",
            "--parsable",
            "-t",
            "5",
            "-c",
            "1",
            "--mem=100",
            "-o",
            str(out),
            "--wrap",
            f"exec {RXCTL} whoami --json",
        ],
        env={"RXSLURM_SERVER": door.server},
    )
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    try:
        # The cluster is shared: the job may wait for a node a while.
        def done() -> str | None:
            state = run_as("rxalice", ["squeue", "-h", "-j", job, "-o", "%T"]).stdout.strip()
            return None if state else out.read_text() if out.exists() else None

        text = wait_for(done, timeout=300, interval=0.5, what=f"batch job {job} to finish")
        me = json.loads(text)
        assert (me["user"], me["door"]) == ("rxalice", "munge"), text
    finally:
        run_as("rxalice", ["scancel", job])
        shutil.rmtree(out_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_door() -> Iterator[Door]:
    with opened_door() as opened:
        yield opened


printable_header = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=400
)


@settings(max_examples=60, deadline=None)
@given(credential=st.one_of(printable_header, printable_header.map(lambda t: f"MUNGE:{t}:")))
def test_any_header_value_is_a_401_with_a_reason_never_a_crash(
    shared_door: Door, credential: str
) -> None:
    status, data = shared_door.send(
        "POST", "/v1/projects", project_body("fuzzed"), credential.strip() or "x"
    )
    assert status == 401, data
    assert data["error"]["message"] and "\n" not in data["error"]["message"]
    assert shared_door.projects() == []


def test_a_genuine_credential_made_for_something_else_is_refused(door: Door) -> None:
    script = "from rxslurm.slurm import munge\nprint(munge.encode(b'POST /v1/projects'))\n"
    credential = ok(run_as("rxalice", [str(VENV_BIN / "python"), "-c", script])).stdout.strip()
    status, data = door.send("POST", "/v1/projects", project_body("other"), credential)
    assert status == 401
    assert data["error"] == {
        "code": "bad_binding",
        "message": "the credential's payload is not an rx-slurm request",
    }
    assert door.projects() == []
    assert [(r["code"], r["actor_uid"]) for r in door.refusals()] == [("bad_binding", ALICE_UID)]
