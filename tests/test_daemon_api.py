"""rxd's API on its socket: callers are who the kernel says; the daemon starts and stops safely."""

from __future__ import annotations

import hashlib
import json
import pwd
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from rxslurm.daemon.config import parse_config
from rxslurm.daemon.errors import ApiError
from rxslurm.daemon.identity import bindings as identities
from rxslurm.daemon.ledger.audit import KEPT_CHARS, MAX_DETAIL_ITEMS, list_events, record_event
from rxslurm.daemon.ledger.migrations import known_names
from rxslurm.daemon.ledger.store import Ledger
from tests.support.cluster import run_as
from tests.support.daemon import VENV_BIN, Rxd, new_rxd

# Sent as a test user: a request that claims to be root in every way a body, query or header could.
IMPERSONATE = r"""
import http.client, json, socket, sys
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(sys.argv[1])
c = C("rxd")
c.request("GET", "/v1/whoami?uid=0&user=root",
          body=json.dumps({"uid": 0, "user": "root", "admin": True}),
          headers={"Content-Type": "application/json", "X-Remote-User": "root", "X-Uid": "0"})
r = c.getresponse()
print(r.status, r.read().decode())
"""


def whoami_json(rxd: Rxd, user: str) -> dict:
    result = rxd.rxctl(user, "whoami", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_whoami_gives_each_linux_user_their_own_identity(rxd: Rxd) -> None:
    alice = whoami_json(rxd, "rxalice")
    bob = whoami_json(rxd, "rxbob")
    assert (alice["uid"], alice["user"], alice["admin"]) == (2001, "rxalice", False)
    assert (bob["uid"], bob["user"], bob["admin"]) == (2002, "rxbob", False)
    assert "rxusers" in alice["groups"]


def test_whoami_marks_admin_group_members_and_root(rxd: Rxd) -> None:
    assert whoami_json(rxd, "rxop")["admin"] is True
    root = rxd.rxctl(None, "whoami", "--json")
    assert json.loads(root.stdout)["uid"] == 0
    assert json.loads(root.stdout)["admin"] is True


def test_whoami_text_output(rxd: Rxd) -> None:
    result = rxd.rxctl("rxbob", "whoami")
    assert result.returncode == 0
    assert result.stdout == "rxbob (uid 2002, user)\n"


def test_request_claiming_another_uid_is_still_the_peer(rxd: Rxd) -> None:
    result = run_as("rxalice", [str(VENV_BIN / "python"), "-c", IMPERSONATE, str(rxd.socket)])
    assert result.returncode == 0, result.stderr
    status, body = result.stdout.split(" ", 1)
    assert status == "200"
    me = json.loads(body)
    assert (me["uid"], me["user"], me["admin"]) == (2001, "rxalice", False)


def test_unknown_route_is_a_json_404(rxd: Rxd) -> None:
    from rxslurm.cli.client import ApiError, Client

    with pytest.raises(ApiError) as err:
        Client(str(rxd.socket)).get("/v1/nope")
    assert err.value.status == 404


def test_rxctl_says_in_one_line_when_the_daemon_is_down(rxd: Rxd) -> None:
    assert rxd.stop() == 0
    result = rxd.rxctl("rxalice", "whoami")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"Error: rxd is not running (nothing listens on {rxd.socket})\n"


def test_doctor_json_when_the_daemon_is_down(rxd: Rxd) -> None:
    rxd.stop()
    result = rxd.rxctl("rxalice", "doctor", "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["checks"]["daemon"]["ok"] is False


def test_sigterm_stops_cleanly_and_removes_the_socket(rxd: Rxd) -> None:
    assert rxd.stop(signal.SIGTERM) == 0
    assert not rxd.socket.exists()
    assert '"rxd stopped"' in rxd.log_text()


@pytest.mark.root(reason="starts a real rxd")
def test_stale_socket_from_a_crash_is_replaced() -> None:
    daemon = new_rxd()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(daemon.socket))  # bound, never listening: what a killed rxd leaves
    stale.close()
    assert daemon.socket.is_socket()
    daemon.start()
    assert whoami_json(daemon, "rxalice")["uid"] == 2001
    assert daemon.stop() == 0


@pytest.mark.root(reason="starts a real rxd")
def test_refuses_to_replace_a_file_that_is_not_a_socket() -> None:
    daemon = new_rxd()
    daemon.socket.write_text("not a socket")
    daemon.start(wait=False)
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=30) == 1
    assert "exists and is not a socket; refusing to replace it" in daemon.log_text()
    assert daemon.socket.read_text() == "not a socket"


def test_second_daemon_on_a_live_socket_refuses(rxd: Rxd) -> None:
    second = Rxd(root=rxd.root)
    second.start(wait=False)
    assert second.proc is not None
    assert second.proc.wait(timeout=30) == 1
    assert "another rxd is already serving on" in second.log_text()
    assert whoami_json(rxd, "rxalice")["uid"] == 2001


