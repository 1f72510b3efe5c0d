"""rxctl reads like Slurm: -P/--project and -p/--partition, sbatch's memory and time forms,
squeue's --noheader/--format, one JSON shape for lists, exit 125 for exec's own failures, project
names completed by the shell, and a man page generated from the command tree."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.cli import manpage
from rxslurm.cli.main import cli
from rxslurm.cli.units import memory_mb, minutes
from tests.support.fake_rxd import http_answer, serve, short_tmp_dir

ROOT = Path(__file__).resolve().parent.parent


# -- sbatch's units -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "mb"),
    [
        ("16G", 16384),
        ("16g", 16384),
        ("16GB", 16384),
        ("512M", 512),
        ("500", 500),
        ("2T", 2097152),
        ("1500K", 2),
        ("0", 0),
    ],
)
def test_memory_as_sbatch_reads_it(text: str, mb: int) -> None:
    assert memory_mb(text) == mb


@pytest.mark.parametrize(
    ("text", "mins"),
    [
        ("90", 90),
        ("1:30", 2),
        ("1:30:00", 90),
        ("1-00:00:00", 1440),
        ("2-12", 3600),
        ("1-0:30", 1470),
        ("0", 0),
        ("0:59", 1),
    ],
)
def test_time_as_sbatch_reads_it(text: str, mins: int) -> None:
    assert minutes(text) == mins


@pytest.mark.parametrize("text", ["16X", "-1", "1.5G", "", "G"])
def test_a_size_sbatch_would_refuse_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        memory_mb(text)


@pytest.mark.parametrize("text", ["1:2:3:4", "1-", "-5", "1h", "UNLIMITED", "1-2-3"])
def test_a_time_sbatch_would_refuse_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a time"):
        minutes(text)


@given(st.integers(0, 400), st.integers(0, 23), st.integers(0, 59), st.integers(0, 59))
def test_every_days_hours_minutes_seconds_form_rounds_up_to_minutes(
    d: int, h: int, m: int, s: int
) -> None:
    seconds = ((d * 24 + h) * 60 + m) * 60 + s
    assert minutes(f"{d}-{h:02d}:{m:02d}:{s:02d}") == -(-seconds // 60)
    assert minutes(f"{d * 24 + h}:{m}:{s}") == -(-seconds // 60)
    assert minutes(f"{d}-{h}:{m}") == (d * 24 + h) * 60 + m


def settings_sent(*args: str) -> dict:
    with short_tmp_dir() as folder:
        api = folder / "rxd.sock"
        server = serve(api, http_answer({"name": "x"}, "201 Created"))
        result = CliRunner().invoke(cli, ["--socket", str(api), *args])
        server.join(10)
    assert result.exit_code == 0, result.output
    return json.loads(server.received.partition(b"\r\n\r\n")[2])


def test_project_create_takes_slurms_partition_memory_and_time() -> None:
    body = settings_sent(
        "project",
        "create",
        "x",
        "--partition",
        "gpu",
        "--mem",
        "16G",
        "--time-limit",
        "1-00:00:00",
    )
    assert body == {
        "name": "x",
        "settings": {"partition": "gpu", "mem_mb": 16384, "time_limit_min": 1440},
    }
    short = settings_sent(
        "project", "create", "x", "-p", "gpu", "-t", "90", "--idle-timeout", "2:00:00"
    )
    assert short["settings"] == {"partition": "gpu", "time_limit_min": 90, "idle_timeout_min": 120}
    assert settings_sent("project", "create", "x", "--time", "30")["settings"] == {
        "time_limit_min": 30
    }


def test_project_create_and_set_take_sbatchs_account_qos_constraint_and_reservation() -> None:
    body = settings_sent(
        "project", "create", "x", "-A", "lab", "-q", "high", "-C", "a100&ib", "--reservation", "r1"
    )
    assert body["settings"] == {
        "account": "lab",
        "qos": "high",
        "constraint": "a100&ib",
        "reservation": "r1",
    }
    long = settings_sent("project", "create", "x", "--account", "lab", "--qos", "")
    assert long["settings"] == {"account": "lab", "qos": ""}


def test_status_and_project_show_name_the_flags_a_project_sets() -> None:
    from rxslurm.cli.render import project_lines, status_lines

    status = {"project": "a", "state": "running", "name": "rx-a", "workspace": "/w", "gpus": 0}
    lines = status_lines({**status, "account": "lab", "reservation": "r1", "qos": None})
    rows = [line.split() for line in lines]
    assert ["account", "lab"] in rows and ["reservation", "r1"] in rows
    assert not [line for line in lines if line.startswith(("qos", "constraint"))]
    rows = project_lines({"settings": {"qos": "high"}, "effective": {"qos": "high"}})
    assert ["qos", "--qos", "high", "high"] in [row.split() for row in rows]


def test_a_bad_size_is_a_usage_error_and_nothing_is_sent() -> None:
    result = CliRunner().invoke(
        cli, ["--socket", "/nonexistent", "project", "create", "x", "--mem", "16X"]
    )
    assert result.exit_code == 2
    assert "Invalid value for '--mem': '16X' is not a size like 16G" in result.output


def test_dash_p_is_the_partition_and_not_the_project() -> None:
    result = CliRunner().invoke(cli, ["--socket", "/nonexistent", "status", "-p", "alpha"])
    assert result.exit_code == 2
    assert "No such option '-p'" in result.output


# -- one way to name the project -------------------------------------------------------------------

# Commands that act on no one project.
NO_PROJECT = {
    "whoami",
    "doctor",
    "bind",
    "unbind",
    "list",
    "project list",
    "admin code",
    "admin bind",
    "admin unbind",
    "admin bindings",
    "admin containers",
    "admin quota list",
    "admin quota rm",
    "gc",
    "admin gc",
}
# A NEW name is made: it is the argument, never guessed from $RX_PROJECT (docs/cli.md says why).
NEW_NAME = {"project create"}
# -P/--project narrows what the command covers (a quota's subject, the audit log's events);
# without it, it covers everything: so it is never guessed from $RX_PROJECT either.
NARROWING = {"admin quota set", "admin audit"}
# exec and shell reach rxd on the exec socket, run replaces itself with Apptainer, run-once follows
# a job of its own and exits with its command's status (each exits 125 when rxctl fails);
# tests/test_cli_startup.py checks their parsing.
SESSIONS = {"exec", "shell", "run", "run-once"}
# Any readable file will do as a draft's text: rxd (a stand-in here) refuses the request.
DRAFT_FILE = __file__
# What else each command that acts on a project needs, for a call that reaches rxd.
REST = {
    "enable": [],
    "start": [],
    "stop": [],
    "disable": [],
    "retry": [],
    "status": [],
    "history": [],
    "logs": [],
    "port-forward": ["8080"],
    "project show": [],
    "project delete": ["--yes"],
    "project set": ["--cpus", "2"],
    "project run-as": ["service"],
    "project member add": ["rxbob", "--role", "editor"],
    "project member rm": ["rxbob"],
    "project member set-role": ["rxbob", "viewer"],
    "project label": ["keep=true"],
    "admin stop": [],
    "snapshot": [],
    "ps": [],
    "kill": ["0123abcd"],
    "export": [],
    "import": [DRAFT_FILE],
    "env set": ["K=V"],
    "env unset": ["K"],
    "env list": [],
    "secret set": ["NAME"],
    "secret rm": ["NAME"],
    "secret list": [],
    "reset": [],
    "image build": ["main"],
    "image cancel": ["1"],
    "image delete": ["1"],
    "image list": [],
    "image logs": ["1"],
    "image rename": ["1", "new"],
    "image status": ["1"],
    "image set": ["python:3.12-slim"],
    "image pull": ["--refresh"],
    "image draft create": ["main", "--kind", "dockerfile", "--file", DRAFT_FILE],
    "image draft edit": ["main", "--kind", "dockerfile", "--file", DRAFT_FILE],
    "image draft show": ["main"],
    "image draft validate": ["main"],
    "image draft delete": ["main"],
    "image draft list": [],
    "volume create": ["data"],
    "volume list": [],
    "volume rm": ["data"],
    "volume put": ["data", DRAFT_FILE],
    "volume get": ["data", "x"],
}
# The commands that took the project as their first argument before -P/--project.
NAMED_FIRST_BEFORE = {p for p in REST if p.startswith("project ") and p != "project label"} | {
    "admin stop"
}


def context(command: click.Command) -> click.Context:
    # rxctl's settings: click keeps the first help option it makes for a command (-h with them).
    return click.Context(command, **cli.context_settings)


def every_command() -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}

    def walk(group: click.Group, prefix: str) -> None:
        ctx = context(group)
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            assert command is not None
            path = f"{prefix} {name}".strip()
            if isinstance(command, click.Group):
                walk(command, path)
            else:
                found[path] = command

    walk(cli, "")
    return found


def test_every_command_is_known_to_name_its_project_one_way_or_to_need_none() -> None:
    known = NO_PROJECT | NEW_NAME | NARROWING | SESSIONS | set(REST)
    assert set(every_command()) == known


@pytest.mark.parametrize("path", sorted(SESSIONS | NARROWING | set(REST)))
def test_a_command_on_a_project_takes_dash_capital_p_and_no_project_argument(path: str) -> None:
    command = every_command()[path]
    options = [p for p in command.params if p.name == "project"]
    assert [o.opts for o in options] == [["-P", "--project"]]
    words = [p.name for p in command.params if isinstance(p, click.Argument)]
    assert not {"name", "project"} & set(words), words
    usage = command.collect_usage_pieces(context(command))
    assert "NAME" not in " ".join(usage) and "PROJECT" not in " ".join(usage)


def test_commands_that_need_no_project_take_no_project_option() -> None:
    commands = every_command()
    for path in NO_PROJECT:
        assert "project" not in {p.name for p in commands[path].params}, path


def request_line(*args: str, env: dict[str, str] | None = None) -> tuple[bytes, str]:
    """The first line of the request rxctl sent (rxd refuses it), and what rxctl said on stderr."""
    with short_tmp_dir() as folder:
        api = folder / "rxd.sock"
        server = serve(api, http_answer({"error": "no", "code": "not_found"}, "404 Not Found"))
        result = CliRunner().invoke(
            cli, ["--socket", str(api), *args], env=env or {}, prog_name="rxctl"
        )
        server.join(10)
    assert result.exit_code == 1, result.output
    return server.received.split(b"\r\n")[0], result.stderr


def named(line: bytes) -> bool:
    return bool(re.fullmatch(rb"[A-Z]+ /v1/\S*/alpha(/\S*)? HTTP/1.1", line))


@pytest.mark.parametrize("path", sorted(REST))
def test_every_command_takes_the_project_as_option_short_option_and_environment(
    path: str,
) -> None:
    words = [*path.split(), *REST[path]]
    for spelling in (["--project", "alpha"], ["-P", "alpha"], ["--project=alpha"]):
        line, _ = request_line(*words, *spelling, env={"RX_PROJECT": "other"})
        assert named(line), (spelling, line)
    line, said = request_line(*words, env={"RX_PROJECT": "alpha"})
    assert named(line), line
    assert "deprecated" not in said


@pytest.mark.parametrize("path", sorted(NAMED_FIRST_BEFORE))
def test_the_old_spelling_with_the_project_first_still_works_and_says_so(path: str) -> None:
    group, _, leaf = path.rpartition(" ")
    line, said = request_line(*group.split(), leaf, "alpha", *REST[path])
    assert named(line), line
    assert said.splitlines()[0] == (
        f"Note: `rxctl {path} NAME` is deprecated; use `rxctl {path} --project NAME`."
    )
    # Help shows the new spelling only.
    usage = CliRunner().invoke(cli, [*path.split(), "--help"]).output.splitlines()[0]
    assert "NAME" not in usage and "PROJECT" not in usage, usage


def test_with_the_option_given_a_word_too_many_is_a_usage_error() -> None:
    result = CliRunner().invoke(
        cli, ["--socket", "/nonexistent", "project", "show", "alpha", "--project", "beta"]
    )
    assert result.exit_code == 2 and "unexpected extra argument (alpha)" in result.output


def test_a_word_too_many_is_still_a_usage_error_where_no_project_was_first() -> None:
    result = CliRunner().invoke(cli, ["--socket", "/nonexistent", "status", "alpha", "beta"])
    assert result.exit_code == 2 and "unexpected extra argument" in result.output


def test_project_create_takes_the_new_name_as_its_argument_only() -> None:
    assert settings_sent("project", "create", "x") == {"name": "x"}
    result = CliRunner().invoke(
        cli, ["--socket", "/nonexistent", "project", "create"], env={"RX_PROJECT": "x"}
    )
    assert result.exit_code == 2 and "Missing argument 'NAME'" in result.output


# -- lists ----------------------------------------------------------------------------------------

CONTAINERS = {
    "containers": [
        {
            "project": "alpha",
            "role": "owner",
            "state": "running",
            "job_id": 7,
            "node": "n1",
            "reason": None,
        },
        {
            "project": "beta",
            "role": "viewer",
            "state": "stopped",
            "job_id": None,
            "node": None,
            "reason": None,
        },
    ]
}


def list_output(*args: str, answer: dict = CONTAINERS) -> tuple[int, str]:
    with short_tmp_dir() as folder:
        api = folder / "rxd.sock"
        serve(api, http_answer(answer))
        result = CliRunner().invoke(cli, ["--socket", str(api), *args])
    return result.exit_code, result.output


def test_list_json_is_the_apis_object_like_every_other_list() -> None:
    assert list_output("list", "--json") == (
        0,
        json.dumps(CONTAINERS, indent=2, sort_keys=True) + "\n",
    )


def test_noheader_and_format_shape_a_list_as_squeue_does() -> None:
    assert list_output("list", "--noheader", "--format", "project,node") == (
        0,
        "alpha  n1\nbeta   -\n",
    )
    code, text = list_output("list", "--format", "STATE,project")
    assert (code, text.splitlines()[0]) == (0, "STATE    PROJECT")
    assert list_output("list", "--noheader", answer={"containers": []}) == (0, "")


def test_an_unknown_column_is_a_usage_error_naming_the_columns() -> None:
    code, text = list_output("list", "--format", "project,gpus")
    assert code == 2
    assert "no column 'gpus'; the columns are: project, role, state, job, node, reason" in text


# -- exit status of exec ----------------------------------------------------------------------


def rxctl(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from rxslurm.cli.fastpath import main; main()"
    env = {k: v for k, v in os.environ.items() if k not in ("RX_PROJECT", "RXCTL_SOCKET")}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def test_exec_exits_125_when_rxctl_itself_fails() -> None:
    absent = rxctl("--socket", "/nonexistent/rxd.sock", "exec", "--project", "a", "--", "true")
    assert (absent.returncode, absent.stderr) == (
        125,
        "Error: rxd is not running (nothing listens on /nonexistent/rxd-exec.sock)\n",
    )
    usage = rxctl("exec", "--project", "a")
    assert usage.returncode == 125 and "Missing argument" in usage.stderr
    no_terminal = rxctl("--socket", "/nonexistent/rxd.sock", "shell", "--project", "a")
    assert no_terminal.returncode == 125 and "needs a terminal" in no_terminal.stderr


def test_other_commands_keep_1_and_2() -> None:
    assert rxctl("--socket", "/nonexistent/rxd.sock", "status", "--project", "a").returncode == 1
    assert rxctl("status", "--bogus").returncode == 2


def test_exec_through_click_also_exits_125() -> None:
    # A form the fast path leaves to click: an option it does not parse.
    result = CliRunner().invoke(
        cli, ["--socket", "/nonexistent/rxd.sock", "exec", "--project=a", "--no-wake", "-t", "x"]
    )
    assert result.exit_code == 125


# -- completion and the man page ------------------------------------------------------------------


def test_the_shell_completes_project_names_from_rxd() -> None:
    with short_tmp_dir() as folder:
        api = folder / "rxd.sock"
        serve(api, http_answer({"containers": [{"project": p} for p in ("alpha", "alps", "beta")]}))
        env = dict(
            os.environ,
            _RXCTL_COMPLETE="bash_complete",
            COMP_WORDS=f"rxctl --socket {api} status --project al",
            COMP_CWORD="5",
        )
        code = "import sys; from rxslurm.cli.fastpath import main; main()"
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
    assert result.stdout == "plain,alpha\nplain,alps\n"


def test_the_man_page_is_up_to_date() -> None:
    current = (ROOT / "docs" / "rxctl.1").read_text()
    assert current == manpage.render(), (
        f"docs/rxctl.1 is out of date; regenerate it with: {manpage.REGENERATE}"
    )


def test_the_man_page_has_every_command_and_the_exit_status() -> None:
    text = manpage.render()
    for command in ("rxctl exec", "rxctl status", "rxctl project create", "rxctl admin quota set"):
        assert f'.SS "{command}"' in text
    assert ".SH EXIT STATUS\n.TP\n.B 0" in text and ".B 125" in text


def test_roff_escapes_what_troff_would_read_as_requests() -> None:
    assert manpage.roff(".x and -p \\n") == "\\&.x and \\-p \\en"
