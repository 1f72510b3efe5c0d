"""The pull worker: its argv, environment and limits, the image cache's checks, and pulls run
against a fake Apptainer (a shell script) as the pull account (no Slurm; acting as the pull
account or making files of other owners needs root, the rest runs anywhere). Then, on the
cluster, enable pulling from the loopback registry (tests/cluster/registry.sh) with the real
Apptainer. Hostile pulls (stalls, size, planted files) are tests/hostile/test_pull_limits.py's."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.daemon.config import ConfigError, parse_config
from rxslurm.daemon.containers.pulls import ImagePulls
from rxslurm.daemon.containers.service import ContainerService
from rxslurm.daemon.containers.states import State
from rxslurm.daemon.errors import Conflict
from rxslurm.daemon.images import cache as image_cache
from rxslurm.daemon.images import fetch as image_fetch
from rxslurm.daemon.images import pull as image_pull
from rxslurm.daemon.images.fetch import Fetched
from rxslurm.daemon.images.pull import PullError, PullSettings
from rxslurm.daemon.ledger.store import Ledger
from rxslurm.daemon.ledger.timestamps import to_timestamp, utcnow
from rxslurm.slurm.runas import RunAs
from tests.support.cli import ok
from tests.support.cluster import run_as, wait_for
from tests.support.daemon import Rxd
from tests.support.lifecycle import status
from tests.support.registry import (
    APPTAINER,
    PULL_USER,
    REGISTRY,
    SMALL,
    leases,
    pull_events,
    pulling_rxd,
)

needs_root = pytest.mark.root(reason="acting as the pull account needs root")
ACCOUNT = RunAs("rxpull", 999, 995, (995,))

# A stand-in for `apptainer pull OUT URI`: what it does depends on the reference's name.
FAKE_APPTAINER = r"""#!/bin/sh
[ "$1" = pull ] || exit 2
shift
[ "$1" = --no-https ] && shift
out=$1 uri=$2
case $uri in
*/env:*) { env; echo "uid=$(id -u)"; echo "fsize=$(ulimit -f)"; echo "cwd=$(pwd)"; } >"$out" ;;
*/stall:*) exec sleep 600 ;;
*/huge:*) head -c 50000000 /dev/zero >"$out" ;;
*/many:*) for i in 1 2 3 4 5 6 7 8 9 10 11 12; do head -c 1000000 /dev/urandom >"$TMPDIR/$i"; done
  sleep 600 ;;
*/link:*) ln -s /etc/shadow "$out" ;;
*/fifo:*) mkfifo "$out" ;;
*/none:*) ;;
*/fail:*) echo "INFO:    Converting OCI blobs to SIF format" >&2
  echo "FATAL:   While making image from oci registry: manifest unknown" >&2; exit 255 ;;
