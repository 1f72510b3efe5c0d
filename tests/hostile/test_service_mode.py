"""Finding 4: in service mode every project runs as one account, so projects share nothing else.

Before the fix, every service project's container mounted the account's one writable $HOME (and
the host's /tmp): rxdave's project read what rxalice's left in `~/.netrc` and planted a `.pth`
file her Python ran. Now each project gets its own home and /tmp in its state folder, no current
folder, and rxd refuses to start with a service account that could not itself be bound.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.hostile.helpers import IMAGE, container_daemon, wait_state
from tests.support.cli import ok
from tests.support.daemon import Rxd, new_rxd

pytestmark = pytest.mark.cluster

SERVICE = '[runtime]\nservice_account = "rxsvc"\n'


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    with container_daemon(SERVICE) as daemon:
        yield daemon


def in_container(rxd: Rxd, user: str, project: str, script: str) -> subprocess.CompletedProcess:
    return rxd.rxctl(user, "exec", "--project", project, "--", "sh", "-c", script)


def test_two_service_projects_share_no_home_and_no_tmp(rxd: Rxd) -> None:
    ok(rxd.rxctl("rxalice", "project", "create", "victim", "--image", IMAGE))
    ok(rxd.rxctl("rxdave", "project", "create", "evil", "--image", IMAGE))
    for user, project in (("rxalice", "victim"), ("rxdave", "evil")):
        ok(rxd.rxctl(user, "enable", "--project", project))
    for user, project in (("rxalice", "victim"), ("rxdave", "evil")):
        assert wait_state(rxd, user, project, "running")["runtime_user"] == "rxsvc"

    ok(in_container(rxd, "rxalice", "victim", "echo S3CRET > ~/.netrc && echo t > /tmp/victim-tmp"))
    victim_home = rxd.root / "containers" / "rx-victim" / "home"
    evil_home = rxd.root / "containers" / "rx-evil" / "home"
    # Each project's home is its own folder in its own state folder.
    assert (victim_home / ".netrc").read_text() == "S3CRET\n"
    assert not (evil_home / ".netrc").exists()

    # From the other project, by $HOME, by the host path, and through /tmp: nothing.
    for path in ("~/.netrc", f"{victim_home}/.netrc", "/tmp/victim-tmp"):
        seen = in_container(rxd, "rxdave", "evil", f"cat {path}")
        assert seen.returncode != 0 and "S3CRET" not in seen.stdout, path
    # A file planted in the other project's home never reaches the victim.
    ok(in_container(rxd, "rxdave", "evil", "echo 'import os' > ~/zz.pth && echo x > /tmp/zz"))
    listed = ok(in_container(rxd, "rxalice", "victim", "ls -a ~ /tmp")).stdout
    assert "zz.pth" not in listed and "zz" not in listed.split()
    assert (evil_home / "zz.pth").exists() and not (victim_home / "zz.pth").exists()
    for user, project in (("rxalice", "victim"), ("rxdave", "evil")):
        ok(rxd.rxctl(user, "disable", "--project", project))


@pytest.mark.parametrize(
    ("account", "why"),
    [
        ("root", "root cannot be bound"),
        ("daemon", "is a system account"),
        ("rxop", "is in the admin group rxadmin"),
        ("slurm", "has no login shell"),
        ("no-such-account", "no Linux user named"),
    ],
)
def test_rxd_refuses_to_start_with_a_bad_service_account(account: str, why: str) -> None:
    daemon = new_rxd(f'[runtime]\nservice_account = "{account}"\n', migrate=False)
    daemon.start(wait=False)
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=60) != 0
    lines = daemon.log_text().strip().splitlines()
    assert len(lines) == 1, lines
    assert f"runtime.service_account {account!r} is refused" in lines[0] and why in lines[0]


def test_a_hook_user_cannot_be_the_service_account() -> None:
    daemon = new_rxd(
        '[runtime]\nservice_account = "rxsvc"\n[slurm]\nhook_users = ["rxsvc"]\n', migrate=False
    )
    daemon.start(wait=False)
    assert daemon.proc is not None and daemon.proc.wait(timeout=60) != 0
    assert "is one of slurm.hook_users" in daemon.log_text()
