"""The Apptainer stand-in (tests/standin): its CLI surface, and that it really runs payloads as
the calling user with binds, overlays and instances. No Slurm needed; needs root to act as the
test users rxalice and rxbob."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="acting as the test users needs root")

STANDIN = Path(__file__).resolve().parent / "standin"
APPTAINER = str(STANDIN / "apptainer")
PATH = f"{STANDIN}:/usr/local/bin:/usr/bin:/bin"
DEFINITION = """\
Bootstrap: docker
From: python:3.12-slim

%labels
    Maintainer rx-slurm tests
    Version 1.0

%environment
    export FROM_IMAGE=yes
    export PATH=/opt/tools/bin:$PATH

%runscript
    echo "runscript: $@"

%startscript
    echo "startscript: $@"
    exec sleep 100000
"""


def run_as(
    user: str,
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike[str] = "/",
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """argv as `user` (root: unchanged) with a small login-like environment."""
    pw = pwd.getpwnam(user)
    base = {"PATH": PATH, "HOME": pw.pw_dir, "USER": user, "LANG": "C.UTF-8"}
    identity: dict[str, object] = {}
    if pw.pw_uid != 0:
        identity = {
            "user": pw.pw_uid,
            "group": pw.pw_gid,
            "extra_groups": os.getgrouplist(user, pw.pw_gid),
        }
    return subprocess.run(
        list(argv),
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **identity,  # type: ignore[arg-type]
    )


def wait_for(check: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode().strip()


def user_dir(parent: Path, user: str, name: str) -> Path:
    path = parent / name
    path.mkdir()
    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


@pytest.fixture(scope="module")
def area() -> Iterator[Path]:
    """A folder every test user can read, holding one image built from DEFINITION."""
    path = Path(tempfile.mkdtemp(prefix="rx-standin-", dir="/tmp"))
    path.chmod(0o755)
    (path / "app.def").write_text(DEFINITION)
    result = run_as("root", [APPTAINER, "build", str(path / "img.sif"), str(path / "app.def")])
    assert result.returncode == 0, result.stderr
    (path / "img.sif").chmod(0o644)
    yield path
    for user in ("rxalice", "rxbob"):
        run_as(user, [APPTAINER, "instance", "stop", "--all", "-t", "2"], cwd=path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def work(area: Path) -> Iterator[Path]:
    """A per-test folder inside the area (world-readable) for files the test makes."""
    path = area / uuid.uuid4().hex[:10]
    path.mkdir()
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def configdir(work: Path) -> dict[str, str]:
    """Instance state for rxalice in the test's folder rather than her home."""
    return {"APPTAINER_CONFIGDIR": str(user_dir(work, "rxalice", "config"))}


@pytest.fixture
def instances() -> Iterator[list[tuple[str, str, dict[str, str]]]]:
    """Instances a test started, as (user, name, env): stopped at the end whatever happens."""
    started: list[tuple[str, str, dict[str, str]]] = []
    yield started
    for user, name, env in started:
        run_as(user, [APPTAINER, "instance", "stop", "-t", "2", name], env=env)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- the CLI surface -------------------------------------------------------------------------


def test_version_strings() -> None:
    assert run_as("rxalice", ["apptainer", "--version"]).stdout == "apptainer version 1.3.4\n"
    assert run_as("rxalice", ["apptainer", "version"]).stdout == "1.3.4\n"
    result = run_as("rxalice", ["singularity", "--version"])
    assert (result.returncode, result.stdout) == (0, "apptainer version 1.3.4\n")
    assert os.readlink(STANDIN / "singularity") == "apptainer"


def test_unknown_flag_is_a_usage_error(area: Path) -> None:
    result = run_as("rxalice", ["apptainer", "exec", "--frobnicate", "img.sif", "true"], cwd=area)
    assert result.returncode == 1
    assert result.stderr.startswith('Error for command "exec": unknown flag: --frobnicate\n')
    assert "Options for exec command:" in result.stderr


def test_unknown_subcommand_is_a_usage_error() -> None:
    result = run_as("rxalice", ["apptainer", "frobnicate"])
    assert result.returncode == 1
    assert result.stderr.startswith('Error for command "frobnicate": invalid command\n')
    assert "Usage:" in result.stderr