*) echo "image of $uri" >"$out" ;;
esac
"""


def settings(folder: Path, **changes: object) -> PullSettings:
    base = PullSettings(
        account=ACCOUNT,
        work_dir=folder / "work",
        image_dir=folder / "images",
        binary=str(folder / "bin" / "apptainer"),
        timeout_s=60.0,
        max_bytes=8 << 20,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


# -- argv, environment, account (fast, no root) -------------------------------------------------


def test_argv_caps_every_file_then_pulls_into_the_output(tmp_path: Path) -> None:
    argv = image_pull.pull_argv(settings(tmp_path), "docker://127.0.0.1:5055/a/b:1", "image.sif")
    assert argv[0].endswith("/prlimit")
    assert argv[1:4] == [f"--fsize={8 << 20}", "--core=0", "--"]
    assert argv[4:] == [
        str(tmp_path / "bin" / "apptainer"),
        "pull",
        "image.sif",
        "docker://127.0.0.1:5055/a/b:1",
    ]


def test_plain_http_only_for_the_registries_the_config_names(tmp_path: Path) -> None:
    plain = settings(tmp_path, plain_http=("127.0.0.1:5055",))
    assert "--no-https" in image_pull.pull_argv(plain, "docker://127.0.0.1:5055/a:1", "o")
    for other in ("docker://127.0.0.1:5056/a:1", "docker://python:3", "oras://ghcr.io/a:1"):
        assert "--no-https" not in image_pull.pull_argv(plain, other, "o")
    # The reference stays one argument, the last: it can never be read as an option.
    argv = image_pull.pull_argv(plain, "docker://x.org/--force:1", "o")
    assert argv[-1] == "docker://x.org/--force:1" and argv.count("--force") == 0


def test_registry_of_a_reference() -> None:
    assert image_pull.registry_of("docker://127.0.0.1:5055/rxslurm/busybox:1") == "127.0.0.1:5055"
    assert image_pull.registry_of("docker://ghcr.io/a/b") == "ghcr.io"
    assert image_pull.registry_of("docker://localhost/a") == "localhost"
    assert image_pull.registry_of("docker://python:3.12-slim") == ""
    assert image_pull.registry_of("docker://library/python") == ""


def test_environment_keeps_every_apptainer_place_inside_the_pull_folder(tmp_path: Path) -> None:
    env = image_pull.pull_env(tmp_path / "pull-x")
    assert set(env) == {
        "HOME",
        "APPTAINER_CACHEDIR",
        "APPTAINER_TMPDIR",
        "APPTAINER_CONFIGDIR",
        "TMPDIR",
    }
    assert all(value.startswith(f"{tmp_path}/pull-x/") for value in env.values())


def config_with(pulls: str, extra: str = "") -> object:
    import tomllib

    return parse_config(tomllib.loads(f"[pulls]\n{pulls}\n{extra}"))


@pytest.mark.parametrize(
    ("pulls", "message"),
    [
        ('user = "Bad User"', "pulls.user must be a Linux user name"),
        ('work_dir = "relative"', "pulls.work_dir must be an absolute path"),
        ("timeout_s = 0", "pulls.timeout_s must be at least 1"),
        ("max_mb = 0", "pulls.max_mb must be at least 1"),
        ("concurrency = 0", "pulls.concurrency must be at least 1"),
        ("enable_wait_s = -1", "pulls.enable_wait_s must not be negative"),
        ('plain_http = ["http://x"]', 'must be "host[:port]"'),
        ("size = 3", "unknown key pulls.size"),
    ],
)
def test_bad_pull_settings_are_refused_in_one_line(pulls: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^config: ") as caught:
        config_with(pulls)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_pull_account_must_be_a_system_account_nobody_is() -> None:
    with pytest.raises(PullError, match="refusing to act as root"):
        image_pull.pull_account(config_with('user = "root"'))
    with pytest.raises(PullError, match="no such user"):
        image_pull.pull_account(config_with('user = "rx-no-such-user"'))
    nobody = pwd.getpwnam("nobody")
    with pytest.raises(PullError, match=f"uid {nobody.pw_uid}.*below identity.min_uid"):
        image_pull.pull_account(config_with('user = "nobody"'))
    # A system account can no longer be the service account at all (it must be bindable), so
    # sharing one with pulls is refused when the config is read.
    with pytest.raises(ConfigError, match="service_account 'daemon' is refused"):
        config_with('user = "daemon"', '[runtime]\nservice_account = "daemon"\n')
    with pytest.raises(PullError, match="pulls no images"):
        image_pull.pull_account(config_with('user = ""'))
    assert image_pull.pull_account(config_with('user = "daemon"')).user == "daemon"


# -- names and references (property-based) -------------------------------------------------------

references = st.builds(
    lambda scheme, rest: f"{scheme}://{rest}",
    st.sampled_from(image_cache.PULL_SCHEMES),
    st.text(min_size=1, max_size=300),
)


@given(references)
def test_a_cached_name_is_one_plain_file_name_whatever_the_reference(uri: str) -> None:
    name = image_cache.image_file_name(uri)
    assert "/" not in name and "\0" not in name and not name.startswith(".")
    assert name.endswith(".sif") and len(name) <= 120
    assert name.isascii() and name.isprintable()


@given(references)
def test_check_reference_refuses_control_characters_and_spaces(uri: str) -> None:
    try:
        assert image_cache.check_reference(uri) == uri
    except ValueError:
        return
    assert uri.isprintable() and not any(ch.isspace() for ch in uri)


def test_different_registries_never_share_a_cached_name() -> None:
    assert image_cache.image_file_name("docker://a.org/python:3") != image_cache.image_file_name(
        "docker://b.org/python:3"
    )


# -- the image cache: only root's files --------------------------------------------------------


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder the pull account can enter, with the fake Apptainer in bin/."""
    path = Path(tempfile.mkdtemp(prefix="rx-pull-", dir="/tmp"))
    path.chmod(0o755)
    (path / "bin").mkdir(mode=0o755)
    fake = path / "bin" / "apptainer"
    fake.write_text(FAKE_APPTAINER)
    fake.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@needs_root
