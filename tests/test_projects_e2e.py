"""Projects end to end in standalone (local) mode: real rxd, real socket, real test users.

Every project create and settings change is validated against what Slurm reports about its
partitions, so this whole module needs the test cluster.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import output, refused
from tests.support.daemon import Rxd, running_rxd

pytestmark = pytest.mark.cluster

SERVICE_ACCOUNT = "rxsvc"
NOT_VISIBLE = "Error: no project named '{}' (or you are not a member)"
BAD_NAME = (
    "Error: project name must be 1-21 characters: lowercase letters, digits and '-', "
    "starting with a letter and not ending with '-'"
)


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    """One daemon for the module: tests use their own project names."""
    with running_rxd(f'[runtime]\nservice_account = "{SERVICE_ACCOUNT}"\n') as daemon:
        yield daemon


def show(rxd: Rxd, user: str, name: str) -> dict[str, Any]:
    return json.loads(output(rxd.rxctl(user, "project", "show", "--project", name, "--json")))


def names(rxd: Rxd, user: str) -> list[str]:
    answer = json.loads(output(rxd.rxctl(user, "project", "list", "--json")))
    return [p["name"] for p in answer["projects"]]


def create(rxd: Rxd, user: str, name: str, *options: str) -> dict[str, Any]:
    return json.loads(output(rxd.rxctl(user, "project", "create", name, *options, "--json")))


def test_create_makes_the_caller_owner(rxd: Rxd) -> None:
    result = rxd.rxctl("rxalice", "project", "create", "own")
    assert output(result) == "Created project own; you are its owner.\n"
    project = show(rxd, "rxalice", "own")
    assert project["name"] == "own"
    assert project["role"] == "owner"
    assert project["created_by"] == "rxalice"
    assert project["members"] == [{"user": "rxalice", "role": "owner", "linux_user": "rxalice"}]
    assert project["container"] is None
    assert project["settings_pending"] is False
    workspace = Path(project["workspace"])
    assert workspace.parent.parent == rxd.root and workspace.name == "own"
    assert workspace.is_dir()


def test_each_user_sees_only_their_own_projects(rxd: Rxd) -> None:
    create(rxd, "rxalice", "alices")
    create(rxd, "rxbob", "bobs")
    assert "alices" in names(rxd, "rxalice") and "bobs" not in names(rxd, "rxalice")
    assert "bobs" in names(rxd, "rxbob") and "alices" not in names(rxd, "rxbob")
    text = output(rxd.rxctl("rxbob", "project", "list")).splitlines()
    assert text[0].split() == ["PROJECT", "ROLE", "STATE", "CREATED", "BY"]
    assert ["bobs", "owner", "disabled", "rxbob"] in [line.split() for line in text[1:]]
    assert not any(line.startswith("alices") for line in text)
    # An admin sees every project.
    assert {"alices", "bobs"} <= set(names(rxd, "rxop"))


def test_a_user_without_projects_is_told_how_to_make_one(rxd: Rxd) -> None:
    assert output(rxd.rxctl("rxdave", "project", "list")) == (
        "no projects yet; create one with: rxctl project create NAME\n"
    )


@pytest.mark.parametrize(
    "args",
    [
        ("project", "show", "--project", "{}"),
        ("project", "set", "--project", "{}", "--cpus", "1"),
        ("project", "run-as", "--project", "{}", "bound"),
        ("project", "member", "add", "--project", "{}", "rxbob", "--role", "owner"),
        ("project", "member", "set-role", "--project", "{}", "rxalice", "viewer"),
        ("project", "member", "rm", "--project", "{}", "rxalice"),
        ("project", "delete", "--project", "{}", "--yes"),
    ],
    ids=lambda args: " ".join(args[1:3]) if args[1] == "member" else args[1],
)
def test_another_users_project_is_invisible_and_unchanged(rxd: Rxd, args: tuple[str, ...]) -> None:
    if "private" not in names(rxd, "rxalice"):
        create(rxd, "rxalice", "private")
    before = show(rxd, "rxalice", "private")
    line = refused(rxd.rxctl("rxbob", *(a.format("private") for a in args)))
    assert line == NOT_VISIBLE.format("private")
    assert show(rxd, "rxalice", "private") == before
    assert "private" not in names(rxd, "rxbob")


INVALID_SETTINGS = [
    pytest.param(
        ("--cpus", "-1"), "Error: cpus must not be negative (0 means the default)", id="cpus"
    ),
    pytest.param(
        ("--partition", "nope"), "Error: unknown partition 'nope'; Slurm has: cpu, gpu", id="part"
    ),
    pytest.param(
        ("--gpus", "3", "--partition", "gpu"),
        "Error: 3 GPUs asked for, but no node of partition gpu has more than 2",
        id="gpus",
    ),
    pytest.param(
        ("--gpu-driver", "cuda"), 'Error: gpu_driver must be "nvidia", "amd" or "" (none)', id="drv"
    ),
    pytest.param(
        ("--image", "images/tool.sif"),
        "Error: image must be an absolute path or a docker://, oras:// or library:// reference",
        id="image",
    ),
    pytest.param(("--cpus", "99"), "Error: 99 CPUs asked for", id="cpus-node"),
    pytest.param(("--mem", "999999"), "Error: 999999 MB of memory asked for", id="mem-node"),
]


@pytest.mark.parametrize(("options", "message"), INVALID_SETTINGS)
def test_invalid_settings_are_refused_and_change_nothing(
    rxd: Rxd, options: tuple[str, ...], message: str
) -> None:
    if "checked" not in names(rxd, "rxalice"):
        create(rxd, "rxalice", "checked", "--cpus", "1", "--image", "docker://alpine:3")
    before = show(rxd, "rxalice", "checked")
    line = refused(rxd.rxctl("rxalice", "project", "set", "--project", "checked", *options))
    assert line.startswith(message)
    assert show(rxd, "rxalice", "checked") == before


@pytest.mark.parametrize(("options", "message"), INVALID_SETTINGS)
def test_invalid_settings_at_create_make_no_project(
    rxd: Rxd, options: tuple[str, ...], message: str
) -> None:
    line = refused(rxd.rxctl("rxalice", "project", "create", "never", *options))
    assert line.startswith(message)
    assert "never" not in names(rxd, "rxalice")


def test_valid_settings_round_trip(rxd: Rxd) -> None:
    create(rxd, "rxalice", "tuned")
    settings = {
        "image": "docker://python:3.12-slim",
        "cpus": 2,
        "mem_mb": 2000,
        "gpus": 2,
        "gpu_type": "a100",
        "gpu_driver": "nvidia",
        "partition": "gpu",
        "time_limit_min": 120,
        "account": "rxtest",
        "qos": "normal",
        "constraint": "",
        "reservation": "",
        "idle_timeout_min": 30,
        "service": '["python3", "-m", "http.server", "8000"]',
        "port": 8000,
        "restart": "on-failure:2",
    }
    result = rxd.rxctl(
        "rxalice",
        "project",
        "set",
        "--project",
        "tuned",
        *("--image", "docker://python:3.12-slim", "--cpus", "2", "--mem", "2000"),
        *("--gpus", "2", "--gpu-type", "a100", "--gpu-driver", "nvidia"),
        *("--partition", "gpu", "--time-limit", "120", "--idle-timeout", "30"),
        *("--account", "rxtest", "--qos", "normal"),
        *("--service", "python3 -m http.server 8000", "--port", "8000"),
        *("--restart", "on-failure:2"),
    )
    assert output(result).startswith(
        "Updated project tuned: image=docker://python:3.12-slim, cpus=2"
    )
    project = show(rxd, "rxalice", "tuned")
    assert project["settings"] == settings
    assert project["effective"] == settings  # nothing left to the deployment defaults

    # Only the options given change; `--gpu-driver none` clears the driver.
    output(
        rxd.rxctl(
            "rxalice", "project", "set", "--project", "tuned", "--gpu-driver", "none", "--cpus", "0"
        )
    )
    project = show(rxd, "rxalice", "tuned")
    assert project["settings"] == {**settings, "gpu_driver": "", "cpus": 0}
    assert project["effective"]["cpus"] >= 1  # 0 is the deployment default, filled in


def test_gpu_memory_is_no_setting_and_an_old_row_holding_it_still_reads(rxd: Rxd) -> None:
    create(rxd, "rxalice", "oldgpumem")
    usage = rxd.rxctl("rxalice", "project", "set", "--project", "oldgpumem", "--gpu-mem", "40")
    assert usage.returncode == 2 and "No such option '--gpu-mem'" in usage.stderr
    # A row written before the setting went keeps its column and value; reading ignores them.
    db = sqlite3.connect(rxd.ledger)
    try:
        with db:
            db.execute("UPDATE projects SET gpu_mem_gb = 40 WHERE name = 'oldgpumem'")
    finally:
        db.close()
    project = show(rxd, "rxalice", "oldgpumem")
    assert "gpu_mem_gb" not in project["settings"] and "gpu_mem_gb" not in project["effective"]
    output(rxd.rxctl("rxalice", "project", "set", "--project", "oldgpumem", "--cpus", "2"))
    assert show(rxd, "rxalice", "oldgpumem")["settings"]["cpus"] == 2


def test_settings_given_at_create_are_kept(rxd: Rxd) -> None:
    project = create(
        rxd, "rxalice", "preset", "--image", "/opt/images/tool.sif", "--mem", "1500", "--gpus", "1"
    )
    assert project["settings"]["image"] == "/opt/images/tool.sif"
    assert (project["settings"]["mem_mb"], project["settings"]["gpus"]) == (1500, 1)
    assert show(rxd, "rxalice", "preset")["settings"] == project["settings"]


def test_show_text_has_settings_run_as_workspace_and_members(rxd: Rxd) -> None:
    create(rxd, "rxalice", "shown", "--cpus", "2")
    output(
        rxd.rxctl(
            "rxalice", "project", "member", "add", "--project", "shown", "rxbob", "--role", "viewer"
        )
    )
    project = show(rxd, "rxalice", "shown")
    text = output(rxd.rxctl("rxbob", "project", "show", "--project", "shown"))
    lines = [line.split() for line in text.splitlines()]
    assert ["project", "shown"] in lines
    assert ["your", "role", "viewer"] in lines
    assert ["workspace", project["workspace"]] in lines
    assert ["run", "as", "service", "(runtime", "user", f"{SERVICE_ACCOUNT})"] in lines
    assert ["container", "none", "(not", "enabled)"] in lines
    assert ["cpus", "--cpus", "2", "2"] in lines
    assert ["mem_mb", "--mem", "default", f"{project['effective']['mem_mb']}", "MB"] in lines
    assert ["rxalice", "owner", "rxalice"] in lines
    assert ["rxbob", "viewer", "rxbob"] in lines
    assert "new settings apply on the next start" not in text


def test_duplicate_project_names_are_refused(rxd: Rxd) -> None:
    create(rxd, "rxalice", "twice")
    before = show(rxd, "rxalice", "twice")
    for user in ("rxalice", "rxbob"):
        line = refused(rxd.rxctl(user, "project", "create", "twice"))
        assert line == "Error: a project named 'twice' already exists"
    assert show(rxd, "rxalice", "twice") == before
    assert "twice" not in names(rxd, "rxbob")


@pytest.mark.parametrize("name", ["Bad", "a;b", "a" * 30, "a" * 22, "1st", "-x", "x-", "a b", ""])
def test_bad_project_names_are_refused(rxd: Rxd, name: str) -> None:
    before = names(rxd, "rxalice")
    # After "--", a name starting with "-" is still the NAME argument.
    assert refused(rxd.rxctl("rxalice", "project", "create", "--", name)) == BAD_NAME
    assert names(rxd, "rxalice") == before


def test_longest_allowed_name_is_21_characters(rxd: Rxd) -> None:
    name = "a" + "b1-" * 6 + "c" * 2
    assert len(name) == 21
    create(rxd, "rxalice", name)
    assert name in names(rxd, "rxalice")


def test_delete_needs_yes_and_then_removes_the_project(rxd: Rxd) -> None:
    create(rxd, "rxalice", "doomed")
    line = refused(rxd.rxctl("rxalice", "project", "delete", "--project", "doomed"))
    assert line == "Error: deleting project doomed cannot be undone; add --yes to do it"
    assert "doomed" in names(rxd, "rxalice")
    assert output(rxd.rxctl("rxalice", "project", "delete", "--project", "doomed", "--yes")) == (
        "Deleted project doomed.\n"
    )
    assert "doomed" not in names(rxd, "rxalice")
    assert refused(
        rxd.rxctl("rxalice", "project", "show", "--project", "doomed")
    ) == NOT_VISIBLE.format("doomed")
    # The name is free again.
    create(rxd, "rxbob", "doomed")


def test_members_are_added_changed_and_removed(rxd: Rxd) -> None:
    create(rxd, "rxalice", "team")
    result = rxd.rxctl(
        "rxalice", "project", "member", "add", "--project", "team", "rxcarol", "--role", "editor"
    )
    assert output(result) == "Added rxcarol to team as editor.\n"
    assert "team" in names(rxd, "rxcarol")
    assert show(rxd, "rxcarol", "team")["role"] == "editor"

    result = rxd.rxctl(
        "rxalice", "project", "member", "set-role", "--project", "team", "rxcarol", "viewer"
    )
    assert output(result) == "rxcarol is now viewer in team.\n"
    assert show(rxd, "rxcarol", "team")["role"] == "viewer"

    result = rxd.rxctl("rxalice", "project", "member", "rm", "--project", "team", "rxcarol")
    assert output(result) == "Removed rxcarol from team.\n"
    assert "team" not in names(rxd, "rxcarol")
    assert [m["user"] for m in show(rxd, "rxalice", "team")["members"]] == ["rxalice"]


def test_member_changes_that_would_break_the_project_are_refused(rxd: Rxd) -> None:
    create(rxd, "rxalice", "guarded")
    output(
        rxd.rxctl(
            "rxalice",
            "project",
            "member",
            "add",
            "--project",
            "guarded",
            "rxbob",
            "--role",
            "viewer",
        )
    )
    before = show(rxd, "rxalice", "guarded")
    cases = [
        (
            ("member", "rm", "--project", "guarded", "rxalice"),
            "Error: rxalice is the last owner of guarded; a project needs an owner",
        ),
        (
            ("member", "set-role", "--project", "guarded", "rxalice", "viewer"),
            "Error: rxalice is the last owner of guarded; make someone else owner first",
        ),
        (
            ("member", "add", "--project", "guarded", "rxbob", "--role", "editor"),
            "Error: rxbob is already a member of guarded; use set-role",
        ),
        (
            ("member", "add", "--project", "guarded", "rxcarol", "--role", "boss"),
            "Error: unknown role 'boss'; valid roles: owner, manager, editor, viewer",
        ),
        (
            ("member", "add", "--project", "guarded", "rx-nobody-here", "--role", "viewer"),
            "Error: no Linux user named 'rx-nobody-here'",
        ),
        (
            ("member", "rm", "--project", "guarded", "rxcarol"),
            "Error: rxcarol is not a member of guarded",
        ),
        (
            ("run-as", "--project", "guarded", "sideways"),
            'Error: mode must be "bound" or "service"',
        ),
    ]
    for args, message in cases:
        assert refused(rxd.rxctl("rxalice", "project", *args)) == message
    assert show(rxd, "rxalice", "guarded") == before


def test_run_as_switches_between_service_account_and_owner(rxd: Rxd) -> None:
    project = create(rxd, "rxalice", "runner")
    assert (project["run_as"], project["runtime_user"]) == ("service", SERVICE_ACCOUNT)
    result = rxd.rxctl("rxalice", "project", "run-as", "--project", "runner", "bound")
    assert output(result) == "Project runner runs as bound (runtime user rxalice).\n"
    project = show(rxd, "rxalice", "runner")
    assert (project["run_as"], project["runtime_user"]) == ("bound", "rxalice")
    output(rxd.rxctl("rxalice", "project", "run-as", "--project", "runner", "service"))
    assert show(rxd, "rxalice", "runner")["runtime_user"] == SERVICE_ACCOUNT


def test_root_has_no_platform_identity_to_own_a_project(rxd: Rxd) -> None:
    line = refused(rxd.rxctl(None, "project", "create", "roots"))
    assert line == "Error: root has no platform identity; run rxctl as your own user"


def test_project_changes_are_audited_with_actor_and_origin(rxd: Rxd) -> None:
    create(rxd, "rxalice", "traced")
    output(rxd.rxctl("rxalice", "project", "set", "--project", "traced", "--idle-timeout", "15"))
    output(
        rxd.rxctl(
            "rxalice",
            "project",
            "member",
            "add",
            "--project",
            "traced",
            "rxbob",
            "--role",
            "viewer",
        )
    )
    events = json.loads(
        output(rxd.rxctl("rxop", "admin", "audit", "--project", "traced", "--json"))
    )["events"]
    seen = {(e["action"], e["actor"], e["origin"], e["target_id"]) for e in events}
    assert {
        ("project.created", "rxalice", "socket", "traced"),
        ("project.settings-changed", "rxalice", "socket", "traced"),
        ("project.member-added", "rxalice", "socket", "traced"),
    } <= seen
    assert all(e["target_id"] == "traced" for e in events)