def test_wrong_argument_count_is_a_usage_error(area: Path) -> None:
    result = run_as("rxalice", ["apptainer", "exec", "img.sif"], cwd=area)
    assert result.returncode == 1
    assert 'Error for command "exec": requires at least 2 arg(s), only received 1' in result.stderr


def test_option_parsing_stops_at_the_image(area: Path) -> None:
    result = run_as("rxalice", ["apptainer", "exec", "img.sif", "echo", "--bind", "-x"], cwd=area)
    assert (result.returncode, result.stdout) == (0, "--bind -x\n")


def test_restricted_flags_are_rejected_where_apptainer_rejects_them(area: Path) -> None:
    result = run_as("rxalice", ["apptainer", "instance", "start", "--pid", "img.sif", "x"])
    assert result.returncode == 1
    assert "unknown flag: --pid" in result.stderr
    result = run_as("rxalice", ["apptainer", "exec", "--pid-file", "/tmp/p", "img.sif", "true"])
    assert result.returncode == 1
    assert "unknown flag: --pid-file" in result.stderr


# --- running payloads ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (["true"], 0),
        (["false"], 1),
        (["sh", "-c", "exit 3"], 3),
        (["sh", "-c", "kill -TERM $$"], 128 + signal.SIGTERM),
        (["no-such-command-here"], 255),
    ],
)
def test_exec_passes_the_payload_exit_code_through(
    area: Path, payload: list[str], code: int
) -> None:
    result = run_as("rxalice", ["apptainer", "exec", "img.sif", *payload], cwd=area)
    assert result.returncode == code, result.stderr


def test_missing_command_is_apptainers_fatal(area: Path) -> None:
    result = run_as("rxalice", ["apptainer", "exec", "img.sif", "no-such-command"], cwd=area)
    assert result.stderr == ('FATAL:   "no-such-command": executable file not found in $PATH\n')


def test_missing_image_is_fatal(area: Path) -> None:
    result = run_as("rxalice", ["apptainer", "exec", str(area / "nope.sif"), "true"])
    assert result.returncode == 255
    assert result.stderr.startswith(f"FATAL:   could not open image {area}/nope.sif: ")


def test_payload_runs_as_the_caller_not_mapped_root(area: Path) -> None:
    script = "id -u; id -g; cat /proc/self/uid_map"
    result = run_as("rxalice", ["apptainer", "exec", "img.sif", "sh", "-c", script], cwd=area)
    uid, gid, uid_map = result.stdout.splitlines()
    assert (uid, gid) == ("2001", "2001")
    assert uid_map.split() == ["2001", "2001", "1"]


