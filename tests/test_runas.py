"""rxslurm.slurm.runas: resolving identities and running argv lists as another user."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from rxslurm.slurm.runas import SAFE_PATH, RunAs, RunAsError, can_enter, clean_env, run
from tests.support.cluster import wait_for

pytestmark = pytest.mark.root(reason="dropping to another user needs root")

ALICE_UID, RXUSERS_GID = 2001, 2000


@pytest.fixture
def alice() -> RunAs:
    return RunAs.for_user("rxalice")


def test_for_user_resolves_name_uid_groups_and_home(alice: RunAs) -> None:
    assert alice.user == "rxalice"
    assert (alice.uid, alice.gid) == (ALICE_UID, ALICE_UID)
    assert alice.groups[0] == ALICE_UID
    assert set(alice.groups) == {ALICE_UID, RXUSERS_GID}
    assert alice.home == "/home/rxalice"
    assert RunAs.for_user(ALICE_UID) == alice
    assert "rxusers" in alice.group_names()


@pytest.mark.parametrize("who", ["root", 0])
def test_for_user_refuses_root(who: str | int) -> None:
    with pytest.raises(RunAsError, match="refusing to act as root"):
        RunAs.for_user(who)


def test_constructing_a_root_identity_directly_is_refused_too() -> None:
    with pytest.raises(RunAsError, match="root"):
        RunAs("toor", 0, 0, (0,))


def test_unknown_user_is_a_clear_error() -> None:
    with pytest.raises(RunAsError, match="no such user"):
        RunAs.for_user("rx-nobody-here")


def test_command_runs_as_alice_with_her_groups_and_home(alice: RunAs) -> None:
    result = run(["/usr/bin/id"], as_user=alice)
    assert result.returncode == 0, result.stderr
    assert f"uid={ALICE_UID}(rxalice)" in result.stdout
    assert f"gid={ALICE_UID}(rxalice)" in result.stdout
    groups = run(["/usr/bin/id", "-G"], as_user=alice).stdout.split()
    assert sorted(map(int, groups)) == sorted({ALICE_UID, RXUSERS_GID})
    assert run(["/bin/pwd"], as_user=alice).stdout.strip() == "/home/rxalice"


def test_environment_is_rebuilt_from_nothing(alice: RunAs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RX_DAEMON_SECRET", "must-not-leak")
    monkeypatch.setenv("LD_PRELOAD", "/tmp/evil.so")
    monkeypatch.delenv("SLURM_CONF", raising=False)
    monkeypatch.delenv("TZ", raising=False)
    result = run(["/usr/bin/env", "-0"], as_user=alice)
    env = dict(item.split("=", 1) for item in result.stdout.split("\0") if item)
    assert env == {
        "HOME": "/home/rxalice",
        "USER": "rxalice",
        "LOGNAME": "rxalice",
        "PATH": SAFE_PATH,
        "LANG": "C.UTF-8",
    }


def test_slurm_conf_is_passed_through_and_env_extra_added(
    alice: RunAs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_CONF", "/etc/slurm/other.conf")
    env = clean_env(alice, {"SLURM_TIME_FORMAT": "%s"})
    assert env["SLURM_CONF"] == "/etc/slurm/other.conf"
    assert env["SLURM_TIME_FORMAT"] == "%s"


HOSTILE_ARGS = [
    "a;b",
    "$(id)",
    "`id`",
    "'single'",
    '"double"',
    "line1\nline2",
    "tab\there",
    "ünïcödé ✓",
    "*",
    "$HOME",
    "-n",
    "",
    "back\\slash",
]


def test_argv_items_arrive_literally(alice: RunAs) -> None:
    result = run(["/usr/bin/printf", "%s\\0", *HOSTILE_ARGS], as_user=alice)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\0")[:-1] == HOSTILE_ARGS


def test_input_reaches_stdin_and_stdin_is_closed_otherwise(alice: RunAs) -> None:
    assert run(["/bin/cat"], as_user=alice, input="to stdin\n").stdout == "to stdin\n"
    # Without input the child must not inherit the daemon's stdin.
    assert run(["/bin/cat"], as_user=alice, timeout=10).stdout == ""


def test_default_cwd_falls_back_to_root_when_home_is_closed(tmp_path: Path) -> None:
    closed = tmp_path / "closed-home"
    closed.mkdir(mode=0o700)
    who = RunAs("rxalice", ALICE_UID, ALICE_UID, (ALICE_UID, RXUSERS_GID), str(closed))
    assert not can_enter(str(closed), who)
    assert run(["/bin/pwd"], as_user=who).stdout.strip() == "/"


def test_explicit_cwd_is_used(alice: RunAs) -> None:
    assert run(["/bin/pwd"], as_user=alice, cwd="/tmp").stdout.strip() == "/tmp"


def test_system_account_without_home_runs_in_root_dir() -> None:
    rxsys = RunAs.for_user("rxsys")
    result = run(["/bin/pwd"], as_user=rxsys)
    assert result.stdout.strip() == "/"


def test_can_enter_follows_mode_bits(alice: RunAs) -> None:
    group_only = Path(tempfile.mkdtemp(prefix="rxslurm-runas-", dir="/tmp"))
    try:
        os.chown(group_only, 0, RXUSERS_GID)
        os.chmod(group_only, 0o710)
        assert can_enter(str(group_only), alice)  # through her rxusers group
        assert not can_enter(str(group_only), RunAs.for_user("rxsys"))
    finally:
        group_only.rmdir()
    assert can_enter("/home/rxalice", alice)
    assert not can_enter("/root", alice)
    assert not can_enter("relative/path", alice)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def test_timeout_kills_the_whole_process_group(alice: RunAs) -> None:
    shared = Path(tempfile.mkdtemp(prefix="rxslurm-runas-", dir="/tmp"))
    os.chmod(shared, 0o777)
    pid_file = shared / "child.pid"
    script = f"sleep 300 & echo $! > {pid_file}; wait"
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            run(["/bin/bash", "-c", script], as_user=alice, timeout=1)
        pid = int(pid_file.read_text())
    finally:
        shutil.rmtree(shared)
    wait_for(lambda: _gone(pid), 10, interval=0.05, what=f"background child {pid} to be killed")


def test_nul_in_argv_is_refused() -> None:
    with pytest.raises(ValueError, match="NUL"):
        run(["/bin/echo", "a\0b"])


def test_missing_program_raises_oserror(alice: RunAs) -> None:
    with pytest.raises(OSError):
        run(["/nonexistent/program"], as_user=alice)
