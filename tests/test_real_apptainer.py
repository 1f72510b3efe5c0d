"""The Apptainer program rxd runs and how it starts containers: the one lookup of the binary, the
holder's instance options, and what rx-slurm relies on in the real Apptainer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from rxslurm.daemon.config import ApptainerConfig, ConfigError, parse_config
from rxslurm.daemon.runtime import apptainer
from rxslurm.slurm.runas import RunAs
from rxslurm.slurm.script import render_batch_script
from tests.support.cluster import wait_for
from tests.support.daemon import test_root
from tests.support.real_apptainer import APPTAINER, BASE_IMAGE

needs_root = pytest.mark.root(reason="acting as a test user needs root")
ALICE = RunAs("rxalice", 2001, 2001, (2001,), "/home/rxalice")


def fake_program(folder: Path, name: str = "apptainer", body: str = "exit 0") -> Path:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


# -- one place finds the binary ----------------------------------------------------------------


def test_a_configured_binary_is_used_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert apptainer.find_binary("/opt/apptainer/bin/apptainer") == "/opt/apptainer/bin/apptainer"


def test_without_a_setting_apptainer_is_looked_up_on_path_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    program = fake_program(tmp_path)
    monkeypatch.setenv("PATH", f"/nonexistent:{tmp_path}")
    assert apptainer.find_binary("") == str(program)
    program.unlink()
    # Looked up once: the holder, exec steps and overlays keep getting the same answer.
    assert apptainer.find_binary("") == str(program)


def test_singularity_is_found_when_there_is_no_apptainer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    program = fake_program(tmp_path, "singularity")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert apptainer.find_binary("") == str(program)


def test_no_apptainer_anywhere_is_a_clear_error_and_jobs_still_get_a_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(apptainer.ApptainerError, match=r"set \[apptainer\] binary"):
        apptainer.find_binary("")
    assert apptainer.apptainer_version("") is None
    assert apptainer.program(ApptainerConfig()) == "apptainer"


def test_the_version_comes_from_the_configured_binary(tmp_path: Path) -> None:
    program = fake_program(tmp_path, body='echo "apptainer version 1.4.5"')
    assert apptainer.apptainer_version(str(program)) == "1.4.5"
    broken = fake_program(tmp_path, "broken", body="exit 3")
    assert apptainer.apptainer_version(str(broken)) is None


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"binary": "apptainer"}, "apptainer.binary must be an absolute path"),
        ({"home": "shared"}, 'apptainer.home must be "project" or "host"'),
        ({"fakeroot": "yes"}, "apptainer.fakeroot must be true or false"),
    ],
)
def test_bad_apptainer_settings_are_refused(section: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"apptainer": section})


# -- how contained a container is --------------------------------------------------------------


def test_by_default_containers_run_fakeroot_with_their_own_home_and_tmp() -> None:
    options = apptainer.instance_options(
        ApptainerConfig(binary="/usr/bin/apptainer"), Path("/srv/c/rx-a"), ALICE
    )
    assert options == {
        "apptainer": "/usr/bin/apptainer",
        "fakeroot": "--fakeroot",
        "home": "/srv/c/rx-a/home:/root",
        "private_tmp": "yes",
    }


def test_without_fakeroot_the_project_home_is_mounted_at_the_users_home() -> None:
    config = ApptainerConfig(binary="/usr/bin/apptainer", fakeroot=False)
    options = apptainer.instance_options(config, Path("/srv/c/rx-a"), ALICE)
    assert (options["fakeroot"], options["home"]) == ("", "/srv/c/rx-a/home:/home/rxalice")


def test_the_host_home_and_tmp_are_apptainers_defaults() -> None:
    config = ApptainerConfig(binary="/usr/bin/apptainer", home="host", private_tmp=False)
    options = apptainer.instance_options(config, Path("/srv/c/rx-a"), ALICE)
    assert (options["home"], options["private_tmp"]) == ("", "")


def run_holder(
    tmp_path: Path,
    settings: ApptainerConfig,
    *,
    term_during_start: bool = False,
    service: tuple[str, ...] = (),
    restarts: int = 0,
    until: str = "running",
) -> list[list[str]]:
    """Run the rendered holder script with a fake Apptainer that logs its argv, until it reports
    `until` (or, with term_during_start, while `instance start` still runs); then end it as
    Slurm would (SIGTERM). Returns the logged calls. A service (`apptainer exec`) exits 3."""
    calls = tmp_path / "calls"
    start_env = tmp_path / "start-env"
    slow_start = "sleep 1" if term_during_start else ":"
    program = fake_program(
        tmp_path,
        # One line per call in one write (O_APPEND): the service's exec and the holder's
        # `instance list` run at once, and two writes per call could interleave.
        body=f"""line=$(printf '%s\\037' "$@"); printf '%s\\n' "$line" >>{calls}
