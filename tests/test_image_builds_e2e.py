"""Image builds on the real cluster with the real Apptainer (docs/images.md).

A Dockerfile draft whose base is the loopback test registry's busybox is validated (a broken one
names its bad line) and built as a Slurm job under the researcher's uid (sacct's user, the SIF's
owner), its output followed; a build cancelled mid-way ends `cancelled` with its job gone; a
failing %post ends `failed` with the failing line in `rxctl image status`; builds are refused
outside dev mode, for viewers, and when the deployment's switch is off. Few builds: 2 cores.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import ok, output, refused
from tests.support.cluster import wait_for
from tests.support.daemon import Rxd
from tests.support.lifecycle import lifecycle_rxd, make_project
from tests.support.real_apptainer import BASE_IMAGE
from tests.support.registry import REGISTRY, require_registry

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("container_runtime")]

OWNER = "rxalice"
EDITOR = "rxcarol"
VIEWER = "rxdave"
PROJECT = "ib-main"
BUILD_TIMEOUT_S = 240.0
BUILDS = "[builds]\nenabled = true\ncpus = 1\nmem_mb = 500\ntime_limit_min = 15\n"
PLAIN_HTTP = f'[pulls]\nplain_http = ["{REGISTRY}"]\n'

DOCKERFILE = f"""\
FROM {REGISTRY}/rxslurm/busybox:1
COPY hello.txt /opt/hello.txt
RUN echo built > /opt/marker && cat /opt/hello.txt
CMD ["cat", "/opt/hello.txt"]
"""
BROKEN_DOCKERFILE = f"""\
FROM {REGISTRY}/rxslurm/busybox:1
RUN true
FOO bar
"""
FAILING = f"""\
Bootstrap: localimage
From: {BASE_IMAGE}

%post
    echo starting
    test -e /no/such/file
    echo never
"""
SLOW = f"""\
Bootstrap: localimage
From: {BASE_IMAGE}

%post
    sleep 600