def test_image_dir_must_be_roots_and_not_group_or_world_writable(folder: Path) -> None:
    images = folder / "images"
    images.mkdir(mode=0o755)
    assert image_cache.cached_image(images, "docker://a/b:1") is None
    images.chmod(0o775)
    with pytest.raises(image_cache.UnsafeImageDir, match="not writable by group or others"):
        image_cache.cached_image(images, "docker://a/b:1")
    images.chmod(0o755)
    os.chown(images, pwd.getpwnam("rxalice").pw_uid, -1)
    with pytest.raises(image_cache.UnsafeImageDir, match="must be owned by root"):
        image_cache.cached_image(images, "docker://a/b:1")
    os.chown(images, 0, -1)
    images.rmdir()
    images.symlink_to(folder / "bin")
    with pytest.raises(image_cache.UnsafeImageDir, match="is not a folder"):
        image_cache.cached_image(images, "docker://a/b:1")


@needs_root
def test_a_planted_symlink_or_foreign_file_is_never_used(folder: Path) -> None:
    images = folder / "images"
    images.mkdir(mode=0o755)
    uri = "docker://python:3.12-slim"
    target = images / image_cache.image_file_name(uri)
    target.symlink_to("/etc/hostname")
    with pytest.raises(image_cache.UnsafeImageDir, match="not a regular file"):
        image_cache.cached_image(images, uri)
    target.unlink()
    target.write_text("planted")
    os.chown(target, pwd.getpwnam("rxdave").pw_uid, -1)
    with pytest.raises(image_cache.UnsafeImageDir, match="not root's alone"):
        image_cache.cached_image(images, uri)
    os.chown(target, 0, -1)
    target.chmod(0o666)
    with pytest.raises(image_cache.UnsafeImageDir, match="not root's alone"):
        image_cache.cached_image(images, uri)
    target.chmod(0o644)
    os.link(target, folder / "second-name")
    with pytest.raises(image_cache.UnsafeImageDir, match="2 links"):
        image_cache.cached_image(images, uri)
    (folder / "second-name").unlink()
    assert image_cache.cached_image(images, uri) == target


# -- pulls as the pull account, against the fake -----------------------------------------------


def real_settings(folder: Path, **changes: object) -> PullSettings:
    return settings(folder, account=RunAs.for_user(PULL_USER), **changes)


def assert_nothing_left(folder: Path) -> None:
    assert list((folder / "work").iterdir()) == []
    images = folder / "images"
    assert not images.exists() or [p.name for p in images.iterdir()] == []