@pytest.mark.cluster
def test_doctor_reports_slurm_and_apptainer(rxd: Rxd) -> None:
    result = rxd.rxctl("rxalice", "doctor", "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 0, report
    checks = report["checks"]
    assert set(checks) == {"door", "munge", "daemon", "ledger", "slurm", "apptainer"}
    assert checks["door"]["detail"] == f"local socket {rxd.socket} (--socket)"
    assert checks["slurm"]["version"].startswith("22.05") or checks["slurm"]["version"]
    # The real runtime the test daemons are configured with (tests/cluster/apptainer.sh).
    major, minor = checks["apptainer"]["version"].split(".")[:2]
    assert (int(major), int(minor)) >= (1, 4), checks["apptainer"]
    text = rxd.rxctl("rxalice", "doctor")
    assert text.returncode == 0
    assert [line.split()[1] for line in text.stdout.splitlines()] == [
        "door",
        "munge",
        "daemon",
        "ledger",
        "slurm",
        "apptainer",
    ]


def test_rxd_migrate_twice_changes_nothing() -> None:
    daemon = new_rxd()  # already migrated once
    again = daemon.migrate()
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"nothing to do; schema is at {known_names()[-1]}\n"


def test_rxd_refuses_a_config_with_an_unknown_key() -> None:
    daemon = new_rxd(extra_config="sokcet = 'typo'\n", migrate=False)
    result = subprocess.run(
        [str(VENV_BIN / "rxd"), "serve", "--config", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "unknown key daemon.sokcet" in result.stderr


# -- accounts that can never be bound, bounded audit data, throttled binds --------------------


@pytest.mark.parametrize(
    ("user", "why"),
    [
        ("daemon", "daemon (uid 1) is a system account (uid below 1000); it cannot be bound"),
        ("nobody", "nobody has no login shell (/usr/sbin/nologin); it cannot be bound"),
    ],
)
def test_an_account_that_can_never_be_bound_is_told_why_not_to_bind(
    rxd: Rxd, user: str, why: str
) -> None:
    if pwd.getpwnam(user).pw_shell != "/usr/sbin/nologin":
        pytest.skip(f"{user} has another shell on this machine")
    result = rxd.rxctl(user, "project", "create", "mine", "--image", "/srv/images/x.sif")
    assert result.returncode == 1
    assert result.stderr == f"Error: {why}, so it cannot use rx-slurm projects\n"
    assert "rxctl bind" not in result.stderr


def test_audit_events_store_long_values_capped_with_their_length_and_hash(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "ledger.db", migrate=True)
    long = "/" + "x" * 1_000_000
    with ledger.transaction() as db:
        record_event(
            db,
            actor="alice",
            actor_uid=2001,
            origin="socket",
            action="project.settings-changed",
            target_type="project",
            target_id="p",
            detail={"changes": {"image": ["/short.sif", long]}, "many": list(range(1000))},
        )
    (event,) = list_events(ledger)
    old, new = event.detail["changes"]["image"]
    assert old == "/short.sif"
    digest = hashlib.sha256(long.encode()).hexdigest()[:16]
    assert new == f"{long[:KEPT_CHARS]}…[{len(long)} chars, sha256 {digest}]"
    assert len(event.detail["many"]) == MAX_DETAIL_ITEMS + 1
    assert event.detail["many"][-1] == f"…[{1000 - MAX_DETAIL_ITEMS} more items]"
    stored = ledger.db.execute("SELECT length(detail) FROM events").fetchone()[0]
    assert stored < 2048


def _bindable(uid: int, min_uid: int) -> pwd.struct_passwd:
    return pwd.struct_passwd((f"user{uid}", "x", uid, uid, "", "/home/u", "/bin/bash"))


def test_failed_binds_are_throttled_per_uid_and_audited_a_bounded_number_of_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(identities, "linux_account", _bindable)
    ledger = Ledger.open(tmp_path / "ledger.db", migrate=True)
    config = parse_config({"identity": {"mode": "platform"}})
    now = [0.0]
    throttle = identities.BindThrottle(allowed=3, window_s=600, clock=lambda: now[0])

    def bind(uid: int, code: str = "AAAA-BBBB-CCCC") -> ApiError:
        with pytest.raises(ApiError) as err:
            identities.redeem_code(
                ledger, config, code=code, uid=uid, origin="socket", throttle=throttle
            )
        return err.value

    def refusals() -> int:
        return ledger.db["events"].count_where("action = 'identity.bind-refused'")

    for _ in range(3):
        assert bind(5000).message == "unknown binding code"
    assert refusals() == 3
    for _ in range(50):
        err = bind(5000)
        assert (err.status, err.code) == (429, "too_many_attempts")
        assert err.message == "too many failed binds for user5000; try again in 600 s"
    assert refusals() == 3  # throttled attempts write nothing
    assert bind(5001).message == "unknown binding code"  # another uid is not held back
    now[0] = 601.0
    assert bind(5000).message == "unknown binding code"
    assert refusals() == 5
