"""`rxctl logs` and `rxctl history` on the real cluster: a failed start's whole Apptainer message
for members (not for strangers), a planted symlink that root does not follow, following a running
container's output until it stops, a stop/start cycle in the history with who did it, and only
the newest KEPT jobs' logs left after more wakes (a symlink named like a log left alone)."""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import ok, output, refused
from tests.support.cluster import user_env, wait_for
from tests.support.daemon import RXCTL, Rxd
from tests.support.lifecycle import lifecycle_rxd, make_project, status, wait_state

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("container_runtime")]

OWNER = "rxalice"
VIEWER = "rxdave"
MANAGER = "rxbob"
STRANGER = "rxcarol"
BROKEN = "lg-broken"
LIVE = "lg-live"
KEPT = 2  # [containers] job_logs_kept: small, so that a few wakes go past it


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    with lifecycle_rxd(bind=(OWNER, VIEWER, MANAGER, STRANGER), job_logs_kept=str(KEPT)) as daemon:
        yield daemon


def logs_json(rxd: Rxd, user: str, project: str, *options: str) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(
        output(rxd.rxctl(user, "logs", "--project", project, "--json", *options))
    )
    return answer


@pytest.fixture(scope="module")
def live(rxd: Rxd) -> str:
    """LIVE, a working container's project (enabled here, stopped), with a manager and a viewer."""
    make_project(rxd, LIVE)
    ok(
        rxd.rxctl(
            OWNER, "project", "member", "add", "--project", LIVE, MANAGER, "--role", "manager"
        )
    )
    ok(rxd.rxctl(OWNER, "project", "member", "add", "--project", LIVE, VIEWER, "--role", "viewer"))
    ok(rxd.rxctl(OWNER, "enable", "--project", LIVE))
    wait_state(rxd, LIVE, "running")
    ok(rxd.rxctl(OWNER, "stop", "--project", LIVE))
    wait_state(rxd, LIVE, "stopped")
    return LIVE


def running_live(rxd: Rxd) -> int:
    """LIVE running (started by its owner when it is not); its job."""
    if status(rxd, OWNER, LIVE)["state"] != "running":
        ok(rxd.rxctl(OWNER, "start", "--project", LIVE))
    return int(wait_state(rxd, LIVE, "running")["job_id"])


@pytest.fixture(scope="module")
def broken(rxd: Rxd) -> dict[str, Any]:
    """BROKEN in error: its image path does not exist, so Apptainer's instance start fails. The
    owner's status (last_error is only the last FATAL line), with its job id."""
    missing = rxd.root / "nowhere" / "python.sif"
    ok(rxd.rxctl(OWNER, "project", "create", BROKEN, "--image", str(missing)))
    ok(
        rxd.rxctl(
            OWNER, "project", "member", "add", "--project", BROKEN, VIEWER, "--role", "viewer"
        )
    )
    ok(rxd.rxctl(OWNER, "enable", "--project", BROKEN))
    failed = wait_state(rxd, BROKEN, "error")
    assert "could not open image" in failed["last_error"], failed
    return {**failed, "job": logs_json(rxd, OWNER, BROKEN)["job_id"]}


def test_a_failed_start_shows_apptainers_whole_message_to_members(
    rxd: Rxd, broken: dict[str, Any]
) -> None:
    shown = output(rxd.rxctl(VIEWER, "logs", "--project", BROKEN))

    lines = shown.splitlines()
    fatal = [line for line in lines if line.startswith("FATAL:")]
    starting = f"rx-holder: starting rx-{BROKEN}-{broken['job']} from "
    assert any(line.startswith(starting) for line in lines), shown
    assert fatal and "could not open image" in fatal[-1], shown
    # The status keeps the last FATAL line (capped); the log has all of it and what came before.
    assert broken["last_error"].removeprefix("error: ") in shown
    assert lines[-1] == "rx-holder: apptainer instance start failed"
    answer = logs_json(rxd, VIEWER, BROKEN)
    assert (answer["job_id"], answer["live"], answer["cut"]) == (broken["job"], False, False)
    assert answer["text"] == shown


def test_a_stranger_gets_a_clear_refusal(rxd: Rxd, broken: dict[str, Any]) -> None:
    line = refused(rxd.rxctl(STRANGER, "logs", "--project", BROKEN))

    assert line == f"Error: no project named '{BROKEN}' (or you are not a member)"


def test_a_job_of_another_project_is_refused(rxd: Rxd, broken: dict[str, Any], live: str) -> None:
    line = refused(rxd.rxctl(OWNER, "logs", "--project", live, "--job", str(broken["job"])))

    assert line == f"Error: job {broken['job']} is not one of the jobs of {live}'s container"


def test_a_symlink_planted_in_the_state_folder_is_not_followed(
    rxd: Rxd, broken: dict[str, Any]
) -> None:
    secret = rxd.root / "root-only-secret"
    secret.write_text("root's secret\n")
    secret.chmod(0o600)
    state_dir = rxd.root / "containers" / f"rx-{BROKEN}"
    log = state_dir / f"job-{broken['job']}.out"
    kept = log.read_bytes()
    uid = pwd.getpwnam(OWNER).pw_uid
    try:
        # The runtime user (or their container) swaps the log for a link to a root-only file.
        log.unlink()
        os.symlink(secret, log)
        os.lchown(log, uid, uid)

        result = rxd.rxctl(VIEWER, "logs", "--project", BROKEN, "--job", str(broken["job"]))

        line = refused(result)
        assert line.endswith(f"job-{broken['job']}.out is a symbolic link"), line
        assert "secret" not in result.stdout + result.stderr
    finally:
        log.unlink()
        log.write_bytes(kept)
        os.chown(log, uid, uid)


