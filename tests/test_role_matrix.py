"""Every role against every action of rxslurm/daemon/projects/roles.py, through rxctl as real users.

One project: rxalice owner, rxbob manager, rxcarol editor, rxdave viewer; rxop (an admin) and rxsvc
are not members. An allowed action must take effect (and is undone by the owner afterwards); a
refused one must be exit 1 with one `Error: ...` line naming the role it needs, and change nothing
the owner can see. Settings changes are validated against Slurm, so the module needs the cluster.

The container actions act on real holder jobs. Each of their cells first brings its container to a
state where the action would change something (the owner does that, the cheapest way from where it
is), so any cell can run alone; in the order below, most cells find their state already there and
the module starts few jobs.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rxslurm.daemon.projects.roles import ALLOWED, Action, Role
from tests.support import lifecycle as support_lifecycle
from tests.support.cli import output
from tests.support.cluster import run_as
from tests.support.daemon import Rxd
from tests.support.lifecycle import lifecycle_rxd
from tests.support.real_apptainer import BASE_IMAGE, link_image

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("container_runtime")]

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

# A definition draft every test user may read (rxctl reads it as the user who runs it); this
# process's own, so that two runs of the module side by side never rewrite each other's.
DRAFT_FILE = str(Path(tempfile.gettempdir()) / "rxslurm-tests" / f"role-matrix-{os.getpid()}.def")
DRAFT = "Bootstrap: localimage\nFrom: /images/base.sif\n\n%post\n    true\n"

# Actions that have no rxctl command yet, and why.
PENDING: dict[Action, str] = {
    # Both need an enabled container with an overlay; tests/test_export_e2e.py tries who may.
    Action.EXPORT: "export is tried per role in tests/test_export_e2e.py",
    Action.IMPORT: "import is tried per role in tests/test_export_e2e.py",
}


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
        argv=lambda v: ["project", "show", "--project", PROJECT, "--json"],
        done=lambda before, after: after == before,
    ),
    "edit-settings": Case(
        Action.EDIT_SETTINGS,
        argv=lambda v: ["project", "set", "--project", PROJECT, "--idle-timeout", "45"],
        done=lambda before, after: after["settings"]["idle_timeout_min"] == 45,
        undo=lambda v: ["project", "set", "--project", PROJECT, "--idle-timeout", "0"],
    ),
    "set-run-as": Case(
        Action.SET_RUN_AS,
        argv=lambda v: ["project", "run-as", "--project", PROJECT, other_run_as(v)],
        done=lambda before, after: after["run_as"] == other_run_as(before),
        undo=lambda v: ["project", "run-as", "--project", PROJECT, v["run_as"]],
    ),
    "member-add": Case(
        Action.MANAGE_MEMBERS,
        argv=lambda v: [
            "project",
            "member",
            "add",
            "--project",
            PROJECT,
            SERVICE_ACCOUNT,
            "--role",
            "viewer",
        ],
        done=lambda before, after: role_of(after, SERVICE_ACCOUNT) == "viewer",
        undo=lambda v: ["project", "member", "rm", "--project", PROJECT, SERVICE_ACCOUNT],
    ),
    "member-rm": Case(
        Action.MANAGE_MEMBERS,
        argv=lambda v: ["project", "member", "rm", "--project", PROJECT, "rxdave"],
        done=lambda before, after: role_of(after, "rxdave") is None,
        undo=lambda v: [
            "project",
            "member",
            "add",
            "--project",
            PROJECT,
            "rxdave",
            "--role",
            "viewer",
        ],
    ),
    # Building needs workspace write access: a draft is the first thing a build needs.
    "build": Case(
        Action.BUILD,
        argv=lambda v: [
            "image",
            "draft",
            "create",
            "--project",
            PROJECT,
            "rm-draft",
            "--file",
            DRAFT_FILE,
        ],  # fmt: skip
        done=lambda before, after: after["drafts"] == ["rm-draft"],
        undo=lambda v: ["image", "draft", "delete", "--project", PROJECT, "rm-draft"],
    ),
    "env-set": Case(
        Action.EDIT_ENV,
        argv=lambda v: ["env", "set", "--project", PROJECT, "RM_VAR=1"],
        done=lambda before, after: after["env"] == {**before["env"], "RM_VAR": "1"},
        undo=lambda v: ["env", "unset", "--project", PROJECT, "RM_VAR"],
    ),
    # The value comes from stdin: empty here.
    "secret-set": Case(
        Action.EDIT_ENV,
        argv=lambda v: ["secret", "set", "--project", PROJECT, "RM_SECRET"],
        done=lambda before, after: after["secrets"] == [*before["secrets"], "RM_SECRET"],
        undo=lambda v: ["secret", "rm", "--project", PROJECT, "RM_SECRET"],
    ),
    "member-set-role": Case(
        Action.MANAGE_MEMBERS,
        argv=lambda v: ["project", "member", "set-role", "--project", PROJECT, "rxdave", "editor"],
        done=lambda before, after: role_of(after, "rxdave") == "editor",
        undo=lambda v: ["project", "member", "set-role", "--project", PROJECT, "rxdave", "viewer"],
    ),
}
DELETE_CASE = "delete-project"


def may(actor: str, action: Action) -> bool:
    if actor in (r.value for r in Role):
        return Role(actor) in ALLOWED[action]
    # Admins see every project (`project list` and `show`), but change only those they belong to.
    return actor == "admin" and action is Action.VIEW


def matrix() -> list[Any]:
    return [
        pytest.param(case, actor, id=f"{case}-{actor}")
        for case in [*CASES, DELETE_CASE]
        for actor in ACTORS
    ]


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    # A service account, so that run-as can be switched both ways; fast reconciling for containers.
    # Standalone mode binds a user on their first call, which shows in the project's member
    # list (their linux_user): have everyone call once, so only the actions under test differ.
    service = f'[runtime]\nservice_account = "{SERVICE_ACCOUNT}"\n[builds]\nenabled = true\n'
    draft = Path(DRAFT_FILE)
    draft.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    draft.write_text(DRAFT)
    draft.chmod(0o644)
    try:
        with lifecycle_rxd(service, bind=ACTORS.values()) as daemon:
            make_project(daemon, PROJECT)
            make_project(daemon, LIVE, "--image", IMAGE)
            make_project(daemon, BROKEN, "--image", str(late_image(daemon)))
            yield daemon
    finally:
        draft.unlink(missing_ok=True)


def make_project(rxd: Rxd, name: str, *options: str) -> None:
    output(rxd.rxctl(OWNER, "project", "create", name, *options))
    for user, role in MEMBERS.items():
        output(
            rxd.rxctl(
                OWNER, "project", "member", "add", "--project", name, user, "--role", role.value
            )
        )


def owner_view(rxd: Rxd, name: str = PROJECT) -> dict[str, Any]:
    """The owner's `project show`, with the names of the project's image drafts."""
    view: dict[str, Any] = json.loads(
        output(rxd.rxctl(OWNER, "project", "show", "--project", name, "--json"))
    )
    drafts = json.loads(
        output(rxd.rxctl(OWNER, "image", "draft", "list", "--project", name, "--json"))
    )
    view["drafts"] = [d["name"] for d in drafts["drafts"]]
    env = json.loads(output(rxd.rxctl(OWNER, "env", "list", "--project", name, "--json")))
    view["env"] = {v["name"]: v["value"] for v in env["variables"]}
    held = json.loads(output(rxd.rxctl(OWNER, "secret", "list", "--project", name, "--json")))
    view["secrets"] = [s["name"] for s in held["secrets"]]
    return view


def assert_refused(
    result: subprocess.CompletedProcess[str], actor: str, action: Action, name: str
) -> None:
    # rxctl exec's own failures exit 125 (as docker run's), so they differ from the command's.
    expected = 125 if result.args[3] in ("exec", "shell") else 1
    assert result.returncode == expected, (result.stdout, result.stderr)
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
    covered = (
        {case.action for case in CASES.values()}
        | {Action.DELETE_PROJECT, Action.RUN}
        | set(CONTAINER_CASES)
    )
    assert covered.isdisjoint(PENDING)
    assert covered | set(PENDING) == set(Action)
    # Each container cell once, in an order that reuses the container's state.
    assert sorted(CONTAINER_ORDER) == sorted(
        (a, actor) for a in CONTAINER_CASES for actor in ACTORS
    )


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
    printed = output(result)
    if spec.action is Action.VIEW:
        shown = json.loads(printed)
        assert (shown["name"], shown["members"]) == (PROJECT, before["members"])
        assert shown["role"] == (actor if actor in (r.value for r in Role) else None)
    after = owner_view(rxd)
    assert spec.done(before, after), after
    if spec.undo is not None:
        output(rxd.rxctl(OWNER, *spec.undo(before)))
        assert owner_view(rxd) == before


def check_delete(rxd: Rxd, actor: str, user: str) -> None:
    # Its own project each time, with the same members: deleting the shared one cannot be undone.
    name = f"gone-{actor}"
    make_project(rxd, name)
    before = owner_view(rxd, name)
    result = rxd.rxctl(user, "project", "delete", "--project", name, "--yes")
    if may(actor, Action.DELETE_PROJECT):
        assert output(result) == f"Deleted project {name}.\n"
        gone = rxd.rxctl(OWNER, "project", "show", "--project", name)
        assert gone.returncode == 1
        return
    assert_refused(result, actor, Action.DELETE_PROJECT, name)
    assert owner_view(rxd, name) == before
    output(rxd.rxctl(OWNER, "project", "delete", "--project", name, "--yes"))


# -- the container's actions -------------------------------------------------------------------

IMAGE = str(BASE_IMAGE)
# Holder jobs are Slurm singletons named rx-<project>: these names are this module's own.
LIVE = "rm-live"  # a container that works
BROKEN = "rm-broken"  # its image is a local path that exists only once retry's cell puts it there
# A job holds the container in these states (the owner's `status`).
HOLDING = ("waiting_for_resources", "starting", "running")
# The reconciler leaves these alone: a refused cell can see that nothing moved.
SETTLED = ("disabled", "stopped", "running", "error")
START_TIMEOUT_S = 120.0


def late_image(rxd: Rxd) -> Path:
    return rxd.root / "late" / "python.sif"


def status(rxd: Rxd, project: str) -> dict[str, Any]:
    return support_lifecycle.status(rxd, OWNER, project)


def wait_state(rxd: Rxd, project: str, *states: str, timeout: float = START_TIMEOUT_S) -> dict:
    return support_lifecycle.wait_state(rxd, project, *states, timeout=timeout, user=OWNER)


def wait_holding(rxd: Rxd, project: str) -> dict[str, Any]:
    # Waking answers once the job is submitted, so its id shows right away.
    now = wait_state(rxd, project, *HOLDING)
    assert now["job_id"] is not None, now
    return now


def as_owner(rxd: Rxd, command: str, project: str) -> None:
    output(rxd.rxctl(OWNER, command, "--project", project))


def bring(rxd: Rxd, project: str, want: str) -> dict[str, Any]:
    """Bring the container to `want` as its owner, the cheapest way from where it is.

    `want` is a state, or "holding" (any state with a job). Returns the owner's status there.
    """
    now = status(rxd, project)
    if now["state"] == "stopping":
        now = wait_state(rxd, project, "stopped")
    if want == "error":
        return break_container(rxd, project, now)
    if want == "disabled":
        if now["state"] != "disabled":
            as_owner(rxd, "disable", project)
        return wait_state(rxd, project, "disabled")
    assert now["state"] != "error", f"{project} is in error: {now['last_error']}"
    if now["state"] == "disabled":
        as_owner(rxd, "enable", project)
    elif now["state"] == "stopped" and want != "stopped":
        as_owner(rxd, "start", project)
    if want == "holding":
        return wait_holding(rxd, project)
    if want == "stopped":
        if status(rxd, project)["state"] != "stopped":
            as_owner(rxd, "stop", project)
        return wait_state(rxd, project, "stopped")
    assert want == "running", want
    return wait_state(rxd, project, "running")


def break_container(rxd: Rxd, project: str, now: dict[str, Any]) -> dict[str, Any]:
    """Put BROKEN in `error`: its image path is missing, so the holder's instance start fails
    and the reconciler records the holder's `error: ...` line."""
    assert project == BROKEN
    if now["state"] == "error":
        return now
    if now["state"] != "disabled":
        as_owner(rxd, "disable", project)
    late_image(rxd).unlink(missing_ok=True)
    as_owner(rxd, "enable", project)
    failed = wait_state(rxd, project, "error")
    assert "could not open image" in failed["last_error"], failed
    return failed


