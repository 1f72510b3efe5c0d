"""A project's service (docs/services.md) without Slurm: the setting as rxctl sends it and rxd
checks it, what the holder is asked to run, and what the reconciler makes of the holder's
service lines (tests/test_service_e2e.py runs it for real)."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.cli.commands_project import Words
from rxslurm.daemon.config import ConfigError, parse_config
from rxslurm.daemon.errors import BadRequest, Conflict
from rxslurm.daemon.exec.port_relay import relay_argv
from rxslurm.daemon.exec.server import (
    ExecRequest,
    signal_step_command,
    step_command,
    uses_launcher,
)
from rxslurm.daemon.settings import Settings, apply_changes, check_static, service_words
from rxslurm.protocol.agent_wire import Endpoint
from tests.support.fakes import FakeClock, FakeRuntime, FakeScheduler
from tests.unit.test_reconciler_edges import OWNER, running, world

# Words as people type them: any text but NUL (a shell word cannot hold one either).
WORD = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=20)


@given(st.lists(WORD, min_size=1, max_size=6).filter(lambda words: words[0] != ""))
def test_a_command_rxctl_splits_reaches_rxd_word_for_word(words: list[str]) -> None:
    sent = Words().convert(shlex.join(words), None, None)
    assert service_words(sent) == words


def test_an_empty_service_is_none() -> None:
    assert Words().convert("  ", None, None) == ""
    assert service_words("") == []


def test_an_unbalanced_quote_is_a_usage_error() -> None:
    with pytest.raises(click.BadParameter, match="cannot split"):
        Words().convert("python3 -c 'print(1)", None, None)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("python3 -m http.server", "JSON list of words"),
        ('{"argv": ["x"]}', "JSON list of words"),
        ('["x", 1]', "JSON list of words"),
        ("[]", "name a command"),
        ('["", "x"]', "name a command"),
        ('["x", "a\\u0000b"]', "NUL"),
    ],
)
def test_a_service_that_is_not_a_list_of_words_is_refused(value: str, reason: str) -> None:
    with pytest.raises(BadRequest, match=reason):
        check_static(apply_changes(Settings(), {"service": value}))


def test_a_port_beyond_65535_is_refused() -> None:
    check_static(apply_changes(Settings(), {"port": 65535}))
    with pytest.raises(BadRequest, match="at most 65535"):
        check_static(apply_changes(Settings(), {"port": 65536}))


@pytest.mark.parametrize("key", [("service", '["x"]'), ("port", 80)])
def test_the_deployment_has_no_default_service(key: tuple[str, object]) -> None:
    with pytest.raises(ConfigError, match=f"defaults.{key[0]} is a project's own setting"):
        parse_config({"defaults": {key[0]: key[1]}})


SERVICE = json.dumps(["python3", "-m", "http.server", "--bind", "127.0.0.1", "8000"])


def test_the_holder_is_asked_to_run_the_service_and_told_its_port(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"), service=SERVICE, port=8000)
    w.clock.advance(w.service.config.slurm.timeout + 6)
    w.reconcile()
    holder = w.runtime.holders[-1]
    assert holder.service == tuple(json.loads(SERVICE))
    assert holder.port == 8000


def test_without_a_service_the_holder_runs_none(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    w.clock.advance(w.service.config.slurm.timeout + 6)
    w.reconcile()
    assert (w.runtime.holders[-1].service, w.runtime.holders[-1].port) == ((), 0)


def test_status_says_where_a_running_service_listens(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"), service=SERVICE, port=8000)
    w.set("alpha", settings=json.dumps({"effective": {"port": 8000}}))
    job_id = w.add_job("alpha", "RUNNING")
    w.runtime.report(job_id, f"running rx-alpha-{job_id} service 8000")
    w.reconcile()
    # The instance is the line's second word, whatever follows it.
    assert (w.state("alpha"), w.row("alpha")["instance"]) == ("running", f"rx-alpha-{job_id}")
    assert w.service.status(OWNER, "alpha").service == "n1:8000"
    # Once it ended, nothing listens there.
    w.runtime.report(job_id, f"running rx-alpha-{job_id} service-exited 0")
    w.reconcile()
    assert w.service.status(OWNER, "alpha").service is None


def test_a_service_that_exited_is_the_running_containers_reason(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    job_id = running(w, "alpha")
    assert w.service.status(OWNER, "alpha").service is None  # no port: nothing listens
    w.runtime.report(job_id, f"running rx-alpha-{job_id} service-exited 3")
    assert w.reconcile() == 1
    row = w.row("alpha")
    assert row["state"] == "running"  # the container stays up for exec and logs
    assert row["reason"] == "the service exited (status 3); see `rxctl logs`"
    assert row["last_error"] == row["reason"]
    assert w.reconcile() == 0  # said once, not every pass


def test_a_strange_exit_status_is_not_echoed(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    job_id = running(w, "alpha")
    w.runtime.report(job_id, f"running rx-alpha-{job_id} service-exited lots-of-text")
    w.reconcile()
    assert w.row("alpha")["reason"] == "the service exited (status ?); see `rxctl logs`"


# -- the port-forward step --------------------------------------------------------------------


def target(port: int) -> Any:
    from rxslurm.daemon.containers.service import ExecTarget
    from rxslurm.slurm.runas import RunAs

    return ExecTarget(
        1, 42, "n1", "rx-alpha-42", "/state", RunAs("nobody", 65534, 65534, ()), service_port=port
    )


def test_a_forward_is_its_own_kind_of_request() -> None:
    assert ExecRequest.parse({"project": "alpha", "forward": True}).forward
    for extra in ({"argv": ["sh"]}, {"shell": True}, {"wait": True}, {"tty": True}):
        with pytest.raises(BadRequest, match="a forward runs no command"):
            ExecRequest.parse({"project": "alpha", "forward": True, **extra})
    with pytest.raises(BadRequest, match="forward must be true or false"):
        ExecRequest.parse({"project": "alpha", "forward": "yes"})


def test_a_forward_step_relays_to_the_service_port_outside_the_container() -> None:
    request = ExecRequest.parse({"project": "alpha", "forward": True})
    argv = step_command(FakeScheduler(FakeClock()), FakeRuntime(), target(8000), request, "rx-x")
    inside = argv[argv.index("--") + 1 :] if "--" in argv else argv
    assert inside[-5:] == relay_argv(8000)
    assert not any("apptainer" in word for word in argv)


def test_a_command_runs_under_the_launcher_only_where_the_container_has_one() -> None:
    runtime = FakeRuntime()
    command = ExecRequest.parse({"project": "alpha", "argv": ["sleep", "1"]})
    shell = ExecRequest.parse({"project": "alpha", "shell": True, "tty": True})
    forward = ExecRequest.parse({"project": "alpha", "forward": True})
    assert not uses_launcher(runtime, target(8000), command)
    runtime.endpoints[42] = Endpoint(host="10.0.0.5", port=40001, key=b"k" * 32)
    assert uses_launcher(runtime, target(8000), command)
    assert not uses_launcher(runtime, target(8000), shell)
    assert not uses_launcher(runtime, target(8000), forward)
    scheduler = FakeScheduler(FakeClock())
    argv = step_command(scheduler, runtime, target(0), command, "rx-x", launcher=True)
    assert argv[argv.index("--") + 1 :][3:] == ["/fake/launcher", "rx-x", "--", "sleep", "1"]
    signal_step = signal_step_command(scheduler, runtime, target(0), "rx-x")
    assert signal_step[signal_step.index("--") + 1 :][3:] == ["/fake/signal", "rx-x"]
    # A step of its own, named apart: `rxctl ps` never lists it as a session.
    assert any(word.startswith("--job-name=rx-signal-") for word in signal_step)


def test_a_forward_to_a_container_without_a_service_port_is_refused() -> None:
    request = ExecRequest.parse({"project": "alpha", "forward": True})
    with pytest.raises(Conflict, match="runs no service with a port"):
        step_command(FakeScheduler(FakeClock()), FakeRuntime(), target(0), request, "rx-x")


def test_the_relay_copies_both_ways_and_passes_the_end_on() -> None:
    """The relay program itself, on this host, against a server that answers what it read."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                data = b""
                while chunk := conn.recv(65536):  # until the relay passes stdin's end on
                    data += chunk
                conn.sendall(data[::-1])

        thread = threading.Thread(target=answer)
        thread.start()
        payload = bytes(range(256)) * 1000
        relay = subprocess.run(
            [sys.executable, *relay_argv(port)[1:]], input=payload, capture_output=True, timeout=60
        )
        thread.join()
    assert relay.returncode == 0, relay.stderr
    assert relay.stdout == payload[::-1]