def test_follow_prints_a_running_containers_output_until_it_stops(
    rxd: Rxd, live: str, tmp_path: Path
) -> None:
    job = running_live(rxd)
    printed = tmp_path / "follow.out"  # opened here, handed to rxctl (a viewer) as its stdout
    entry = pwd.getpwnam(VIEWER)
    with printed.open("w") as out:
        follower = subprocess.Popen(
            [RXCTL, "--socket", str(rxd.socket), "logs", "--project", live, "--follow"],
            user=entry.pw_uid,
            group=entry.pw_gid,
            extra_groups=os.getgrouplist(VIEWER, entry.pw_gid),
            env=user_env(VIEWER),
            cwd="/",
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        wait_for(
            lambda: f"rx-{LIVE}-{job} is running" in printed.read_text(),
            timeout=60,
            what="rxctl logs -f to print the running line",
        )
        ok(rxd.rxctl(OWNER, "stop", "--project", live))
        _, err = follower.communicate(timeout=120)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err
    assert f"rx-holder: stopping rx-{LIVE}-{job}" in printed.read_text()
    assert f"job {job} has ended" in err
    wait_state(rxd, live, "stopped")


def in_order(wanted: list[Any], seen: list[Any]) -> bool:
    """Whether `wanted` appears in `seen` in that order (other items between are allowed)."""
    rest = iter(seen)
    return all(any(item == got for got in rest) for item in wanted)


def test_history_lists_a_stop_start_cycle_with_who_did_it(rxd: Rxd, live: str) -> None:
    first = running_live(rxd)
    ok(rxd.rxctl(OWNER, "stop", "--project", live))
    wait_state(rxd, live, "stopped")
    ok(rxd.rxctl(MANAGER, "start", "--project", live))
    second = wait_state(rxd, live, "running")["job_id"]

    answer = json.loads(output(rxd.rxctl(VIEWER, "history", "--project", live, "--json")))

    moves = [
        (e["actor"], e["detail"]["from"], e["detail"]["to"], e["detail"].get("job_id"))
        for e in answer["events"]
        if e["action"] == "container.state"
    ]
    # A busy cluster may add a wait for resources before `running`: the cycle in order, then that.
    cycle = [
        (OWNER, "running", "stopping", first),
        ("rxd", "stopping", "stopped", first),
        (MANAGER, "stopped", "starting", None),  # the job is submitted after this commits
    ]
    assert in_order(cycle, moves), moves
    assert moves[-1][0] == "rxd" and moves[-1][2:] == ("running", second), moves
    added = [e["detail"]["user"] for e in answer["events"] if e["action"] == "project.member-added"]
    assert added == [MANAGER, VIEWER]
    # sacct knows both jobs; the project asks for no GPU, so they used none.
    assert answer["gpu_usage"] == {"gpu_hours": 0.0, "by_user": {}, "jobs": 0, "skipped": 0}
    table = output(rxd.rxctl(VIEWER, "history", "--project", live))
    assert table.splitlines()[-1] == "GPU-hours: 0.00 over 0 job(s)", table
    assert re.search(rf"\b{MANAGER} +stopped -> starting\b", table), table
    # From starting, or from a wait for resources on a busy cluster.
    assert re.search(rf"rxd +(starting|waiting_for_resources) -> running +{second}\b", table), table
    assert refused(rxd.rxctl(STRANGER, "history", "--project", live)) == (
        f"Error: no project named '{live}' (or you are not a member)"
    )
    ok(rxd.rxctl(OWNER, "stop", "--project", live))


def job_logs_on_disk(state_dir: Path) -> set[int]:
    """The jobs whose logs are regular files in the folder (links not counted)."""
    found = set()
    for entry in state_dir.iterdir():
        matched = re.fullmatch(r"job-([0-9]+)\.out", entry.name)
        if matched and entry.is_file() and not entry.is_symlink():
            found.add(int(matched.group(1)))
    return found


def test_after_more_wakes_than_kept_only_the_newest_logs_remain_and_links_stay(
    rxd: Rxd, live: str
) -> None:
    wait_state(rxd, live, "stopped")  # the history test's stop may still be under way
    state_dir = rxd.root / "containers" / f"rx-{live}"
    secret = rxd.root / "root-only-secret-2"
    secret.write_text("root's secret\n")
    secret.chmod(0o600)
    planted = state_dir / "job-1.out"  # older than any job: a log the cleaner would remove
    os.symlink(secret, planted)
    uid = pwd.getpwnam(OWNER).pw_uid
    os.lchown(planted, uid, uid)
    try:
        jobs = []
        for _ in range(KEPT + 1):
            jobs.append(running_live(rxd))
            ok(rxd.rxctl(OWNER, "stop", "--project", live))
            wait_state(rxd, live, "stopped")
        answer = logs_json(rxd, VIEWER, live)
        kept = {j["job_id"] for j in answer["jobs"] if j["kept"]}
        assert kept == set(jobs[-KEPT:]), answer["jobs"]

        wait_for(
            lambda: job_logs_on_disk(state_dir) == kept,
            timeout=60,
            what=f"only the newest {KEPT} job logs to remain",
        )

        assert planted.is_symlink() and os.readlink(planted) == str(secret)
        assert secret.read_text() == "root's secret\n"
        result = rxd.rxctl(VIEWER, "logs", "--project", live, "--job", str(jobs[0]))
        assert result.returncode == 0, result.stderr
        assert f"job {jobs[0]}'s output was cleaned" in result.stderr
        newest = rxd.rxctl(VIEWER, "logs", "--project", live, "--job", str(jobs[-1]))
        assert f"rx-holder: stopping rx-{LIVE}-{jobs[-1]}" in output(newest)
    finally:
        planted.unlink(missing_ok=True)