def mend_image(rxd: Rxd) -> None:
    """Put BROKEN's image in place: the base image the test cluster built."""
    link_image(late_image(rxd))


def exec_marker(rxd: Rxd, actor: str) -> Path:
    """The file `rxctl exec` by `actor` creates in LIVE's workspace (checked here as root)."""
    return Path(status(rxd, LIVE)["workspace"]) / f"exec-by-{actor}"


def exec_argv(actor: str) -> list[str]:
    return ["exec", "--project", LIVE, "--", "touch", f"/workspace/exec-by-{actor}"]


def check_enable(rxd: Rxd, actor: str, before: dict[str, Any]) -> None:
    wait_holding(rxd, LIVE)


def check_start(rxd: Rxd, actor: str, before: dict[str, Any]) -> None:
    wait_holding(rxd, LIVE)


def check_stop(rxd: Rxd, actor: str, before: dict[str, Any]) -> None:
    stopped = wait_state(rxd, LIVE, "stopped")
    assert stopped["job_id"] is None and stopped["desired"] == "stopped", stopped


def check_disable(rxd: Rxd, actor: str, before: dict[str, Any]) -> None:
    assert status(rxd, LIVE)["state"] == "disabled"


def check_exec(rxd: Rxd, actor: str, before: dict[str, Any]) -> None:
    marker = exec_marker(rxd, actor)
    # Everyone's command runs as the container's user (here the service account), not as them.
    runtime_uid = pwd.getpwnam(before["runtime_user"]).pw_uid
    assert marker.exists() and marker.stat().st_uid == runtime_uid, marker
    after = status(rxd, LIVE)
    assert (after["state"], after["job_id"]) == ("running", before["job_id"])


