"""Finding 9: downgrading or removing a member reaches everything below the workspace.

Before the fix, `setfacl` changed the top folder only: a viewer demoted from editor still
overwrote files in subfolders through their inherited `user:<member>:rwx` entries, and a removed
member's entries stayed on every file (a shell still inside a subfolder kept writing).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.hostile.helpers import USERS, named_entries_for, sh, workspace_of
from tests.support.cli import ok
from tests.support.cluster import run_as, wait_for
from tests.support.daemon import Rxd, running_rxd

pytestmark = pytest.mark.cluster  # projects are validated against Slurm's partitions


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    with running_rxd(bind=USERS) as daemon:
        yield daemon


def test_a_demoted_editor_cannot_write_an_existing_file_in_a_subfolder(rxd: Rxd) -> None:
    ok(rxd.rxctl("rxalice", "project", "create", "acl-demote"))
    ok(
        rxd.rxctl(
            "rxalice",
            "project",
            "member",
            "add",
            "--project",
            "acl-demote",
            "rxbob",
            "--role",
            "editor",
        )
    )
    folder = workspace_of(rxd, "rxalice", "acl-demote")
    ok(sh("rxalice", f"mkdir -p {folder}/data/deep && echo v1 > {folder}/data/deep/r.csv"))
    csv = folder / "data" / "deep" / "r.csv"
    ok(sh("rxbob", f"echo v2 > {csv}"))  # as an editor he may
    ok(
        rxd.rxctl(
            "rxalice", "project", "member", "set-role", "--project", "acl-demote", "rxbob", "viewer"
        )
    )
    assert sh("rxbob", f"echo TAMPERED > {csv}").returncode != 0
    assert sh("rxbob", f"echo new > {folder}/data/deep/planted").returncode != 0
    assert ok(run_as("rxbob", ["cat", str(csv)])).stdout == "v2\n"  # a viewer still reads
    assert csv.read_text() == "v2\n"


def test_a_removed_member_has_no_acl_entry_left_below_the_workspace(rxd: Rxd) -> None:
    ok(rxd.rxctl("rxalice", "project", "create", "acl-remove"))
    for user, role in (("rxbob", "manager"), ("rxcarol", "viewer")):
        ok(
            rxd.rxctl(
                "rxalice",
                "project",
                "member",
                "add",
                "--project",
                "acl-remove",
                user,
                "--role",
                role,
            )
        )
    folder = workspace_of(rxd, "rxalice", "acl-remove")
    ok(sh("rxalice", f"umask 077; mkdir -p {folder}/a/b && echo s > {folder}/a/b/secret"))
    ok(sh("rxbob", f"echo mine > {folder}/a/by-bob"))  # bob's own file stays his
    assert named_entries_for(folder, "rxbob")  # inherited everywhere while he is a member
    ok(rxd.rxctl("rxalice", "project", "member", "rm", "--project", "acl-remove", "rxbob"))
    assert named_entries_for(folder, "rxbob") == []
    assert run_as("rxbob", ["ls", str(folder)]).returncode != 0
    # The others keep theirs.
    assert named_entries_for(folder, "rxcarol")
    assert ok(run_as("rxcarol", ["cat", str(folder / "a" / "b" / "secret")])).stdout == "s\n"


def test_a_shell_held_inside_a_subfolder_cannot_write_after_removal(rxd: Rxd) -> None:
    ok(rxd.rxctl("rxalice", "project", "create", "acl-held"))
    ok(
        rxd.rxctl(
            "rxalice",
            "project",
            "member",
            "add",
            "--project",
            "acl-held",
            "rxbob",
            "--role",
            "editor",
        )
    )
    folder = workspace_of(rxd, "rxalice", "acl-held")
    ok(sh("rxalice", f"mkdir {folder}/data && echo v1 > {folder}/data/r.csv"))
    # bob's shell sits in data/ (its cwd is held), then waits for a line before trying again.
    held = run_as_background(
        "rxbob",
        f"cd {folder}/data && echo ready && read go && "
        "{ echo TAMPERED > r.csv && echo WROTE; echo x > planted && echo PLANTED; true; }",
    )
    assert held.stdout is not None and held.stdin is not None
    assert held.stdout.readline() == "ready\n"
    ok(rxd.rxctl("rxalice", "project", "member", "rm", "--project", "acl-held", "rxbob"))
    out, _ = held.communicate("go\n", timeout=60)
    assert "WROTE" not in out and "PLANTED" not in out
    assert (folder / "data" / "r.csv").read_text() == "v1\n"
    assert not (folder / "data" / "planted").exists()


def run_as_background(user: str, script: str) -> subprocess.Popen[str]:
    """`sh -c script` as `user`, with pipes for its stdin and stdout."""
    import os
    import pwd

    pw = pwd.getpwnam(user)
    proc = subprocess.Popen(
        ["sh", "-c", script],
        user=pw.pw_uid,
        group=pw.pw_gid,
        extra_groups=os.getgrouplist(user, pw.pw_gid),
        env={"PATH": "/usr/bin:/bin", "HOME": pw.pw_dir, "LANG": "C.UTF-8"},
        cwd="/",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: proc.poll() is None, timeout=5, what="the held shell to start")
    return proc
