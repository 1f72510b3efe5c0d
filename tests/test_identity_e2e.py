"""Platform identities end to end: admins issue codes, Linux users redeem them with `rxctl bind`.

A real rxd in platform mode on its own socket; every command runs as a real test user. Every
refusal is one `Error: ...` line, exit 1, and leaves the bindings as they were.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rxslurm.daemon.identity.bindings import code_hash
from rxslurm.daemon.ledger.timestamps import to_timestamp
from tests.support.cli import output, refused
from tests.support.daemon import Rxd, running_rxd

PLATFORM_MODE = '[identity]\nmode = "platform"\n'
ADMIN = "rxop"
NOT_ADMIN = "Error: this needs an rx-slurm admin (root or the admin group)"


@pytest.fixture
def rxd() -> Iterator[Rxd]:
    with running_rxd(PLATFORM_MODE) as daemon:
        yield daemon


def issue_code(rxd: Rxd, platform_user: str, *options: str) -> str:
    result = rxd.rxctl(ADMIN, "admin", "code", platform_user, *options)
    code = output(result).strip()
    assert result.stdout == code + "\n"  # the code alone, so `CODE=$(rxctl admin code ...)` works
    assert f"rxctl bind {code}" in result.stderr
    return code


def bindings(rxd: Rxd) -> list[dict[str, Any]]:
    return json.loads(output(rxd.rxctl(ADMIN, "admin", "bindings", "--json")))["bindings"]


def whoami(rxd: Rxd, user: str) -> dict[str, Any]:
    return json.loads(output(rxd.rxctl(user, "whoami", "--json")))


def audit(rxd: Rxd, *options: str) -> list[dict[str, Any]]:
    return json.loads(output(rxd.rxctl(ADMIN, "admin", "audit", "--json", *options)))["events"]


def test_admin_code_then_bind_shows_the_platform_user(rxd: Rxd) -> None:
    code = issue_code(rxd, "alice")
    assert bindings(rxd) == []
    result = rxd.rxctl("rxalice", "bind", code)
    assert output(result) == "Bound rxalice (uid 2001) to platform user alice\n"
    me = whoami(rxd, "rxalice")
    assert (me["platform_user"], me["bound"], me["identity_mode"]) == ("alice", True, "platform")
    [binding] = bindings(rxd)
    assert (binding["platform_user"], binding["uid"], binding["user"]) == ("alice", 2001, "rxalice")
    assert binding["bound_by"] == "rxalice"
    assert whoami(rxd, "rxbob")["bound"] is False


def test_bind_json_answers_the_binding(rxd: Rxd) -> None:
    code = issue_code(rxd, "alice")
    answer = json.loads(output(rxd.rxctl("rxalice", "bind", code, "--json")))
    assert answer == {"platform_user": "alice", "uid": 2001, "user": "rxalice"}


def test_admin_code_json_names_the_user_and_expiry(rxd: Rxd) -> None:
    result = rxd.rxctl(ADMIN, "admin", "code", "alice", "--linux-user", "rxalice", "--json")
    answer = json.loads(output(result))
    assert (answer["platform_user"], answer["linux_user"]) == ("alice", "rxalice")
    expires = datetime.fromisoformat(answer["expires_at"].replace("Z", "+00:00"))
    assert expires > datetime.now(UTC)


def test_a_used_code_cannot_be_used_again(rxd: Rxd) -> None:
    code = issue_code(rxd, "alice")
    output(rxd.rxctl("rxalice", "bind", code))
    before = bindings(rxd)
    assert refused(rxd.rxctl("rxbob", "bind", code)) == "Error: binding code already used"
    assert bindings(rxd) == before
    assert whoami(rxd, "rxbob")["bound"] is False


def test_an_unknown_code_is_refused(rxd: Rxd) -> None:
    issue_code(rxd, "alice")
    assert refused(rxd.rxctl("rxalice", "bind", "AAAA-BBBB-CCCC")) == (
        "Error: unknown binding code"
    )
    assert bindings(rxd) == []


def test_a_code_for_another_linux_user_is_refused_and_not_used_up(rxd: Rxd) -> None:
    code = issue_code(rxd, "alice", "--linux-user", "rxalice")
    line = refused(rxd.rxctl("rxbob", "bind", code))
    assert line == "Error: this binding code was issued for another Linux user, not rxbob"
    assert bindings(rxd) == []
    output(rxd.rxctl("rxalice", "bind", code))
    assert [b["user"] for b in bindings(rxd)] == ["rxalice"]


@pytest.mark.parametrize("ttl", ["0", "-5", "1441"])
def test_code_lifetime_outside_1_to_1440_minutes_is_refused(rxd: Rxd, ttl: str) -> None:
    line = refused(rxd.rxctl(ADMIN, "admin", "code", "alice", "--ttl", ttl))
    assert line == "Error: ttl_min must be a whole number of minutes from 1 to 1440"


def test_an_expired_code_is_refused(rxd: Rxd) -> None:
    # rxd's clock cannot be moved from outside and a code lives at least a minute, so the test
    # moves the code's expiry into the past in the ledger instead of waiting.
    code = issue_code(rxd, "alice", "--ttl", "1")
    past = to_timestamp(datetime.now(UTC) - timedelta(seconds=1))
    with sqlite3.connect(rxd.ledger, timeout=30) as db:
        changed = db.execute(
            "UPDATE binding_codes SET expires_at = ? WHERE code_hash = ?", [past, code_hash(code)]
        ).rowcount
    assert changed == 1
    line = refused(rxd.rxctl("rxalice", "bind", code))
    assert line == "Error: binding code expired; ask for a new one"
    assert bindings(rxd) == []
    assert whoami(rxd, "rxalice")["bound"] is False


def test_a_platform_user_bound_to_someone_else_cannot_be_bound_again(rxd: Rxd) -> None:
    output(rxd.rxctl("rxalice", "bind", issue_code(rxd, "alice")))
    before = bindings(rxd)
    line = refused(rxd.rxctl("rxbob", "bind", issue_code(rxd, "alice")))
    assert line == (
        "Error: platform user alice is already bound to Linux user rxalice; unbind first"
    )
    assert bindings(rxd) == before


def test_a_bound_linux_user_cannot_bind_a_second_platform_user(rxd: Rxd) -> None:
    output(rxd.rxctl("rxalice", "bind", issue_code(rxd, "alice")))
    before = bindings(rxd)
    line = refused(rxd.rxctl("rxalice", "bind", issue_code(rxd, "alice2")))
    assert line == "Error: Linux user rxalice is already bound to another platform user"
    assert bindings(rxd) == before
    assert whoami(rxd, "rxalice")["platform_user"] == "alice"


def test_root_cannot_bind_and_the_code_stays_usable(rxd: Rxd) -> None:
    code = issue_code(rxd, "alice")
    line = refused(rxd.rxctl(None, "bind", code))
    assert line == "Error: root cannot be bound to a platform identity"
    assert bindings(rxd) == []
    output(rxd.rxctl("rxalice", "bind", code))


def test_a_system_account_cannot_bind(rxd: Rxd) -> None:
    code = issue_code(rxd, "sys")
    line = refused(rxd.rxctl("rxsys", "bind", code))
    assert line == (
        "Error: rxsys (uid 990) is a system account (uid below 1000); it cannot be bound"
    )
    assert bindings(rxd) == []


@pytest.mark.parametrize(
    ("linux_user", "message"),
    [
        ("root", "Error: root cannot be bound to a platform identity"),
        (
            "rxsys",
            "Error: rxsys (uid 990) is a system account (uid below 1000); it cannot be bound",
        ),
        ("rx-nobody-here", "Error: no Linux user named 'rx-nobody-here'"),
    ],
)
def test_admin_cannot_bind_root_system_or_unknown_accounts(
    rxd: Rxd, linux_user: str, message: str
) -> None:
    assert refused(rxd.rxctl(ADMIN, "admin", "bind", "x", linux_user)) == message
    assert bindings(rxd) == []


def test_unbind_removes_the_binding(rxd: Rxd) -> None:
    output(rxd.rxctl("rxalice", "bind", issue_code(rxd, "alice")))
    result = rxd.rxctl("rxalice", "unbind")
    assert output(result) == "Unbound rxalice (uid 2001) from platform user alice\n"
    assert bindings(rxd) == []
    assert whoami(rxd, "rxalice")["bound"] is False
    line = refused(rxd.rxctl("rxalice", "unbind"))
    assert line == "Error: you have no bound platform identity"
    # Unbound, the platform user can be bound again with a new code.
    output(rxd.rxctl("rxalice", "bind", issue_code(rxd, "alice")))
    assert [b["platform_user"] for b in bindings(rxd)] == ["alice"]


def test_admin_bind_and_unbind_by_either_name(rxd: Rxd) -> None:
    result = rxd.rxctl(ADMIN, "admin", "bind", "carol", "rxcarol")
    assert output(result) == "Bound rxcarol to platform user carol.\n"
    [binding] = bindings(rxd)
    assert (binding["platform_user"], binding["user"], binding["bound_by"]) == (
        "carol",
        "rxcarol",
        ADMIN,
    )
    assert whoami(rxd, "rxcarol")["platform_user"] == "carol"
    assert output(rxd.rxctl(ADMIN, "admin", "unbind", "carol")) == (
        "Unbound rxcarol from platform user carol.\n"
    )
    assert bindings(rxd) == []

    output(rxd.rxctl(ADMIN, "admin", "bind", "carol", "rxcarol"))
    answer = json.loads(
        output(rxd.rxctl(ADMIN, "admin", "unbind", "--linux-user", "rxcarol", "--json"))
    )
    assert (answer["platform_user"], answer["user"]) == ("carol", "rxcarol")
    assert bindings(rxd) == []
    assert refused(rxd.rxctl(ADMIN, "admin", "unbind", "carol")) == "Error: no such binding"


def test_admin_bind_refuses_a_taken_platform_user_or_linux_user(rxd: Rxd) -> None:
    output(rxd.rxctl(ADMIN, "admin", "bind", "carol", "rxcarol"))
    before = bindings(rxd)
    line = refused(rxd.rxctl(ADMIN, "admin", "bind", "carol", "rxdave"))
    assert line == "Error: platform user carol is already bound to Linux user rxcarol; unbind first"
    line = refused(rxd.rxctl(ADMIN, "admin", "bind", "dave", "rxcarol"))
    assert line == "Error: Linux user rxcarol is already bound to another platform user"
    assert bindings(rxd) == before


@pytest.mark.parametrize(
    "args",
    [
        ("admin", "code", "alice"),
        ("admin", "code", "alice", "--linux-user", "rxalice"),
        ("admin", "bind", "alice", "rxalice"),
        ("admin", "unbind", "carol"),
        ("admin", "bindings"),
        ("admin", "audit"),
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_non_admins_cannot_use_admin_commands(rxd: Rxd, args: tuple[str, ...]) -> None:
    output(rxd.rxctl(ADMIN, "admin", "bind", "carol", "rxcarol"))
    before = bindings(rxd)
    events_before = audit(rxd)
    for user in ("rxalice", "rxcarol"):
        assert refused(rxd.rxctl(user, *args)) == NOT_ADMIN
    assert bindings(rxd) == before
    assert audit(rxd) == events_before


def test_root_is_an_admin(rxd: Rxd) -> None:
    code = output(rxd.rxctl(None, "admin", "code", "alice")).strip()
    output(rxd.rxctl("rxalice", "bind", code))
    assert [b["user"] for b in bindings(rxd)] == ["rxalice"]


def test_an_unbound_user_is_told_to_bind_before_creating_a_project(rxd: Rxd) -> None:
    line = refused(rxd.rxctl("rxbob", "project", "create", "bobs"))
    assert line == "Error: you have no bound platform identity; run `rxctl bind CODE` first"


def test_audit_shows_binds_and_unbinds_with_actor_and_origin(rxd: Rxd) -> None:
    code = issue_code(rxd, "alice", "--linux-user", "rxalice")
    refused(rxd.rxctl("rxbob", "bind", code))
    output(rxd.rxctl("rxalice", "bind", code))
    output(rxd.rxctl("rxalice", "unbind"))
    output(rxd.rxctl(ADMIN, "admin", "bind", "carol", "rxcarol"))
    output(rxd.rxctl(ADMIN, "admin", "unbind", "--linux-user", "rxcarol"))

    events = audit(rxd)
    seen = [(e["action"], e["actor"], e["origin"], e["target_id"]) for e in events]
    for expected in [
        ("identity.code-issued", ADMIN, "socket", "alice"),
        ("identity.bind-refused", "rxbob", "socket", "rxbob"),
        ("identity.bound", "alice", "socket", "alice"),
        ("identity.unbound", "alice", "socket", "alice"),
        ("identity.bound", ADMIN, "socket", "carol"),
        ("identity.unbound", ADMIN, "socket", "carol"),
    ]:
        assert expected in seen, f"{expected} not in the audit log: {seen}"
    refusal = next(e for e in events if e["action"] == "identity.bind-refused")
    assert "another Linux user" in refusal["detail"]["reason"]
    bound = next(e for e in events if e["action"] == "identity.bound" and e["actor"] == "alice")
    assert bound["actor_uid"] == 2001
    assert bound["detail"]["user"] == "rxalice"


def test_audit_limit_since_and_text(rxd: Rxd) -> None:
    for user in ("alice", "bob", "carol"):
        issue_code(rxd, user)
    assert len(audit(rxd)) == 3
    assert len(audit(rxd, "--limit", "1")) == 1
    assert audit(rxd, "--since", "2999-01-01T00:00:00Z") == []
    assert len(audit(rxd, "--since", "2000-01-01T00:00:00Z")) == 3
    line = refused(rxd.rxctl(ADMIN, "admin", "audit", "--since", "yesterday"))
    assert line.startswith("Error: since must be an ISO-8601 time")
    text = output(rxd.rxctl(ADMIN, "admin", "audit")).splitlines()
    assert text[0].split() == ["AT", "ACTOR", "ORIGIN", "ACTION", "TARGET", "DETAIL"]
    assert sum("identity.code-issued" in line for line in text[1:]) == 3


def test_bindings_text_is_a_table(rxd: Rxd) -> None:
    assert output(rxd.rxctl(ADMIN, "admin", "bindings")) == "no bindings\n"
    output(rxd.rxctl(ADMIN, "admin", "bind", "carol", "rxcarol"))
    header, row = output(rxd.rxctl(ADMIN, "admin", "bindings")).splitlines()
    assert header.split() == [
        "PLATFORM",
        "USER",
        "LINUX",
        "USER",
        "UID",
        "BOUND",
        "AT",
        "BOUND",
        "BY",
    ]
    assert row.split()[:3] == ["carol", "rxcarol", "2003"]
    assert row.split()[-1] == ADMIN


@pytest.mark.root(reason="starts a real rxd")
def test_bind_in_local_mode_says_binding_is_automatic() -> None:
    with running_rxd() as daemon:
        line = refused(daemon.rxctl("rxalice", "bind", "AAAA-BBBB-CCCC"))
        assert line == (
            "Error: this deployment runs in standalone mode: "
            "every Linux user is bound automatically"
        )
        assert whoami(daemon, "rxalice")["platform_user"] == "rxalice"