def check_retry(rxd: Rxd, actor: str, before: dict[str, Any]) -> None:
    # A new job with the image now in place: the container runs.
    running = wait_state(rxd, BROKEN, "running")
    assert running["last_error"] is None and running["job_id"] != before["job_id"], running


def check_logs(rxd: Rxd, actor: str, before: dict[str, Any]) -> None:
    # The whole of Apptainer's message, where the status has only its last FATAL line.
    shown = output(rxd.rxctl(ACTORS[actor], "logs", "--project", BROKEN))
    assert "rx-holder: starting" in shown and "could not open image" in shown, shown
    assert status(rxd, BROKEN)["state"] == "error"


def set_by(actor: str) -> str:
    """The image `rxctl image set` names in `actor`'s cell: a file no start ever runs (the owner
    sets the project's image back before anything starts again)."""
    return f"/nonexistent/set-by-{actor}.sif"


def set_image_argv(actor: str) -> list[str]:
    return ["image", "set", "--project", LIVE, set_by(actor)]


def check_set_image(rxd: Rxd, actor: str, before: dict[str, Any]) -> None:
    # The running job keeps its image; the project's is the new one, and a restart is pending.
    assert owner_view(rxd, LIVE)["settings"]["image"] == set_by(actor)
    after = status(rxd, LIVE)
    assert (after["state"], after["job_id"]) == ("running", before["job_id"]), after
    assert after["settings_pending"] is True, after
    output(rxd.rxctl(OWNER, "project", "set", LIVE, "--image", IMAGE))
    assert status(rxd, LIVE)["settings_pending"] is False