def test_bind_to_a_destination_missing_on_the_host(work: Path) -> None:
    assert not os.path.exists("/workspace")
    ws = user_dir(work, "rxalice", "ws")
    (ws / "hello.txt").write_text("hi from the host\n")
    script = "cat /workspace/hello.txt && echo written > /workspace/new.txt"
    result = run_as(
        "rxalice",
        ["apptainer", "exec", "-B", f"{ws}:/workspace", str(work.parent / "img.sif")]
        + ["sh", "-c", script],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hi from the host\n"
    assert (ws / "new.txt").read_text() == "written\n"
    assert (ws / "new.txt").stat().st_uid == 2001
    assert not os.path.exists("/workspace")


def test_read_only_bind_refuses_writes(work: Path) -> None:
    ws = user_dir(work, "rxalice", "ws")
    image = str(work.parent / "img.sif")
    result = run_as(
        "rxalice",
        ["apptainer", "exec", "--bind", f"{ws}:/data:ro", image, "touch", "/data/x"],
    )
    assert result.returncode == 1
    assert "Read-only file system" in result.stderr
    assert not (ws / "x").exists()


def test_binds_from_the_environment_and_comma_lists(work: Path) -> None:
    a, b = user_dir(work, "rxalice", "a"), user_dir(work, "rxalice", "b")
    (a / "fa").touch()
    (b / "fb").touch()
    result = run_as(
        "rxalice",
        ["apptainer", "exec", "-B", f"{a}:/one,{b}:/two", str(work.parent / "img.sif")]
        + ["ls", "/one", "/two", "/three"],
        env={"APPTAINER_BIND": f"{a}:/three"},
    )
    assert result.returncode == 0, result.stderr
    assert "fa" in result.stdout and "fb" in result.stdout


def test_missing_bind_source_is_fatal(area: Path) -> None:
    result = run_as(
        "rxalice", ["apptainer", "exec", "-B", "/nonexistent-src:/x", "img.sif", "true"], cwd=area
    )
    assert result.returncode == 255
    assert "mount source /nonexistent-src doesn't exist" in result.stderr


def test_outside_binds_the_container_is_read_only(area: Path) -> None:
    result = run_as("rxalice", ["apptainer", "exec", "img.sif", "touch", "/opt/x"], cwd=area)
    assert result.returncode == 1
    assert "Read-only file system" in result.stderr


def test_home_is_mounted_and_other_homes_are_not(area: Path) -> None:
    script = 'echo "$HOME"; ls -d /home/*'
    result = run_as("rxalice", ["apptainer", "exec", "img.sif", "sh", "-c", script], cwd=area)
    assert result.stdout.split() == ["/home/rxalice", "/home/rxalice"]


def test_environment_image_user_defined_and_cleanenv(area: Path) -> None:
    script = 'echo "$FROM_IMAGE|$FROM_HOST|$INJECTED|$FLAG|$PATH"'
    env = {"FROM_HOST": "host", "APPTAINERENV_INJECTED": "injected"}
    result = run_as(
        "rxalice",
        ["apptainer", "exec", "--env", "FLAG=flag", "img.sif", "sh", "-c", script],
        cwd=area,
        env=env,
    )
    image_path = "/opt/tools/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert result.stdout == f"yes|host|injected|flag|{image_path}\n"
    result = run_as(
        "rxalice", ["apptainer", "exec", "-e", "img.sif", "sh", "-c", script], cwd=area, env=env
    )
    assert result.stdout == f"yes||injected||{image_path}\n"


def test_run_and_test_use_the_images_scripts(area: Path) -> None:
    result = run_as("rxalice", ["apptainer", "run", "img.sif", "a", "b"], cwd=area)
    assert (result.returncode, result.stdout) == (0, "runscript: a b\n")
    result = run_as("rxalice", ["apptainer", "test", "img.sif"], cwd=area)
    assert result.returncode == 0
    assert "No test script found in container, exiting" in result.stderr


def test_signals_sent_to_apptainer_reach_the_payload(area: Path) -> None:
    pw = pwd.getpwnam("rxalice")
    script = "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done"
    proc = subprocess.Popen(
        ["apptainer", "exec", "img.sif", "sh", "-c", script],
        cwd=area,
        env={"PATH": PATH, "HOME": pw.pw_dir},
        user=pw.pw_uid,
        group=pw.pw_gid,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 7
        assert proc.stdout.read() == "got-term\n"
    finally:
        proc.kill()
        proc.wait()


def test_gpu_flags_only_warn_without_gpus(area: Path) -> None:
    assert not list(Path("/dev").glob("nvidia*"))
    result = run_as("rxalice", ["apptainer", "exec", "--nv", "--rocm", "img.sif", "true"], cwd=area)
    assert result.returncode == 0
    assert result.stderr == (
        "WARNING: Could not find any nv files on this host!\n"
        "WARNING: Could not find any rocm files on this host!\n"
    )


@pytest.mark.parametrize(
    ("flags", "script", "expected"),
    [
        (["--hostname", "box"], "hostname", "box"),
        (["--fakeroot"], "id -u; echo $HOME", "0\n/root"),
        (["--pid"], "cat /proc/1/cmdline | tr '\\0' ' '; echo", "/usr/bin/python3 -IS"),
        (["--net", "--network", "none"], "tail -n +3 /proc/net/dev | cut -d: -f1 | xargs", "lo\n"),
        (["--contain"], "ls -A /tmp; ls /dev | wc -l; pwd", "13\n/home/rxalice"),
        (["--cwd", "/usr"], "pwd", "/usr"),
    ],
)
def test_namespace_and_contain_flags(
    area: Path, flags: list[str], script: str, expected: str
) -> None:
    result = run_as(
        "rxalice", ["apptainer", "exec", *flags, "img.sif", "sh", "-c", script], cwd=area
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(expected)
    assert flags[0] != "--net" or result.stdout == expected  # loopback only


def test_network_other_than_none_is_refused_to_users(area: Path) -> None:
    result = run_as("rxalice", ["apptainer", "exec", "--net", "img.sif", "true"], cwd=area)
    assert (result.returncode, result.stderr) == (
        255,
        "FATAL:   non-root users can only use --network=none\n",
    )


def test_shell_works_on_a_terminal(area: Path) -> None:
    pexpect = pytest.importorskip("pexpect")
    argv = ["-u", "rxalice", "--", "env", f"PATH={PATH}", "apptainer", "shell", "img.sif"]
    child = pexpect.spawn("runuser", argv, cwd=str(area), encoding="utf-8", timeout=20)
    try:
        child.expect_exact("Apptainer> ")
        child.sendline("tty; id -un")
        child.expect(r"/dev/pts/\d+\r\nrxalice\r\n")
        child.expect_exact("Apptainer> ")
        child.sendline("sleep 60")
        # ^C only once sleep runs: sent earlier, it can reach the shell before the job exists.
        wait_for(
            lambda: subprocess.run(["pgrep", "-u", "rxalice", "-f", "^sleep 60$"]).returncode == 0,
            timeout=20,
            what="sleep to run in the container",
        )
        child.sendintr()  # ^C interrupts the foreground job, not the shell
        child.expect_exact("Apptainer> ")
        child.sendline("exit 5")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 5


# --- instances -------------------------------------------------------------------------------


def test_instance_start_list_exec_stop_round_trip(
    work: Path, configdir: dict[str, str], instances: list
) -> None:
    ws = user_dir(work, "rxalice", "ws")
    (ws / "seen").write_text("through the bind\n")
    name = unique("web")
    image = str(work.parent / "img.sif")
    start = run_as(
        "rxalice",
        ["apptainer", "instance", "start", "-B", f"{ws}:/workspace", image, name, "x", "y"],
        env=configdir,
    )
    instances.append(("rxalice", name, configdir))
    assert start.returncode == 0, start.stderr
    assert start.stderr == "INFO:    instance started successfully\n"

    listed = run_as("rxalice", ["apptainer", "instance", "list", "--json"], env=configdir)
    assert listed.stdout.startswith('{\n\t"instances": [\n\t\t{\n\t\t\t"instance": ')
    (entry,) = json.loads(listed.stdout)["instances"]
    assert list(entry) == ["instance", "pid", "img", "ip", "logErrPath", "logOutPath"]
    assert (entry["instance"], entry["img"], entry["ip"]) == (name, image, "")
    pid = entry["pid"]
    assert alive(pid)
    record = Path(configdir["APPTAINER_CONFIGDIR"]) / "instances" / "app"
    (record_file,) = record.glob(f"*/rxalice/{name}/{name}.json")
    ppid = json.loads(record_file.read_text())["ppid"]
    assert cmdline(ppid) == f"Apptainer instance: rxalice [{name}]"
    wait_for(lambda: "startscript: x y" in Path(entry["logOutPath"]).read_text(), what="log")

    inside = run_as(
        "rxalice",
        ["apptainer", "exec", f"instance://{name}", "sh", "-c", "id -u; cat /workspace/seen"],
        env=configdir,
    )
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout == "2001\nthrough the bind\n"
    # the instance has its own PID namespace: its init is PID 1 there
    ps = run_as(
        "rxalice",
        ["apptainer", "exec", f"instance://{name}", "cat", "/proc/1/cmdline"],
        env=configdir,
    )
    assert ps.stdout.startswith("appinit")

    stop = run_as("rxalice", ["apptainer", "instance", "stop", name], env=configdir)
    assert stop.returncode == 0
    assert stop.stderr == f"INFO:    Stopping {name} instance of {image} (PID={pid})\n"
    assert not alive(pid) and not alive(ppid)
    after = run_as("rxalice", ["apptainer", "instance", "list", "--json"], env=configdir)
    assert after.stdout == '{\n\t"instances": []\n}\n'
    assert not record_file.exists()


def test_duplicate_instance_name_is_fatal(
    area: Path, configdir: dict[str, str], instances: list
) -> None:
    name = unique("dup")
    first = run_as(
        "rxalice", ["apptainer", "instance", "start", "img.sif", name], cwd=area, env=configdir
    )
    instances.append(("rxalice", name, configdir))
    assert first.returncode == 0, first.stderr
    second = run_as(
        "rxalice", ["apptainer", "instance", "start", "img.sif", name], cwd=area, env=configdir
    )
    assert second.returncode == 255
    assert second.stderr == f"FATAL:   instance {name} already exists\n"


def test_invalid_instance_name_is_fatal(area: Path, configdir: dict[str, str]) -> None:
    result = run_as(
        "rxalice", ["apptainer", "instance", "start", "img.sif", "a b"], cwd=area, env=configdir
    )
    assert result.returncode == 255
    assert "FATAL:" in result.stderr


def test_exec_in_a_missing_instance_is_fatal(configdir: dict[str, str]) -> None:
    result = run_as("rxalice", ["apptainer", "exec", "instance://nope", "true"], env=configdir)
    assert result.returncode == 255
    assert result.stderr == (
        "FATAL:   While setting image/instance: no instance found with name nope\n"
    )


def test_stop_of_an_unknown_instance_exits_1(configdir: dict[str, str]) -> None:
    result = run_as("rxalice", ["apptainer", "instance", "stop", "nope"], env=configdir)
    assert result.returncode == 1
    assert result.stderr.startswith('Error for command "stop": no instance found\n')
    result = run_as("rxalice", ["apptainer", "instance", "stop"], env=configdir)
    assert result.returncode == 1


def test_stop_kills_an_instance_that_ignores_the_signal_after_the_timeout(
    work: Path, configdir: dict[str, str], instances: list
) -> None:
    definition = work / "stubborn.def"
    definition.write_text(
        "Bootstrap: localimage\nFrom: ../img.sif\n\n%startscript\n    trap '' INT TERM\n"
        "    while :; do sleep 0.05; done\n"
    )
    image = work / "stubborn.sif"
    built = run_as("root", [APPTAINER, "build", str(image), str(definition)], cwd=work)
    assert built.returncode == 0, built.stderr
    image.chmod(0o644)
    name = unique("stubborn")
    start = run_as("rxalice", ["apptainer", "instance", "start", str(image), name], env=configdir)
    instances.append(("rxalice", name, configdir))
    assert start.returncode == 0, start.stderr
    stop = run_as("rxalice", ["apptainer", "instance", "stop", "-t", "1", name], env=configdir)
    assert stop.returncode == 0
    assert f"INFO:    Killing {name} instance of {image}" in stop.stderr
    assert "(Timeout)" in stop.stderr
    listed = run_as("rxalice", ["apptainer", "instance", "list", "--json"], env=configdir)
    assert json.loads(listed.stdout) == {"instances": []}


def test_a_record_whose_process_died_is_removed_silently(
    area: Path, configdir: dict[str, str], instances: list
) -> None:
    name = unique("stale")
    start = run_as(
        "rxalice", ["apptainer", "instance", "start", "img.sif", name], cwd=area, env=configdir
    )
    instances.append(("rxalice", name, configdir))
    assert start.returncode == 0, start.stderr
    (record_file,) = Path(configdir["APPTAINER_CONFIGDIR"]).glob(
        f"instances/app/*/rxalice/{name}/*.json"
    )
    rec = json.loads(record_file.read_text())
    os.kill(rec["ppid"], signal.SIGKILL)
    wait_for(lambda: not alive(rec["ppid"]) and not alive(rec["pid"]), what="instance death")
    listed = run_as("rxalice", ["apptainer", "instance", "list", "--json"], env=configdir)
    assert (listed.returncode, json.loads(listed.stdout)) == (0, {"instances": []})
    assert not record_file.parent.exists()
    again = run_as(
        "rxalice", ["apptainer", "instance", "start", "img.sif", name], cwd=area, env=configdir
    )
    assert again.returncode == 0, again.stderr


def test_users_do_not_see_each_others_instances(area: Path, instances: list) -> None:
    name = unique("mine")
    for user in ("rxalice", "rxbob"):
        started = run_as(user, ["apptainer", "instance", "start", "img.sif", name], cwd=area)
        instances.append((user, name, {}))
        assert started.returncode == 0, started.stderr  # the same name is no conflict
    alice = json.loads(run_as("rxalice", ["apptainer", "instance", "list", "--json", name]).stdout)
    bob = json.loads(run_as("rxbob", ["apptainer", "instance", "list", "--json", name]).stdout)
    (a,), (b,) = alice["instances"], bob["instances"]
    assert a["pid"] != b["pid"]
    assert "/home/rxalice/" in a["logOutPath"] and "/home/rxbob/" in b["logOutPath"]
    joined = run_as("rxbob", ["apptainer", "exec", f"instance://{name}", "cat", "/proc/1/status"])
    assert "Uid:\t2002" in joined.stdout
    # root may look at another user's instances with -u; nobody else may
    seen = run_as("root", ["apptainer", "instance", "list", "--json", "-u", "rxalice", name])
    assert [i["pid"] for i in json.loads(seen.stdout)["instances"]] == [a["pid"]]
    refused = run_as("rxbob", ["apptainer", "instance", "list", "-u", "rxalice"])
    assert (refused.returncode, refused.stderr) == (
        255,
        "FATAL:   Only root user can list user's instances\n",
    )


def test_text_list_is_a_table(area: Path, configdir: dict[str, str], instances: list) -> None:
    name = unique("table")
    run_as("rxalice", ["apptainer", "instance", "start", "img.sif", name], cwd=area, env=configdir)
    instances.append(("rxalice", name, configdir))
    lines = run_as("rxalice", ["apptainer", "instance", "list"], env=configdir).stdout.splitlines()
    assert lines[0].split() == ["INSTANCE", "NAME", "PID", "IP", "IMAGE"]
    assert lines[1].split()[0] == name and lines[1].split()[-1] == f"{area}/img.sif"


# --- overlays --------------------------------------------------------------------------------


def test_overlay_writes_survive_instances_and_stay_out_of_other_containers(
    work: Path, configdir: dict[str, str], instances: list
) -> None:
    folder = user_dir(work, "rxalice", "state")
    overlay = folder / "overlay.img"
    image = str(work.parent / "img.sif")
    created = run_as(
        "rxalice",
        ["apptainer", "overlay", "create", "--size", "64", "--create-dir", "/usr/local/lib/pkg"]
        + [str(overlay)],
    )
    assert created.returncode == 0, created.stderr
    assert overlay.stat().st_size == 64 * 1024 * 1024
    assert overlay.stat().st_uid == 2001

    first = unique("ov")
    start = run_as(
        "rxalice",
        ["apptainer", "instance", "start", "--overlay", str(overlay), image, first],
        env=configdir,
    )
    instances.append(("rxalice", first, configdir))
    assert start.returncode == 0, start.stderr
    script = "echo one > /opt/x && echo two > /usr/local/lib/pkg/y"
    wrote = run_as(
        "rxalice", ["apptainer", "exec", f"instance://{first}", "sh", "-c", script], env=configdir
    )
    assert wrote.returncode == 0, wrote.stderr
    busy = run_as("rxalice", ["apptainer", "exec", "--overlay", str(overlay), image, "true"])
    assert busy.returncode == 255
    assert "currently in use by another process" in busy.stderr
    assert (
        run_as("rxalice", ["apptainer", "instance", "stop", first], env=configdir).returncode == 0
    )

    second = unique("ov")
    start = run_as(
        "rxalice",
        ["apptainer", "instance", "start", "-o", str(overlay), image, second],
        env=configdir,
    )
    instances.append(("rxalice", second, configdir))
    assert start.returncode == 0, start.stderr
    read = run_as(
        "rxalice",
        ["apptainer", "exec", f"instance://{second}", "cat", "/opt/x", "/usr/local/lib/pkg/y"],
        env=configdir,
    )
    assert (read.returncode, read.stdout) == (0, "one\ntwo\n")
    assert (
        run_as("rxalice", ["apptainer", "instance", "stop", second], env=configdir).returncode == 0
    )

    without = run_as("rxalice", ["apptainer", "exec", image, "cat", "/opt/x"])
    assert without.returncode == 1
    assert "No such file or directory" in without.stderr


def test_root_owned_system_folders_stay_unwritable_without_create_dir(work: Path) -> None:
    folder = user_dir(work, "rxalice", "state")
    overlay = folder / "overlay.img"
    assert run_as("rxalice", ["apptainer", "overlay", "create", str(overlay)]).returncode == 0
    result = run_as(
        "rxalice",
        ["apptainer", "exec", "--overlay", str(overlay), str(work.parent / "img.sif")]
        + ["touch", "/usr/local/lib/x"],
    )
    assert result.returncode == 1
    assert "Permission denied" in result.stderr


def test_read_only_overlay_and_writable_tmpfs(work: Path) -> None:
    folder = user_dir(work, "rxalice", "state")
    overlay = folder / "overlay.img"
    image = str(work.parent / "img.sif")
    assert run_as("rxalice", ["apptainer", "overlay", "create", str(overlay)]).returncode == 0
    wrote = run_as(
        "rxalice", ["apptainer", "exec", "-o", str(overlay), image, "sh", "-c", "echo v > /opt/v"]
    )
    assert wrote.returncode == 0, wrote.stderr
    ro = run_as(
        "rxalice",
        ["apptainer", "exec", "-o", f"{overlay}:ro", image, "sh", "-c", "cat /opt/v; touch /opt/w"],
    )
    assert ro.stdout == "v\n"
    assert "Read-only file system" in ro.stderr
    tmp = run_as(
        "rxalice",
        [
            "apptainer",
            "exec",
            "--writable-tmpfs",
            image,
            "sh",
            "-c",
            "echo t > /opt/t && cat /opt/t",
        ],
    )
    assert (tmp.returncode, tmp.stdout) == (0, "t\n")
    gone = run_as("rxalice", ["apptainer", "exec", "--writable-tmpfs", image, "cat", "/opt/t"])
    assert gone.returncode == 1


def test_overlay_create_refuses_existing_and_small(work: Path) -> None:
    folder = user_dir(work, "rxalice", "state")
    overlay = folder / "overlay.img"
    assert run_as("rxalice", ["apptainer", "overlay", "create", str(overlay)]).returncode == 0
    again = run_as("rxalice", ["apptainer", "overlay", "create", str(overlay)])
    assert (again.returncode, again.stderr) == (
        255,
        f"FATAL:   EXT3 overlay image {overlay} already exists\n",
    )
    small = run_as("rxalice", ["apptainer", "overlay", "create", "-s", "10", str(folder / "s.img")])
    assert small.returncode == 255
    assert "64 MiB" in small.stderr


def test_removing_the_overlay_file_makes_its_data_unreachable(work: Path) -> None:
    folder = user_dir(work, "rxalice", "state")
    overlay = folder / "overlay.img"
    image = str(work.parent / "img.sif")
    assert run_as("rxalice", ["apptainer", "overlay", "create", str(overlay)]).returncode == 0
    run_as(
        "rxalice", ["apptainer", "exec", "-o", str(overlay), image, "sh", "-c", "echo v > /opt/v"]
    )
    overlay.unlink()
    assert run_as("rxalice", ["apptainer", "overlay", "create", str(overlay)]).returncode == 0
    fresh = run_as("rxalice", ["apptainer", "exec", "-o", str(overlay), image, "cat", "/opt/v"])
    assert fresh.returncode == 1
    assert len(list(folder.iterdir())) == 2  # the new image and its data; the old data is swept


# --- images ----------------------------------------------------------------------------------


def test_build_refuses_an_existing_target_and_reports_completion(work: Path) -> None:
    target = work / "again.sif"
    first = run_as("root", ["apptainer", "build", str(target), str(work.parent / "app.def")])
    assert first.stderr.endswith(f"INFO:    Build complete: {target}\n")
    second = run_as("root", ["apptainer", "build", str(target), str(work.parent / "app.def")])
    assert (second.returncode, second.stderr) == (
        255,
        f"FATAL:   While checking build target: build target '{target}' already exists. "
        "Use --force if you want to overwrite it\n",
    )
    assert (
        run_as("root", ["apptainer", "build", "-F", str(target), "docker://alpine"]).returncode == 0
    )


def test_inspect_json_shape(area: Path) -> None:
    result = run_as("rxalice", ["apptainer", "inspect", "--json", "-l", "-r", "img.sif"], cwd=area)
    doc = json.loads(result.stdout)
    assert doc["type"] == "container"
    attrs = doc["data"]["attributes"]
    assert set(attrs) == {"labels", "runscript"}
    assert attrs["labels"]["Maintainer"] == "rx-slurm tests"
    assert attrs["labels"]["org.label-schema.usage.singularity.deffile.from"] == "python:3.12-slim"
    text = run_as("rxalice", ["apptainer", "inspect", "img.sif"], cwd=area).stdout.splitlines()
    assert text == sorted(text) and "Version: 1.0" in text


def test_pull_names_refuses_to_overwrite_and_fails_for_missing_images(work: Path) -> None:
    pulled = run_as("root", ["apptainer", "pull", "docker://python:3.12-slim"], cwd=work)
    assert pulled.returncode == 0, pulled.stderr
    assert (work / "python_3.12-slim.sif").is_file()
    again = run_as("root", ["apptainer", "pull", "docker://python:3.12-slim"], cwd=work)
    assert (again.returncode, again.stderr) == (
        255,
        'FATAL:   Image file already exists: "python_3.12-slim.sif" - will not overwrite\n',
    )
    missing = run_as("root", ["apptainer", "pull", "docker://nonexistent/img:1"], cwd=work)
    assert missing.returncode == 255
    assert "manifest unknown" in missing.stderr


# --- spython 0.3.14 against the stand-in -----------------------------------------------------

SPYTHON_SCRIPT = """
import json, sys
from spython.main import Client
image, bind, name, folder = sys.argv[1:5]
out = {"version": Client.version()}
out["execute"] = Client.execute(image, ["echo", "hello"])
out["failed"] = Client.execute(image, ["false"])
out["bound"] = Client.execute(image, ["ls", "/data"], bind=[bind + ":/data"])
instance = Client.instance(image, name=name)
out["pid"] = getattr(instance, "pid", None)
out["instances"] = [i.name for i in Client.instances(quiet=True)]
out["in_instance"] = Client.execute(instance, ["cat", "/proc/1/cmdline"])
out["stopped"] = instance.stop()
out["after"] = Client.instances(quiet=True)
out["labels"] = Client.inspect(image)["attributes"]["labels"]
out["pulled"] = Client.pull("docker://alpine:3.19", pull_folder=folder)
print(json.dumps(out))
"""


def test_spython_drives_the_stand_in(
    work: Path, configdir: dict[str, str], instances: list
) -> None:
    data = user_dir(work, "rxalice", "data")
    (data / "file").touch()
    folder = user_dir(work, "rxalice", "pulls")
    name = unique("sp")
    instances.append(("rxalice", name, configdir))
    result = run_as(
        "rxalice",
        [sys.executable, "-c", SPYTHON_SCRIPT, str(work.parent / "img.sif"), str(data), name]
        + [str(folder)],
        cwd=work,
        env={"PATH": PATH, **configdir},
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["version"] == "apptainer version 1.3.4"
    assert out["execute"] == "hello\n"
    assert out["failed"] == {"message": [], "return_code": 1}
    assert out["bound"] == "file\n"
    assert isinstance(out["pid"], int) and out["pid"] > 0
    assert name in out["instances"]
    assert out["in_instance"].startswith("appinit")
    assert out["stopped"] == 0
    assert out["after"] == []
    assert out["labels"]["Version"] == "1.0"
    assert out["pulled"] == f"{folder}/alpine:3.19.sif"
    assert (folder / "alpine:3.19.sif").is_file()
