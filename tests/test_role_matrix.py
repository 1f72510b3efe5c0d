"""Every role against every action of daemon/roles.py, through rxctl as real users.

One project: rxalice owner, rxbob manager, rxcarol editor, rxdave viewer; rxop (an admin) and rxsvc
are not members. An allowed action must take effect (and is undone by the owner afterwards); a
refused one must be exit 1 with one `Error: ...` line naming the role it needs, and change nothing
the owner can see. Settings changes are validated against Slurm, so the module needs the cluster.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from rxslurm.daemon.roles import ALLOWED, Action, Role
from tests.support.daemon import Rxd, new_rxd

pytestmark = pytest.mark.cluster

PROJECT = "matrix"
OWNER = "rxalice"
SERVICE_ACCOUNT = "rxsvc"
# Who plays each part. "admin" and "non-member" are no project role: they are no members.
ACTORS = {
    Role.OWNER.value: "rxalice",
    Role.MANAGER.value: "rxbob",
    Role.EDITOR.value: "rxcarol",
    Role.VIEWER.value: "rxdave",
    "admin": "rxop",
    "non-member": "rxsvc",
}
MEMBERS = {"rxbob": Role.MANAGER, "rxcarol": Role.EDITOR, "rxdave": Role.VIEWER}

# Actions that have no rxctl command yet: the container lifecycle (issue 4) adds them here.
pending_issue_4 = [
    Action.START,
    Action.STOP,
    Action.SET_IMAGE,
    Action.EXEC,
    Action.ENABLE,
    Action.DISABLE,
    Action.RETRY,
]


@dataclass(frozen=True)
class Case:
    """One CLI command standing for an action: how to try it, see it done, and undo it."""

    action: Action
    argv: Callable[[dict[str, Any]], list[str]]  # from the owner's view of the project
    done: Callable[[dict[str, Any], dict[str, Any]], bool]  # (before, after) owner views
    undo: Callable[[dict[str, Any]], list[str]] | None = None  # from the before view


def role_of(view: dict[str, Any], user: str) -> str | None:
    return next((m["role"] for m in view["members"] if m["user"] == user), None)


def other_run_as(view: dict[str, Any]) -> str:
    return "bound" if view["run_as"] == "service" else "service"


CASES: dict[str, Case] = {
    "view": Case(
        Action.VIEW,
        argv=lambda v: ["project", "show", PROJECT, "--json"],
        done=lambda before, after: after == before,
    ),
    "edit-settings": Case(
        Action.EDIT_SETTINGS,
        argv=lambda v: ["project", "set", PROJECT, "--idle-timeout", "45"],
        done=lambda before, after: after["settings"]["idle_timeout_min"] == 45,
        undo=lambda v: ["project", "set", PROJECT, "--idle-timeout", "0"],
    ),
    "set-run-as": Case(
        Action.SET_RUN_AS,
        argv=lambda v: ["project", "run-as", PROJECT, other_run_as(v)],
        done=lambda before, after: after["run_as"] == other_run_as(before),
        undo=lambda v: ["project", "run-as", PROJECT, v["run_as"]],
    ),
    "member-add": Case(
        Action.MANAGE_MEMBERS,
        argv=lambda v: ["project", "member", "add", PROJECT, SERVICE_ACCOUNT, "--role", "viewer"],
        done=lambda before, after: role_of(after, SERVICE_ACCOUNT) == "viewer",
        undo=lambda v: ["project", "member", "rm", PROJECT, SERVICE_ACCOUNT],
    ),
    "member-rm": Case(
        Action.MANAGE_MEMBERS,
        argv=lambda v: ["project", "member", "rm", PROJECT, "rxdave"],
        done=lambda before, after: role_of(after, "rxdave") is None,
        undo=lambda v: ["project", "member", "add", PROJECT, "rxdave", "--role", "viewer"],
    ),
    "member-set-role": Case(
        Action.MANAGE_MEMBERS,
        argv=lambda v: ["project", "member", "set-role", PROJECT, "rxdave", "editor"],
        done=lambda before, after: role_of(after, "rxdave") == "editor",
        undo=lambda v: ["project", "member", "set-role", PROJECT, "rxdave", "viewer"],
    ),
}
DELETE_CASE = "delete-project"


def may(actor: str, action: Action) -> bool:
    if actor in (r.value for r in Role):
        return Role(actor) in ALLOWED[action]
    # Admins see every project (`project list` and `show`), but change only those they belong to.
    return actor == "admin" and action is Action.VIEW


def matrix() -> list[Any]:
    params = [
        pytest.param(case, actor, id=f"{case}-{actor}")
        for case in [*CASES, DELETE_CASE]
        for actor in ACTORS
    ]
    params += [
        pytest.param(
            action.value,
            actor,
            id=f"{action.value}-{actor}",
            marks=pytest.mark.skip(reason=f"pending_issue_4: no rxctl command for {action.value}"),
        )
        for action in pending_issue_4
        for actor in ACTORS
    ]
    return params


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    # A service account, so that run-as can be switched both ways.
    daemon = new_rxd(extra_config=f'[runtime]\nservice_account = "{SERVICE_ACCOUNT}"\n')
    daemon.start()
    # Standalone mode binds a user on their first call, which shows in the project's member
    # list (their linux_user): have everyone call once, so only the actions under test differ.
    for user in ACTORS.values():
        ok(daemon.rxctl(user, "whoami"))
    make_project(daemon, PROJECT)
    yield daemon
    if daemon.proc is not None and daemon.proc.poll() is None:
        assert daemon.stop() == 0, daemon.log_text()
    shutil.rmtree(daemon.root, ignore_errors=True)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result.stdout


def make_project(rxd: Rxd, name: str) -> None:
    ok(rxd.rxctl(OWNER, "project", "create", name))
    for user, role in MEMBERS.items():
        ok(rxd.rxctl(OWNER, "project", "member", "add", name, user, "--role", role.value))


def owner_view(rxd: Rxd, name: str = PROJECT) -> dict[str, Any]:
    return json.loads(ok(rxd.rxctl(OWNER, "project", "show", name, "--json")))


def assert_refused(
    result: subprocess.CompletedProcess[str], actor: str, action: Action, name: str
) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    if actor in (r.value for r in Role):
        needed = " or ".join(r.value for r in Role if r in ALLOWED[action])
        assert f"{action.value} in project {name} needs role {needed}; you are {actor}" in lines[0]
    else:
        # Those who are no member are not told whether the project exists.
        assert lines[0] == f"Error: no project named '{name}' (or you are not a member)"


def test_every_action_has_a_command_or_is_pending() -> None:
    covered = {case.action for case in CASES.values()} | {Action.DELETE_PROJECT}
    assert covered.isdisjoint(pending_issue_4)
    assert covered | set(pending_issue_4) == set(Action)


def test_the_fixture_project_has_one_member_per_role(rxd: Rxd) -> None:
    view = owner_view(rxd)
    assert {m["user"]: m["role"] for m in view["members"]} == {
        OWNER: "owner",
        **{user: role.value for user, role in MEMBERS.items()},
    }


@pytest.mark.parametrize(("case", "actor"), matrix())
def test_role_matrix(rxd: Rxd, case: str, actor: str) -> None:
    user = ACTORS[actor]
    if case == DELETE_CASE:
        check_delete(rxd, actor, user)
        return
    spec = CASES[case]
    before = owner_view(rxd)
    result = rxd.rxctl(user, *spec.argv(before))
    if not may(actor, spec.action):
        assert_refused(result, actor, spec.action, PROJECT)
        assert owner_view(rxd) == before
        return
    output = ok(result)
    if spec.action is Action.VIEW:
        shown = json.loads(output)
        assert (shown["name"], shown["members"]) == (PROJECT, before["members"])
        assert shown["role"] == (actor if actor in (r.value for r in Role) else None)
    after = owner_view(rxd)
    assert spec.done(before, after), after
    if spec.undo is not None:
        ok(rxd.rxctl(OWNER, *spec.undo(before)))
        assert owner_view(rxd) == before


def check_delete(rxd: Rxd, actor: str, user: str) -> None:
    # Its own project each time, with the same members: deleting the shared one cannot be undone.
    name = f"gone-{actor}"
    make_project(rxd, name)
    before = owner_view(rxd, name)
    result = rxd.rxctl(user, "project", "delete", name, "--yes")
    if may(actor, Action.DELETE_PROJECT):
        assert ok(result) == f"Deleted project {name}.\n"
        gone = rxd.rxctl(OWNER, "project", "show", name)
        assert gone.returncode == 1
        return
    assert_refused(result, actor, Action.DELETE_PROJECT, name)
    assert owner_view(rxd, name) == before
    ok(rxd.rxctl(OWNER, "project", "delete", name, "--yes"))