"""


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    require_registry()
    with lifecycle_rxd(BUILDS + PLAIN_HTTP, bind=(OWNER, EDITOR, VIEWER)) as daemon:
        make_project(daemon, PROJECT)
        ok(
            daemon.rxctl(
                OWNER, "project", "member", "add", "--project", PROJECT, EDITOR, "--role", "editor"
            )
        )
        ok(
            daemon.rxctl(
                OWNER, "project", "member", "add", "--project", PROJECT, VIEWER, "--role", "viewer"
            )
        )
        yield daemon
        daemon.cancel_own_jobs()


@pytest.fixture(scope="module")
def files(rxd: Rxd) -> Path:
    """Draft files every test user may read (rxctl reads them as the user who runs it)."""
    folder = rxd.root / "drafts"
    folder.mkdir(mode=0o755, exist_ok=True)
    for name, text in {
        "Dockerfile": DOCKERFILE,
        "broken.Dockerfile": BROKEN_DOCKERFILE,
        "failing.def": FAILING,
        "slow.def": SLOW,
        "ignore": "secret*\n",
    }.items():
        (folder / name).write_text(text)
        (folder / name).chmod(0o644)
    return folder


def workspace(rxd: Rxd) -> Path:
    view = json.loads(output(rxd.rxctl(OWNER, "project", "show", "--project", PROJECT, "--json")))
    return Path(view["workspace"])


def dev_mode(rxd: Rxd, on: bool) -> None:
    switch = "on" if on else "off"
    ok(rxd.rxctl(OWNER, "project", "set", "--project", PROJECT, "--dev-mode", switch))


def image(rxd: Rxd, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    result: subprocess.CompletedProcess[str] = rxd.rxctl(user, "image", *args)
    return result


def status(rxd: Rxd, build: str) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(
        output(image(rxd, OWNER, "status", "--project", PROJECT, build, "--json"))
    )
    return answer


def wait_build(rxd: Rxd, build: str, *states: str, timeout: float = BUILD_TIMEOUT_S) -> dict:
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen.update(status(rxd, build))
        return seen["state"] in states

    try:
        wait_for(reached, timeout=timeout, what=f"build {build} to reach {states}")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; last: {seen}\n{rxd.log_text()[-3000:]}") from None
    return seen


def sacct_user(job_id: int) -> str:
    def listed() -> str:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-j", str(job_id), "-o", "User%30"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return out.strip()

    return wait_for(listed, timeout=60, what=f"sacct to list job {job_id}")


def in_queue(job_id: int) -> bool:
    out = subprocess.run(
        ["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True, check=False
    ).stdout
    return bool(out.strip())


def test_builds_are_refused_outside_dev_mode_and_for_viewers(rxd: Rxd, files: Path) -> None:
    dev_mode(rxd, False)
    ok(image(rxd, OWNER, "draft", "create", "--project", PROJECT, "gate", "--file",
             str(files / "Dockerfile")))  # fmt: skip
    line = refused(image(rxd, OWNER, "build", "--project", PROJECT, "gate"))
    assert f"project {PROJECT} is not in dev mode" in line
    assert f"rxctl project set --project {PROJECT} --dev-mode on" in line
    dev_mode(rxd, True)
    line = refused(image(rxd, OWNER, "build", "--project", PROJECT, "gate", "--partition", "nope"))
    assert "unknown partition 'nope'; Slurm has:" in line
    for args in (
        ("build", "--project", PROJECT, "gate"),
        ("draft", "create", "--project", PROJECT, "mine", "--file", str(files / "Dockerfile")),
    ):
        line = refused(image(rxd, VIEWER, *args))
        assert f"build in project {PROJECT} needs role owner or manager or editor" in line
    # Nothing was built or stored by the refusals.
    assert rxd.ledger_rows("SELECT count(*) FROM image_builds") == [(0,)]
    assert rxd.ledger_rows("SELECT name FROM image_drafts") == [("gate",)]
    ok(image(rxd, OWNER, "draft", "delete", "--project", PROJECT, "gate"))


def test_builds_are_refused_when_the_deployment_switch_is_off(files: Path) -> None:
    with lifecycle_rxd(bind=(OWNER,)) as daemon:
        make_project(daemon, "ib-off")
        ok(daemon.rxctl(OWNER, "project", "set", "--project", "ib-off", "--dev-mode", "on"))
        for args in (
            ("build", "--project", "ib-off", "main"),
            ("draft", "create", "--project", "ib-off", "main", "--file", str(files / "slow.def")),
        ):
            line = refused(daemon.rxctl(OWNER, "image", *args))
            assert "image builds are turned off on this deployment" in line


def test_a_broken_dockerfile_names_its_bad_line_before_any_job(rxd: Rxd, files: Path) -> None:
    result = image(rxd, EDITOR, "draft", "validate", "--project", PROJECT, "--file",
                   str(files / "broken.Dockerfile"))  # fmt: skip
    assert result.returncode == 1, result
    assert f"{files / 'broken.Dockerfile'}:3: unknown instruction FOO" in result.stderr
    created = image(rxd, EDITOR, "draft", "create", "--project", PROJECT, "broken", "--file",
                    str(files / "broken.Dockerfile"))  # fmt: skip
    assert created.returncode == 1 and "broken:3: unknown instruction FOO" in created.stderr
    dev_mode(rxd, True)
    line = refused(image(rxd, EDITOR, "build", "--project", PROJECT, "broken"))
    assert "draft broken does not build: line 3: unknown instruction FOO" in line
    assert rxd.ledger_rows("SELECT count(*) FROM image_builds WHERE draft = 'broken'") == [(0,)]


def test_a_dockerfile_draft_builds_as_the_researcher_and_its_logs_follow(
    rxd: Rxd, files: Path
) -> None:
    dev_mode(rxd, True)
    ws = workspace(rxd)
    alice = pwd.getpwnam(OWNER)
    context = ws / "app"
    subprocess.run(
        ["su", OWNER, "-s", "/bin/sh", "-c",
         # COPY keeps a file's mode, as Docker's does: readable by all, as it is run later.
         f"mkdir -p {context} && echo hello-from-ws > {context}/hello.txt"
         f" && chmod 644 {context}/hello.txt"
         f" && echo nope > {context}/secret.txt"],
        check=True,
    )  # fmt: skip
    ok(image(rxd, EDITOR, "draft", "create", "--project", PROJECT, "py", "--file",
             str(files / "Dockerfile"), "--context", "app", "--ignore-file",
             str(files / "ignore")))  # fmt: skip
    checked = output(image(rxd, EDITOR, "draft", "validate", "--project", PROJECT, "py"))
    assert checked == f"py: ok (from docker://{REGISTRY}/rxslurm/busybox:1)\n"

    started = json.loads(output(image(rxd, EDITOR, "build", "--project", PROJECT, "py", "--json")))
    assert started["state"] == "queued" and started["job_id"]
    # Followed until the build ends: the whole output, the copy and Apptainer's last line.
    followed = output(image(rxd, EDITOR, "logs", "--project", PROJECT, "-f", str(started["id"])))
    assert "rx-build: copied 1 files" in followed  # secret.txt was excluded
    assert "hello-from-ws" in followed  # the RUN line read the copied file
    assert "rx-build: succeeded size=" in followed

    done = wait_build(rxd, str(started["id"]), "succeeded", "failed")
    assert done["state"] == "succeeded", done
    assert done["built_by"] == EDITOR and done["runtime_user"] == OWNER
    assert sacct_user(started["job_id"]) == OWNER
    sif = Path(done["image"])
    assert sif.stat().st_uid == alice.pw_uid and sif.stat().st_size == done["size"]
    assert len(done["sha256"]) == 64 and done["base"] == f"docker://{REGISTRY}/rxslurm/busybox:1"
    ran = subprocess.run(
        ["su", OWNER, "-s", "/bin/sh", "-c", f"apptainer run {sif}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ran.stdout == "hello-from-ws\n", ran

    listed = json.loads(output(image(rxd, VIEWER, "list", "--project", PROJECT, "--json")))
    assert [(i["name"], i["state"], i["sha256"]) for i in listed["images"]] == [
        ("py", "succeeded", done["sha256"])
    ]
    table = output(image(rxd, VIEWER, "list", "--project", PROJECT))
    assert table.splitlines()[0].split() == [
        "ID", "NAME", "STATE", "SIZE", "SHA256", "BASE", "BUILT", "BY", "WHEN"
    ]  # fmt: skip
    assert done["sha256"][:12] in table

    renamed = json.loads(
        output(image(rxd, EDITOR, "rename", "--project", PROJECT, "py", "py-v1", "--json"))
    )
    assert renamed["name"] == "py-v1"
    ok(image(rxd, EDITOR, "delete", "--project", PROJECT, "py-v1"))
    assert not sif.exists() and not sif.parent.exists()
    query = "SELECT action FROM events WHERE action LIKE 'image.%'"
    events = [a for (a,) in rxd.ledger_rows(query)]
    for action in ("image.build-submitted", "image.build-succeeded", "image.renamed",
                   "image.build-deleted"):  # fmt: skip
        assert action in events


def test_a_cancelled_build_ends_cancelled_with_its_job_gone(rxd: Rxd, files: Path) -> None:
    dev_mode(rxd, True)
    ok(image(rxd, OWNER, "draft", "create", "--project", PROJECT, "slow", "--file",
             str(files / "slow.def")))  # fmt: skip
    started = json.loads(output(image(rxd, OWNER, "build", "--project", PROJECT, "slow", "--json")))
    wait_build(rxd, str(started["id"]), "building")

    def sleeping() -> bool:
        piece = json.loads(
            output(image(rxd, OWNER, "logs", "--project", PROJECT, str(started["id"]), "--json"))
        )
        return "+ sleep 600" in piece["text"]

    wait_for(sleeping, timeout=BUILD_TIMEOUT_S, what="the build to reach its %post")
    cancelled = json.loads(
        output(image(rxd, OWNER, "cancel", "--project", PROJECT, "slow", "--json"))
    )
    assert cancelled["state"] == "cancelled"
    wait_for(lambda: not in_queue(started["job_id"]), timeout=60, what="the build job to go")
    assert status(rxd, str(started["id"]))["state"] == "cancelled"
    assert rxd.ledger_rows("SELECT count(*) FROM build_leases") == [(0,)]


def test_a_failing_post_ends_failed_with_the_failing_line(rxd: Rxd, files: Path) -> None:
    dev_mode(rxd, True)
    ok(image(rxd, OWNER, "draft", "create", "--project", PROJECT, "failing", "--file",
             str(files / "failing.def")))  # fmt: skip
    started = json.loads(
        output(image(rxd, OWNER, "build", "--project", PROJECT, "failing", "--json"))
    )
    failed = wait_build(rxd, str(started["id"]), "failed", "succeeded")
    assert failed["state"] == "failed"
    assert failed["reason"].startswith("%post failed at line 6: test -e /no/such/file"), failed
    shown = output(image(rxd, OWNER, "status", "--project", PROJECT, "failing"))
    assert "%post failed at line 6: test -e /no/such/file" in shown
    # The failed build's folder holds no image; its output stays for `image logs`.
    assert not os.path.exists(Path(failed["image"] or "/nonexistent"))