@dataclass(frozen=True)
class ContainerCase:
    """A container action: its command, the state where trying it would change something, and
    how an allowed attempt shows."""

    project: str
    argv: Callable[[str], list[str]]  # for the actor
    refused_in: str  # the state a refused attempt meets (see `bring`)
    allowed_in: str  # the state an allowed attempt starts from
    check: Callable[[Rxd, str, dict[str, Any]], None]  # (rxd, actor, owner's status before)
    prepare: Callable[[Rxd], None] | None = None  # before an allowed attempt


def lifecycle(command: str, project: str = LIVE) -> Callable[[str], list[str]]:
    return lambda actor: [command, "--project", project]


CONTAINER_CASES: dict[Action, ContainerCase] = {
    Action.ENABLE: ContainerCase(LIVE, lifecycle("enable"), "disabled", "disabled", check_enable),
    Action.EXEC: ContainerCase(LIVE, exec_argv, "running", "running", check_exec),
    Action.SET_IMAGE: ContainerCase(LIVE, set_image_argv, "running", "running", check_set_image),
    Action.START: ContainerCase(LIVE, lifecycle("start"), "stopped", "stopped", check_start),
    Action.STOP: ContainerCase(LIVE, lifecycle("stop"), "running", "holding", check_stop),
    Action.DISABLE: ContainerCase(LIVE, lifecycle("disable"), "running", "stopped", check_disable),
    Action.LOGS: ContainerCase(BROKEN, lifecycle("logs", BROKEN), "error", "error", check_logs),
    Action.RETRY: ContainerCase(
        BROKEN, lifecycle("retry", BROKEN), "error", "error", check_retry, prepare=mend_image
    ),
}