case "$1 $2" in
  "instance start") printf '%s' "${{APPTAINERENV_RX_NOTE-unset}}" >{start_env}; {slow_start};;
  "instance list") echo '{{"instances": [{{"instance": "rx-a-7"}}]}}';;
  exec*) echo "the service speaks"; exit 3;;
esac""",
    )
    state = tmp_path / "state"
    state.mkdir()
    script = render_batch_script(
        "holder.sh",
        instance="rx-a",
        image="/images/base.sif",
        overlay=state / "overlay.img",
        workspace="/srv/ws/a",
        binds="",
        gpu_flag="",
        state_dir=state,
        grace_s=3,
        env=apptainer.holder_env([("RX_NOTE", "a 'b'\n$c")]),
        service=apptainer.holder_words(service),
        port=8000 if service else 0,
        output_cap=4096,
        restarts=restarts,
        **apptainer.instance_options(
            ApptainerConfig(
                binary=str(program),
                fakeroot=settings.fakeroot,
                home=settings.home,
                private_tmp=settings.private_tmp,
            ),
            state,
            ALICE,
        ),
        # No exec agent: this fake program runs no instance to start one in.
        agent_path="",
        libmunge="",
        munge_socket="",
    )
    holder = subprocess.Popen(["bash", "-c", script], env={"SLURM_JOB_ID": "7"}, cwd=state)
    status = state / "job-7.status"

    def ready() -> bool:
        assert holder.poll() is None, "the holder exited before it started"
        if term_during_start:
            return calls.exists() and "start" in calls.read_text()
        return status.exists() and status.read_text().startswith(until)

    wait_for(ready, 30, interval=0.05, what=f"the holder to report {until!r}")
    holder.send_signal(signal.SIGTERM)
    assert holder.wait(timeout=30) == 0
    assert status.read_text() == "stopped\n"
    return [line.split("\x1f")[:-1] for line in calls.read_text().splitlines()]


def test_the_holder_starts_and_stops_the_instance_with_the_configured_program(
    tmp_path: Path,
) -> None:
    calls = run_holder(tmp_path, ApptainerConfig())
    start = calls[0]
    assert start[:2] == ["instance", "start"]
    assert start[-2:] == ["/images/base.sif", "rx-a-7"]
    flags = start[2:-2]
    assert "--fakeroot" in flags
    assert flags[flags.index("--home") + 1] == f"{tmp_path}/state/home:/root"
    assert (tmp_path / "state" / "home").is_dir()  # the holder makes the project's home
    no_mount = [flags[i + 1] for i, flag in enumerate(flags) if flag == "--no-mount"]
    assert sorted(no_mount) == ["cwd", "tmp"]
    assert calls[-1] == ["instance", "stop", "-t", "3", "rx-a-7"]
    # The project's variables reach the instance's start as Apptainer reads them.
    assert (tmp_path / "start-env").read_text() == "a 'b'\n$c"


def test_the_holder_runs_the_service_word_for_word_and_reports_its_end(tmp_path: Path) -> None:
    # (The fake's call log is one line a call: no newline in a word here.)
    words = ("python3", "-c", "print('a b'); $HOME `x` \"q\" *", "")
    calls = run_holder(
        tmp_path, ApptainerConfig(), service=words, until="running rx-a-7 service-exited 3"
    )
    # Each word one argv item after the instance, in /workspace; nothing joined or expanded.
    assert ["exec", "--pwd", "/workspace", "instance://rx-a-7", *words] in calls
    assert calls[-1][:2] == ["instance", "stop"]


def test_a_failing_service_is_restarted_as_often_as_its_policy_says(tmp_path: Path) -> None:
    calls = run_holder(
        tmp_path,
        ApptainerConfig(),
        service=("serve",),
        restarts=1,
        until="running rx-a-7 service-exited 3 restarts 1 3",
    )
    assert calls.count(["exec", "--pwd", "/workspace", "instance://rx-a-7", "serve"]) == 2
    # Each run's output and the holder's words about it, in the service's capped output.
    served = (tmp_path / "state" / "job-7.service").read_text().splitlines()
    assert served == [
        "rx-holder: starting the service (port 8000)",
        "the service speaks",
        "rx-holder: the service exited with status 3; restarting it in 5 s (restart 1 of 1)",
        "rx-holder: restarting the service (restart 1 of 1)",
        "the service speaks",
        "rx-holder: the service exited with status 3 (restarted 1 of 1 times)",
    ]


def test_a_holder_ended_while_the_instance_starts_still_stops_it(tmp_path: Path) -> None:
    calls = run_holder(tmp_path, ApptainerConfig(), term_during_start=True)
    assert [call[:2] for call in calls] == [["instance", "start"], ["instance", "stop"]]


def test_the_holder_leaves_out_what_the_deployment_turned_off(tmp_path: Path) -> None:
    calls = run_holder(tmp_path, ApptainerConfig(fakeroot=False, home="host", private_tmp=False))
    flags = calls[0][2:-2]
    assert "--fakeroot" not in flags and "--home" not in flags
    assert [flags[i + 1] for i, flag in enumerate(flags) if flag == "--no-mount"] == ["cwd"]


# -- the real Apptainer ------------------------------------------------------------------------


def real(*argv: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    from tests.support.cluster import run_as

    if user is None:
        return subprocess.run([APPTAINER, *argv], capture_output=True, text=True, timeout=120)
    return run_as(user, [APPTAINER, *argv], timeout=120)


@pytest.mark.usefixtures("container_runtime")
def test_the_real_version_is_1_4_or_newer() -> None:
    version = apptainer.apptainer_version(APPTAINER)
    assert version is not None
    assert tuple(int(part) for part in version.split(".")[:2]) >= (1, 4), version


@pytest.mark.usefixtures("container_runtime")
def test_both_names_answer_alike() -> None:
    outputs = [
        subprocess.run([name, "--version"], capture_output=True, text=True).stdout
        for name in (APPTAINER, str(Path(APPTAINER).with_name("singularity")))
    ]
    assert outputs[0] == outputs[1] and outputs[0].startswith("apptainer version ")


@needs_root
@pytest.mark.usefixtures("container_runtime")
def test_a_user_makes_their_own_overlay_with_the_configured_binary() -> None:
    folder = test_root() / "overlay"
    folder.mkdir()
    os.chown(folder, 2001, 2001)
    overlay = folder / "overlay.img"
    apptainer.create_overlay(overlay, 64, RunAs.for_user("rxalice"), APPTAINER)
    assert overlay.stat().st_uid == 2001 and overlay.stat().st_size == 64 * 1024 * 1024
    # A real ext3 overlay that Apptainer itself mounts.
    used = real("exec", "--overlay", f"{overlay}:ro", str(BASE_IMAGE), "true", user="rxalice")
    assert used.returncode == 0, used.stderr


@pytest.mark.usefixtures("container_runtime")
def test_an_unknown_flag_is_a_usage_error() -> None:
    result = real("exec", "--no-such-flag", "/nonexistent.sif", "true")
    assert result.returncode != 0
    assert "no-such-flag" in result.stderr


@pytest.mark.usefixtures("container_runtime")
def test_the_instance_list_the_holder_reads_is_json() -> None:
    result = real("instance", "list", "--json", "no-such-instance")
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"instances": []}
