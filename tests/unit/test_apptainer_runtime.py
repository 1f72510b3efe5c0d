"""The Apptainer adapter's pure parts: what the holder script and an exec step are made of."""

from __future__ import annotations

import base64
import shlex
from pathlib import Path

from rxslurm.daemon.config import ApptainerConfig
from rxslurm.daemon.ports import HolderRequest
from rxslurm.daemon.runtime.apptainer import ApptainerRuntime, gpu_flag, launcher_argv
from rxslurm.slurm.runas import RunAs

PROGRAM = "/opt/apptainer/bin/apptainer"
USER = RunAs("someone", 2001, 2001, (2001,), "/home/someone")


def holder(**changes: object) -> HolderRequest:
    values: dict[str, object] = {
        "instance": "rx-alpha",
        "image": "/images/base.sif",
        "overlay": "/srv/c/rx-alpha/overlay.img",
        "workspace": "/work/alpha",
        "state_dir": Path("/srv/c/rx-alpha"),
        "user": USER,
        **changes,
    }
    return HolderRequest(**values)  # type: ignore[arg-type]


def assignments(script: str) -> dict[str, str]:
    """The holder's `name=value` lines, each value unquoted as bash would."""
    found = {}
    for line in script.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.isidentifier() and " " not in name:
            words = shlex.split(value) if value else [""]
            found[name] = words[0] if words else ""
    return found


def test_the_configured_program_reaches_the_holder_script() -> None:
    runtime = ApptainerRuntime(ApptainerConfig(binary=PROGRAM))

    values = assignments(runtime.holder_script(holder(gpus=1, gpu_driver="nvidia")))

    assert values["apptainer"] == PROGRAM
    assert values["gpu_flag"] == "--nv"
    assert values["image"] == "/images/base.sif"


def test_a_service_project_gets_a_home_and_tmp_of_its_own() -> None:
    runtime = ApptainerRuntime(ApptainerConfig(binary=PROGRAM, home="", private_tmp=False))

    shared = assignments(runtime.holder_script(holder()))
    own = assignments(runtime.holder_script(holder(own_home_and_tmp=True)))

    assert (shared["home"], shared["private_tmp"]) == ("", "")
    assert own["home"].startswith("/srv/c/rx-alpha/home:") and own["private_tmp"] == "yes"


def test_the_exec_command_names_the_instance_and_keeps_each_word() -> None:
    runtime = ApptainerRuntime(ApptainerConfig(binary=PROGRAM))
    words = ["a b", "$(id)", "--pwd"]

    argv = runtime.exec_argv("rx-alpha-7", words, shell=False, cwd="/workspace")

    assert argv == [PROGRAM, "exec", "--pwd", "/workspace", "instance://rx-alpha-7", *words]
    assert runtime.exec_argv("rx-alpha-7", [], shell=True, cwd=None) == [
        PROGRAM,
        "shell",
        "instance://rx-alpha-7",
    ]
    assert runtime.exec_env("/srv/c/rx-alpha", {}) == {
        "APPTAINER_CONFIGDIR": "/srv/c/rx-alpha/apptainer"
    }


def test_under_the_launcher_the_command_follows_it_word_for_word() -> None:
    runtime = ApptainerRuntime(ApptainerConfig(binary=PROGRAM))
    words = ["a b", "$(id)", "--", "--tty"]
    under = launcher_argv("run", "rx-exec-00")

    argv = runtime.exec_argv("rx-alpha-7", words, shell=False, cwd="/w", launcher="rx-exec-00")
    tty = runtime.exec_argv(
        "rx-alpha-7", ["top"], shell=False, cwd=None, launcher="rx-exec-00", tty=True
    )

    assert argv == [PROGRAM, "exec", "--pwd", "/w", "instance://rx-alpha-7", *under, "--", *words]
    assert tty == [PROGRAM, "exec", "instance://rx-alpha-7", *under, "--tty", "--", "top"]
    # A shell puts its jobs in front of the terminal itself: no launcher.
    shell = runtime.exec_argv("rx-alpha-7", [], shell=True, cwd=None, launcher="rx-exec-00")
    assert shell == [PROGRAM, "shell", "instance://rx-alpha-7"]
    assert runtime.signal_argv("rx-alpha-7", "rx-exec-00") == [
        PROGRAM,
        "exec",
        "instance://rx-alpha-7",
        *launcher_argv("signal", "rx-exec-00"),
    ]


def test_variables_reach_the_command_through_the_environment_never_the_argv() -> None:
    runtime = ApptainerRuntime(ApptainerConfig(binary=PROGRAM))
    variables = {"TOKEN": "s3cr3t value\nline2", "EMPTY": ""}

    env = runtime.exec_env("/srv/c/rx-alpha", variables)
    argv = runtime.exec_argv("rx-alpha-7", ["env"], shell=False, cwd=None)

    assert env == {
        "APPTAINERENV_TOKEN": "s3cr3t value\nline2",
        "APPTAINERENV_EMPTY": "",
        "APPTAINER_CONFIGDIR": "/srv/c/rx-alpha/apptainer",
    }
    assert not any("s3cr3t" in word for word in argv)


def test_the_holder_gets_the_projects_variables_as_one_word_it_decodes() -> None:
    runtime = ApptainerRuntime(ApptainerConfig(binary=PROGRAM))
    values = assignments(runtime.holder_script(holder(env=(("A", "x y'\n$z"), ("B", "")))))

    decoded = base64.b64decode(values["env"])

    assert decoded == b"APPTAINERENV_A=x y'\n$z\0APPTAINERENV_B=\0"


def test_gpus_bind_their_driver_only_when_asked() -> None:
    assert gpu_flag(0, "nvidia") == ""
    assert gpu_flag(2, "amd") == "--rocm"
    assert gpu_flag(1, "") == ""