def refusing(action: Action) -> list[tuple[Action, str]]:
    return [(action, actor) for actor in ACTORS if not may(actor, action)]


def allowing(action: Action) -> list[tuple[Action, str]]:
    return [(action, actor) for actor in ACTORS if may(actor, action)]


# Ordered so that each cell mostly finds its container in the state it needs: one enable reaches
# `running` for all exec cells, refused cells need no job of their own, and the two starts end
# before anything else waits on a job.
CONTAINER_ORDER: list[tuple[Action, str]] = [
    *refusing(Action.ENABLE),
    (Action.ENABLE, Role.OWNER.value),
    *refusing(Action.EXEC),
    *allowing(Action.EXEC),
    *refusing(Action.SET_IMAGE),
    *allowing(Action.SET_IMAGE),
    *refusing(Action.STOP),
    *refusing(Action.DISABLE),
    (Action.STOP, Role.OWNER.value),
    *refusing(Action.START),
    (Action.START, Role.OWNER.value),
    (Action.START, Role.MANAGER.value),
    (Action.STOP, Role.MANAGER.value),
    (Action.DISABLE, Role.OWNER.value),
    *refusing(Action.LOGS),
    *allowing(Action.LOGS),
    *refusing(Action.RETRY),
    *allowing(Action.RETRY),
]


def container_matrix() -> list[Any]:
    params = [
        pytest.param(action, actor, id=f"{action.value}-{actor}")
        for action, actor in CONTAINER_ORDER
    ]
    params += [
        pytest.param(
            action, actor, id=f"{action.value}-{actor}", marks=pytest.mark.skip(reason=why)
        )
        for action, why in PENDING.items()
        for actor in ACTORS
    ]
    return params


def essentials(view: dict[str, Any]) -> tuple[Any, ...]:
    return view["state"], view["job_id"], view["desired"]


@pytest.mark.parametrize(("action", "actor"), container_matrix())
def test_container_role_matrix(rxd: Rxd, action: Action, actor: str) -> None:
    case = CONTAINER_CASES[action]
    allowed = may(actor, action)
    before = bring(rxd, case.project, case.allowed_in if allowed else case.refused_in)
    if action is Action.EXEC:
        exec_marker(rxd, actor).unlink(missing_ok=True)
    if allowed and case.prepare is not None:
        case.prepare(rxd)
    image = owner_view(rxd, case.project)["settings"]["image"]
    result = rxd.rxctl(ACTORS[actor], *case.argv(actor))
    if allowed:
        output(result)
        case.check(rxd, actor, before)
        return
    assert_refused(result, actor, action, case.project)
    assert before["state"] in SETTLED
    assert essentials(status(rxd, case.project)) == essentials(before)
    assert owner_view(rxd, case.project)["settings"]["image"] == image
    if action is Action.EXEC:
        assert not exec_marker(rxd, actor).exists()


# -- run: the batch plan a member's own batch step asks for -------------------------------------


@pytest.mark.parametrize("actor", list(ACTORS))
def test_run_role_matrix(rxd: Rxd, actor: str) -> None:
    """`run` is asked through the batch plan (GET .../batch-plan, as `rxctl run` and the SPANK
    plugin ask it); it reads and changes nothing."""
    before = owner_view(rxd, LIVE)
    url = f"http://rxd/v1/projects/{LIVE}/batch-plan"
    result = run_as(
        ACTORS[actor],
        [
            "curl",
            "--silent",
            "--write-out",
            "\\n%{http_code}",
            "--unix-socket",
            str(rxd.socket),
            url,
        ],
    )
    body, _, code = result.stdout.rpartition("\n")
    answer = json.loads(body)
    if may(actor, Action.RUN):
        assert code == "200", answer
        assert (answer["project"], answer["image"], answer["workspace_target"]) == (
            LIVE,
            IMAGE,
            "/workspace",
        )
    elif actor in (r.value for r in Role):
        assert code == "403", answer
        needed = " or ".join(r.value for r in Role if r in ALLOWED[Action.RUN])
        assert answer["error"]["message"] == (
            f"run in project {LIVE} needs role {needed}; you are {actor}"
        )
    else:
        assert code == "404", answer
        assert answer["error"]["message"] == f"no project named '{LIVE}' (or you are not a member)"
    assert owner_view(rxd, LIVE) == before