@needs_root
def test_a_pull_runs_as_the_pull_account_with_a_clean_environment(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APPTAINER_DOCKER_PASSWORD", "roots-secret")
    monkeypatch.setenv("LD_PRELOAD", "/nonexistent.so")
    s = real_settings(folder)
    image, size = image_pull.pull(s, "docker://reg.example/env:1")
    info = image.lstat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 0, 0o644)
    assert image.parent == folder / "images" and size == info.st_size
    seen = dict(line.split("=", 1) for line in image.read_text().splitlines() if "=" in line)
    assert seen["uid"] == str(pwd.getpwnam(PULL_USER).pw_uid)
    assert int(seen["fsize"]) * 512 == s.max_bytes  # ulimit -f counts 512-byte blocks
    assert "APPTAINER_DOCKER_PASSWORD" not in seen and "LD_PRELOAD" not in seen
    pull_folder = seen["cwd"]
    assert pull_folder.startswith(f"{folder}/work/pull-")
    for key in ("HOME", "APPTAINER_CACHEDIR", "APPTAINER_TMPDIR", "TMPDIR"):
        assert seen[key].startswith(pull_folder + "/")
    assert seen["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert list((folder / "work").iterdir()) == []  # the pull's folder is gone


@needs_root
def test_a_failed_pull_carries_apptainers_fatal_line_and_leaves_nothing(folder: Path) -> None:
    with pytest.raises(PullError) as caught:
        image_pull.pull(real_settings(folder), "docker://reg.example/fail:1")
    assert caught.value.message == "While making image from oci registry: manifest unknown"
    assert caught.value.returncode == 255
    assert_nothing_left(folder)


@needs_root
def test_a_pull_past_its_time_out_is_killed(folder: Path) -> None:
    with pytest.raises(PullError, match=r"did not finish within 1 s \(pulls.timeout_s\)"):
        image_pull.pull(real_settings(folder, timeout_s=1.0), "docker://reg.example/stall:1")
    assert_nothing_left(folder)
    assert not [p for p in Path("/proc").glob("[0-9]*") if _is_stalled_fake(p, folder)]


def _is_stalled_fake(proc: Path, folder: Path) -> bool:
    try:
        return proc.stat().st_uid == pwd.getpwnam(PULL_USER).pw_uid and str(folder) in (
            (proc / "cmdline").read_bytes().decode(errors="replace")
        )
    except OSError:
        return False


@needs_root
def test_one_file_past_the_cap_fails_the_pull(folder: Path) -> None:
    with pytest.raises(PullError, match="needs more than the 8 MiB a pull may use"):
        image_pull.pull(real_settings(folder), "docker://reg.example/huge:1")
    assert_nothing_left(folder)


@needs_root
def test_many_files_past_the_cap_together_fail_the_pull(folder: Path) -> None:
    # Each file is under the per-file limit; rxd's own count of the folder stops it.
    with pytest.raises(PullError, match="needs more than the 8 MiB a pull may use"):
        image_pull.pull(real_settings(folder), "docker://reg.example/many:1")
    assert_nothing_left(folder)


@pytest.mark.parametrize(("kind", "reason"), [("link", "refused"), ("fifo", "refused")])
@needs_root
def test_a_result_that_is_not_a_regular_file_is_refused(
    folder: Path, kind: str, reason: str
) -> None:
    with pytest.raises(PullError, match=reason):
        image_pull.pull(real_settings(folder), f"docker://reg.example/{kind}:1")
    assert_nothing_left(folder)


@needs_root
def test_a_pull_that_makes_no_image_says_so(folder: Path) -> None:
    with pytest.raises(PullError, match="the pull made no image"):
        image_pull.pull(real_settings(folder), "docker://reg.example/none:1")
    assert_nothing_left(folder)


@needs_root
def test_a_cancelled_pull_is_ended(folder: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(image_pull.PullCancelled):
        image_pull.pull(real_settings(folder), "docker://reg.example/stall:1", cancel)
    assert_nothing_left(folder)


@needs_root
def test_an_unsafe_work_dir_is_refused_before_anything_runs(folder: Path) -> None:
    work = folder / "work"
    work.mkdir(mode=0o777)
    work.chmod(0o777)
    with pytest.raises(image_cache.UnsafeImageDir, match="pulls.work_dir .* not writable"):
        image_pull.pull(real_settings(folder), "docker://reg.example/env:1")
    assert list(work.iterdir()) == []


@needs_root
def test_sweep_removes_what_a_stopped_pull_left(folder: Path) -> None:
    s = real_settings(folder)
    work = folder / "work"
    work.mkdir(mode=0o755)
    left = work / "pull-0123456789abcdef"
    (left / "tmp" / "ro").mkdir(parents=True)
    (left / "tmp" / "ro" / "f").write_text("x")
    for path in (left, left / "tmp", left / "tmp" / "ro", left / "tmp" / "ro" / "f"):
        os.chown(path, s.account.uid, s.account.gid)
    (left / "tmp" / "ro").chmod(0o555)  # unpacked trees have such folders
    image_pull.sweep(s)
    assert list(work.iterdir()) == []


# -- on the cluster: enable pulls from the loopback registry -------------------------------------


def state_events(rxd: Rxd, project: str) -> list[tuple[str, str, str]]:
    """(from, to, actor) of the container's state changes, oldest first."""
    rows = rxd.ledger_rows(
        "SELECT actor, detail FROM events WHERE action = 'container.state' AND target_id = ? "
        "ORDER BY id",
        [f"rx-{project}"],
    )
    return [(json.loads(d)["from"], json.loads(d)["to"], a) for a, d in rows]


@pytest.mark.cluster
def test_enable_pulls_as_the_pull_account_and_the_container_goes_on_by_itself() -> None:
    with pulling_rxd() as rxd:
        ok(rxd.rxctl("rxalice", "project", "create", "pulled", "--image", SMALL))
        enabled = ok(rxd.rxctl("rxalice", "enable", "--project", "pulled"))
        assert enabled.stdout.startswith("pulled: enabled; now pulling ("), enabled.stdout
        assert SMALL in enabled.stdout

        def submitted() -> bool:
            return ("waiting_for_resources", "starting", "rxd") in state_events(rxd, "pulled")

        wait_for(submitted, timeout=90, what="the container to get a job after its pull")
        assert state_events(rxd, "pulled")[:3] == [
            ("disabled", "pulling", "rxalice"),
            ("pulling", "waiting_for_resources", "rxd"),
            ("waiting_for_resources", "starting", "rxd"),
        ]
        image = Path(status(rxd, "rxalice", "pulled")["image"])
        assert image.parent == rxd.root / "images"
        info = image.lstat()
        assert stat.S_ISREG(info.st_mode) and (info.st_uid, info.st_gid) == (0, 0)
        assert stat.S_IMODE(info.st_mode) == 0o644
        started, pulled = pull_events(rxd)
        assert (started["outcome"], started["account"], started["image"]) == (
            "started",
            PULL_USER,
            SMALL,
        )
        assert pulled["outcome"] == "pulled" and pulled["bytes"] == info.st_size
        assert started["containers"] == pulled["containers"] == [1]
        assert list((rxd.root / "pulls").iterdir()) == []
        # What was pulled is a real image a researcher runs.
        shown = run_as("rxalice", [APPTAINER, "exec", str(image), "cat", "/etc/rx-test-image"])
        assert shown.stdout == "rx-slurm test image rxslurm/busybox:1\n", shown.stderr

        # The same reference again: the cached file, no second pull, no "pulling".
        ok(rxd.rxctl("rxbob", "project", "create", "again", "--image", SMALL))
        again = ok(rxd.rxctl("rxbob", "enable", "--project", "again"))
        assert "pulling" not in again.stdout
        assert state_events(rxd, "again")[0] == ("disabled", "stopped", "rxbob")
        assert len(pull_events(rxd)) == 2
        for user, project in (("rxalice", "pulled"), ("rxbob", "again")):
            ok(rxd.rxctl(user, "stop", "--project", project))


@pytest.mark.cluster
def test_a_failed_pull_ends_in_error_with_its_reason_and_retry_pulls_again() -> None:
    missing = f"docker://{REGISTRY}/rxslurm/missing:1"
    with pulling_rxd(enable_wait_s="30") as rxd:
        ok(rxd.rxctl("rxalice", "project", "create", "nope", "--image", missing))
        # A quick failure is answered by enable itself, in one line.
        refused = rxd.rxctl("rxalice", "enable", "--project", "nope")
        assert refused.returncode == 1
        assert refused.stderr.startswith(f"Error: cannot pull {missing}: ")
        assert "manifest unknown" in refused.stderr and refused.stderr.count("\n") == 1
        failed = status(rxd, "rxalice", "nope")
        assert failed["state"] == "error" and "manifest unknown" in failed["last_error"]
        assert leases(rxd) == 0
        # The image is put in place; retry pulls again and the container goes on.
        ok(rxd.rxctl("rxalice", "project", "set", "--project", "nope", "--image", SMALL))
        retried = ok(rxd.rxctl("rxalice", "retry", "--project", "nope"))
        assert "error" not in retried.stdout
        assert [e["outcome"] for e in pull_events(rxd)] == [
            "started",
            "failed",
            "started",
            "pulled",
        ]
        ok(rxd.rxctl("rxalice", "stop", "--project", "nope"))


# -- the pull pool (rxslurm/daemon/containers/pulls.py) on a real ledger, with a fake pull -----


class FakePulls:
    """Stands in for image_fetch.fetch: counts calls, blocks until released, then answers."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.calls: list[str] = []
        self.release = threading.Event()
        self.fail: dict[str, str] = {}

    def __call__(self, settings: PullSettings, ledger: Ledger, uri: str, **_: object) -> Fetched:
        self.calls.append(uri)
        assert self.release.wait(30), "the test never released the fake pull"
        if uri in self.fail:
            raise PullError(self.fail[uri], 255)
        return Fetched(self.folder / image_cache.image_file_name(uri), 42, None)


@pytest.fixture
def pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ImagePulls, FakePulls]]:
    ledger = Ledger.open(tmp_path / "ledger.db", migrate=True)
    rt = ContainerService(ledger, parse_config({"pulls": {"max_per_user": 2}}), scheduler=None)  # type: ignore[arg-type]
    fake = FakePulls(tmp_path)
    monkeypatch.setattr(image_fetch, "fetch", fake)
    monkeypatch.setattr(rt.pulls, "settings", lambda: settings(tmp_path))
    yield rt.pulls, fake
    fake.release.set()
    rt.pulls.stop()
    ledger.close()


def pulling(pulls: ImagePulls, project: str, uri: str, desired: str = "running") -> int:
    """A container of rxalice's in PULLING for ``uri``; its id."""
    now = to_timestamp(utcnow())
    with pulls.rt.ledger.transaction() as db:
        if not db["platform_users"].count_where("id = ?", ["rxalice"]):
            db["platform_users"].insert({"id": "rxalice", "created_at": now})
        project_id = (
            db["projects"].insert({"name": project, "created_at": now, "created_by": "rxalice"})
        ).last_pk
        row = {
            "project_id": project_id,
            "name": f"rx-{project}",
            "state": State.PULLING.value,
            "desired": desired,
            "image": uri,
            "runtime_user": "rxalice",
            "runtime_uid": 2001,
            "created_at": now,
            "updated_at": now,
        }
        return db["containers"].insert(row).last_pk


def row_of(pulls: ImagePulls, cid: int) -> dict:
    return pulls.rt.ledger.db["containers"].get(cid)


def test_one_pull_per_reference_and_a_waiting_request_takes_its_outcome(
    pool: tuple[ImagePulls, FakePulls],
) -> None:
    pulls, fake = pool
    asked, joined = (
        pulling(pulls, "asked", "docker://a/x:1"),
        pulling(pulls, "joined", "docker://a/x:1"),
    )
    pulls.request(asked, "docker://a/x:1", 2001, waiter=True)
    pulls.request(joined, "docker://a/x:1", 2002, waiter=False)
    assert pulls.wait(asked, 0.05) is None  # still pulling: the request answers "pulling"
    pulls.request(asked, "docker://a/x:1", 2001, waiter=True)
    fake.release.set()
    outcome = pulls.wait(asked, 30)
    assert outcome is not None and outcome.image == fake.folder / image_cache.image_file_name(
        "docker://a/x:1"
    )
    assert fake.calls == ["docker://a/x:1"]
    # The waiting request acts for its own container; the other went on by itself.
    assert row_of(pulls, asked)["state"] == State.PULLING
    wait_for(lambda: row_of(pulls, joined)["state"] == State.WAITING, timeout=30, what="queued")
    queued = row_of(pulls, joined)
    assert queued["image"] == str(outcome.image) and queued["queued_at"] is not None
    assert queued["reason"] == "image pulled; waiting for its turn"
    assert pulls.busy() == []


def test_a_user_has_at_most_max_per_user_images_pulling(pool: tuple[ImagePulls, FakePulls]) -> None:
    pulls, _ = pool
    for n in (1, 2):
        pulls.request(
            pulling(pulls, f"p{n}", f"docker://a/x:{n}"), f"docker://a/x:{n}", 2001, waiter=False
        )
    third = pulling(pulls, "p3", "docker://a/x:3")
    with pytest.raises(
        Conflict, match=r"you already have 2 images being pulled \(docker://a/x:1, "
    ):
        pulls.request(third, "docker://a/x:3", 2001, waiter=False)
    # Joining a pull under way costs nothing; another user has their own allowance.
    pulls.request(third, "docker://a/x:1", 2001, waiter=False)
    pulls.request(pulling(pulls, "bobs", "docker://a/x:3"), "docker://a/x:3", 2002, waiter=False)
    assert pulls.busy() == ["docker://a/x:1", "docker://a/x:2", "docker://a/x:3"]


def test_a_failed_pull_puts_the_container_in_error_with_its_reason_audited(
    pool: tuple[ImagePulls, FakePulls],
) -> None:
    pulls, fake = pool
    fake.fail["docker://a/bad:1"] = "manifest unknown"
    cid = pulling(pulls, "bad", "docker://a/bad:1")
    pulls.request(cid, "docker://a/bad:1", 2001, waiter=False)
    fake.release.set()
    wait_for(lambda: row_of(pulls, cid)["state"] == State.ERROR, timeout=30, what="error")
    failed = row_of(pulls, cid)
    assert (failed["last_error"], failed["desired"]) == ("manifest unknown", "stopped")
    assert pulls.rt.ledger.db["leases"].count == 0
    events = [
        json.loads(e["detail"])
        for e in pulls.rt.ledger.db["events"].rows_where("action = ?", ["image.pull"])
    ]
    assert [(e["outcome"], e["containers"]) for e in events] == [
        ("started", [cid]),
        ("failed", [cid]),
    ]
    assert events[1]["reason"] == "manifest unknown"


def test_a_container_stopped_during_its_pull_rests_with_the_image(
    pool: tuple[ImagePulls, FakePulls],
) -> None:
    pulls, fake = pool
    cid = pulling(pulls, "later", "docker://a/x:1", desired="stopped")
    pulls.request(cid, "docker://a/x:1", 2001, waiter=False)
    fake.release.set()
    wait_for(lambda: row_of(pulls, cid)["state"] == State.STOPPED, timeout=30, what="stopped")
    assert row_of(pulls, cid)["image"].endswith(".sif")


def test_start_pulls_again_for_containers_a_stopped_rxd_left_pulling(
    pool: tuple[ImagePulls, FakePulls],
) -> None:
    pulls, fake = pool
    cid = pulling(pulls, "left", "docker://a/x:1")
    fake.release.set()
    pulls.start()
    wait_for(lambda: row_of(pulls, cid)["state"] == State.WAITING, timeout=30, what="queued")
    assert fake.calls == ["docker://a/x:1"]
