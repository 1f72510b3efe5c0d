"""Security finding 10: untrusted image pulls ran as root, unbounded, inside API requests, into
an image folder nobody checked. Each recipe runs as the ordinary test users on the cluster."""

from __future__ import annotations

import os
import pwd
import subprocess
import threading
from pathlib import Path

import pytest

from rxslurm.daemon.images.cache import image_file_name
from tests.support.cli import ok, refused
from tests.support.cluster import wait_for
from tests.support.daemon import Rxd, new_rxd
from tests.support.lifecycle import lifecycle_config, status, wait_state
from tests.support.registry import (
    BIG,
    PULL_USER,
    SMALL,
    leases,
    processes_mentioning,
    pull_config,
    pull_events,
    pulling_rxd,
    stalling_registry,
)

pytestmark = [pytest.mark.cluster, pytest.mark.hostile]


def create(rxd: Rxd, user: str, project: str, image: str) -> None:
    ok(rxd.rxctl(user, "project", "create", project, "--image", image))


def start_refusal(started: subprocess.CompletedProcess[str]) -> str:
    """rxd's one error line when it refuses to start (test daemons also log at debug level)."""
    assert started.returncode == 1, started
    errors = [line for line in started.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and started.stderr.endswith(errors[0] + "\n"), started.stderr
    return errors[0]


def test_an_image_past_the_size_cap_ends_in_error_and_frees_everything() -> None:
    with pulling_rxd(max_mb="16") as rxd:
        create(rxd, "rxdave", "big", BIG)
        ok(rxd.rxctl("rxdave", "enable", "--project", "big"))
        failed = wait_state(rxd, "big", "error", user="rxdave")
        assert "needs more than the 16 MiB a pull may use (pulls.max_mb)" in failed["last_error"]
        assert failed["job_id"] is None and leases(rxd) == 0
        assert list((rxd.root / "pulls").iterdir()) == []
        assert list((rxd.root / "images").iterdir()) == []
        assert [e["outcome"] for e in pull_events(rxd)] == ["started", "failed"]


def test_stalled_registries_hold_no_api_thread_and_time_out_as_the_pull_account() -> None:
    with stalling_registry() as stall, pulling_rxd(timeout_s="12", concurrency="2") as rxd:
        refs = {}
        # Six pulls that never get an answer, from three users: more than the API's threads.
        for user in ("rxalice", "rxbob", "rxdave"):
            for n in (1, 2):
                project = f"{user[2:]}{n}"
                refs[project] = (user, f"docker://{stall}/{user}/stall:{n}")
                create(rxd, user, project, refs[project][1])
        create(rxd, "rxdave", "dave3", f"docker://{stall}/rxdave/stall:3")
        answers: dict[str, subprocess.CompletedProcess[str]] = {}

        def enable(project: str, user: str) -> None:
            answers[project] = rxd.rxctl(user, "enable", "--project", project, timeout=60)

        threads = [threading.Thread(target=enable, args=(p, u)) for p, (u, _) in refs.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for project, answer in answers.items():
            assert ok(answer).stdout.startswith(f"{project}: enabled; now pulling ("), answer
        # A third image of the same user waits for theirs: refused in one line, nothing held.
        line = refused(rxd.rxctl("rxdave", "enable", "--project", "dave3"))
        assert "you already have 2 images being pulled" in line
        assert status(rxd, "rxdave", "dave3")["state"] == "error"
        # Someone else is served while every pull hangs.
        ok(rxd.rxctl("rxcarol", "whoami"))
        ok(rxd.rxctl("rxcarol", "project", "list"))
        # The pulls run as the pull account, never as root: here their first step, asking the
        # registry which digest the tag names (it never answers).
        pulling: list[tuple[int, int, str]] = []

        def seen_pulling() -> bool:
            pulling[:] = processes_mentioning(stall)
            return bool(pulling)

        wait_for(seen_pulling, timeout=30, what="a pull process")
        assert {uid for _, uid, _ in pulling} == {pwd.getpwnam(PULL_USER).pw_uid}, pulling
        shown = ok(rxd.rxctl("rxalice", "status", "--project", "alice1")).stdout
        assert "pulling" in shown
        for project, (user, _) in refs.items():
            failed = wait_state(rxd, project, "error", user=user, timeout=120)
            assert failed["last_error"] == "the pull did not finish within 12 s (pulls.timeout_s)"
        assert leases(rxd) == 0
        assert processes_mentioning(stall) == []
        assert list((rxd.root / "pulls").iterdir()) == []


@pytest.mark.parametrize("plant", ["symlink", "foreign file"])
def test_a_planted_image_is_refused_and_never_run(plant: str) -> None:
    with pulling_rxd() as rxd:
        images = rxd.root / "images"
        target = images / image_file_name(SMALL)
        dave = pwd.getpwnam("rxdave")
        if plant == "symlink":
            own = Path(dave.pw_dir) / "mine.sif"
            target.symlink_to(own)
        else:
            target.write_text("rxdave's image")
            os.chown(target, dave.pw_uid, dave.pw_gid)
        create(rxd, "rxalice", "victim", SMALL)
        line = refused(rxd.rxctl("rxalice", "enable", "--project", "victim"))
        assert line.startswith(f"Error: cannot use the image cache: {target} ")
        assert "an admin removes it" in line
        failed = status(rxd, "rxalice", "victim")
        assert failed["state"] == "error" and failed["job_id"] is None and leases(rxd) == 0
        assert pull_events(rxd) == []  # neither used nor silently replaced
        assert target.is_symlink() == (plant == "symlink")


def test_a_group_writable_image_dir_refuses_enable_and_start_in_one_line() -> None:
    with pulling_rxd() as rxd:
        images = rxd.root / "images"
        images.chmod(0o775)
        create(rxd, "rxalice", "gw", SMALL)
        line = refused(rxd.rxctl("rxalice", "enable", "--project", "gw"))
        assert line == (
            f"Error: cannot use the image cache: containers.image_dir {images} must be owned by "
            "root and not writable by group or others (it is uid 0, mode 0775)"
        )
        assert pull_events(rxd) == [] and leases(rxd) == 0
    # rxd itself will not start on such a folder.
    daemon = new_rxd(lambda root: lifecycle_config(root) + pull_config(root))
    (daemon.root / "images").mkdir(mode=0o755)
    (daemon.root / "images").chmod(0o2775)
    started = subprocess.run(
        [str(Path(os.sys.executable).parent / "rxd"), "serve", "--config", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    line = start_refusal(started)
    assert "containers.image_dir" in line and "not writable by group or others" in line


def test_a_pull_account_that_is_not_a_system_account_stops_rxd_at_start() -> None:
    daemon = new_rxd(lambda root: lifecycle_config(root) + pull_config(root, user='"rxdave"'))
    started = subprocess.run(
        [str(Path(os.sys.executable).parent / "rxd"), "serve", "--config", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    line = start_refusal(started)
    assert "pulls.user rxdave" in line and "system account" in line
