"""Waiting for a wake: how long (--timeout, rxd's limit for clients that name none), what the
progress line says, and what Ctrl-C leaves behind. The exec server's Session on a socket pair with
a fake container service: no root, no Slurm."""

from __future__ import annotations

import socket
import threading
from dataclasses import replace
from io import StringIO
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.cli import exec_client, units
from rxslurm.cli.main import cli
from rxslurm.cli.session import WaitLine
from rxslurm.daemon.config import ConfigError, parse_config
from rxslurm.daemon.containers.service import ExecTarget
from rxslurm.daemon.containers.state_changes import StateChanges
from rxslurm.daemon.containers.views import ContainerView
from rxslurm.daemon.errors import BadRequest, Conflict
from rxslurm.daemon.exec import server as exec_server
from rxslurm.daemon.exec.server import ClientGone, ExecRequest, Session, gave_up, stopped_waiting
from rxslurm.protocol.durations import duration
from rxslurm.protocol.exec_wire import LineReader, encode
from rxslurm.slurm.runas import RunAs

RESOURCES = "waiting for free resources on the partition (Slurm: Resources)"
CONTAINER_ID = 7


def view(state: str, reason: str | None = None, last_error: str | None = None) -> ContainerView:
    return ContainerView(
        project="alpha",
        role="owner",
        state=state,
        reason=reason,
        name="rx-alpha",
        image=None,
        job_id=42,
        node=None,
        gpus=0,
        gres=None,
        uptime_s=None,
        runtime_user="nobody",
        workspace=None,
        fixed_mounts=(),
        last_error=last_error,
        settings_pending=False,
        desired=None,
        over_quota=False,
        partition=None,
        container_id=CONTAINER_ID,
    )


class FakeService:
    """What the exec server asks of the container service while waiting."""

    def __init__(self, state: str, reason: str | None = None) -> None:
        self.view = view(state, reason)
        self.changes = StateChanges()
        self.wakes = 0
        self.target = ExecTarget(
            CONTAINER_ID, 42, "n1", "rx-alpha-42", "/x", RunAs.for_user("nobody")
        )

    def view_of(self, access: Any) -> ContainerView:
        return self.view

    def wake_for(self, access: Any) -> None:
        self.wakes += 1

    def target_of(self, access: Any) -> ExecTarget | None:
        return self.target if self.view.state == "running" else None

    def move(self, state: str, reason: str | None = None) -> None:
        self.view = replace(self.view, state=state, reason=reason)
        self.changes.changed(CONTAINER_ID)


class Server:
    def __init__(self, service: FakeService, wake_wait_s: float = 600.0) -> None:
        self.daemon = type(
            "Daemon",
            (),
            {
                "config": parse_config({"limits": {"wake_wait_s": wake_wait_s}}),
                "containers": service,
            },
        )()

    def call(self, fn: Any, *args: Any) -> Any:
        return fn(*args)


class Client:
    """rxctl's end of the socket pair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = LineReader()
        self.seen: list[dict[str, Any]] = []

    def next(self) -> dict[str, Any]:
        while not self.seen:
            data = self.sock.recv(4096)
            assert data, "rxd hung up"
            self.seen += self.reader.feed(data)
        return self.seen.pop(0)

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(encode(message))


@pytest.fixture
def pair() -> Any:
    ours, theirs = socket.socketpair()
    yield ours, Client(theirs)
    ours.close()
    theirs.close()


def waiting(service: FakeService, conn: socket.socket, request: dict[str, Any], **kw: Any) -> Any:
    """wait_running in a thread; the list it leaves its result or exception in, and the thread."""
    session = Session(Server(service, **kw), conn)  # type: ignore[arg-type]
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(session.wait_running("access", ExecRequest.parse(request), []))  # type: ignore[arg-type]
        except Exception as exc:  # the test looks at it
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return outcome, thread


REQUEST = {"project": "alpha", "argv": ["true"]}


# -- how long a wake is waited for ---------------------------------------------------------------


def test_a_wake_without_a_timeout_outlasts_the_deployments_limit_and_then_runs(pair) -> None:
    # rxd's limit (here a microsecond, standing in for the old fixed 10 minutes) is long past
    # when the container comes up; rxctl named no limit, so the session still gets its target.
    conn, client = pair
    service = FakeService("waiting_for_resources", RESOURCES)
    outcome, thread = waiting(service, conn, {**REQUEST, "timeout": None}, wake_wait_s=1e-6)

    assert client.next()["progress"] == f"waiting_for_resources: {RESOURCES}"
    service.move("starting")
    assert client.next()["progress"] == "starting"
    service.move("running")
    assert client.next() == {"ready": True}
    client.send({"go": True})
    thread.join(timeout=30)

    assert outcome == [service.target]
    assert service.wakes == 0  # it was already starting: nobody woke it again


def test_a_client_that_names_no_limit_gets_the_deployments(pair) -> None:
    # An rxctl from before --timeout sends no "timeout": rxd bounds its wait as it always did.
    conn, client = pair
    service = FakeService("waiting_for_resources", RESOURCES)
    outcome, thread = waiting(service, conn, REQUEST, wake_wait_s=1e-6)
    thread.join(timeout=30)

    assert isinstance(outcome[0], Conflict)
    assert outcome[0].message.startswith("the container of alpha did not start within 0s")


def test_a_timeout_gives_up_with_one_line_and_leaves_the_container_starting(pair) -> None:
    conn, client = pair
    service = FakeService("waiting_for_resources", RESOURCES)
    outcome, thread = waiting(service, conn, {**REQUEST, "timeout": 0})
    thread.join(timeout=30)

    assert isinstance(outcome[0], Conflict)
    assert outcome[0].message == (
        f"the container of alpha did not start within 0s (waiting_for_resources: {RESOURCES}); "
        "it keeps trying: `rxctl stop --project alpha` to give up"
    )
    assert service.view.state == "waiting_for_resources"


def test_ctrl_c_while_waiting_says_the_container_stays_queued(pair) -> None:
    conn, client = pair
    service = FakeService("waiting_for_resources", "quota gpus: 2 of 2 GPUs in use")
    outcome, thread = waiting(service, conn, {**REQUEST, "timeout": None})

    assert "progress" in client.next()
    client.send({"signal": "INT"})
    thread.join(timeout=30)

    gone = outcome[0]
    assert isinstance(gone, ClientGone) and gone.exit_code == 130
    assert gone.note == (
        "stopped waiting; the container stays queued "
        "(waiting_for_resources: quota gpus: 2 of 2 GPUs in use); "
        "`rxctl stop --project alpha` to give up"
    )


def test_a_session_that_stopped_waiting_tells_the_client_and_exits_130(pair) -> None:
    conn, client = pair
    session = Session(Server(FakeService("starting")), conn)  # type: ignore[arg-type]

    def stop() -> None:
        raise ClientGone(130, "stopped waiting; the container keeps starting (starting)")

    session.guarded(stop)

    assert client.next() == {
        "stopped": "stopped waiting; the container keeps starting (starting)",
        "exit": 130,
    }


def test_a_wait_only_request_never_wakes_a_resting_container(pair) -> None:
    conn, _ = pair
    service = FakeService("stopped", "stopped by rxbob")
    outcome, thread = waiting(service, conn, {"project": "alpha", "wait": True, "timeout": None})
    thread.join(timeout=30)

    assert isinstance(outcome[0], Conflict)
    assert outcome[0].message == "the container of alpha is stopped (stopped by rxbob)"
    assert service.wakes == 0


def test_a_wait_only_request_on_a_project_never_enabled_is_refused_without_a_wake(pair) -> None:
    conn, _ = pair
    service = FakeService("disabled")
    service.view = replace(service.view, container_id=None)
    outcome, thread = waiting(service, conn, {"project": "alpha", "wait": True, "timeout": None})
    thread.join(timeout=30)

    assert isinstance(outcome[0], Conflict)
    assert outcome[0].message == (
        "the container of alpha is not enabled; an owner runs `rxctl enable`"
    )
    assert service.wakes == 0


def test_a_wait_only_request_says_why_a_start_failed(pair) -> None:
    conn, _ = pair
    service = FakeService("pulling")
    outcome, thread = waiting(service, conn, {"project": "alpha", "wait": True, "timeout": None})
    service.view = replace(view("error", "pull failed", last_error="FATAL: no such image"))
    service.changes.changed(CONTAINER_ID)
    thread.join(timeout=30)

    assert isinstance(outcome[0], Conflict)
    assert outcome[0].message == "the container of alpha is error (FATAL: no such image)"


# -- what the words say ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "reason", "said"),
    [
        ("waiting_for_resources", RESOURCES, f"stays queued (waiting_for_resources: {RESOURCES})"),
        ("starting", None, "keeps starting (starting)"),
        ("pulling", "pulling docker://x", "keeps starting (pulling: pulling docker://x)"),
    ],
)
def test_stopping_to_wait_says_whether_the_container_keeps_starting(
    state: str, reason: str | None, said: str
) -> None:
    assert stopped_waiting("alpha", view(state, reason)) == (
        f"stopped waiting; the container {said}; `rxctl stop --project alpha` to give up"
    )


def test_stopping_to_wait_on_a_container_that_came_up_meanwhile_says_so() -> None:
    assert stopped_waiting("alpha", view("running")) == (
        "stopped waiting; the container of alpha is running"
    )
    assert stopped_waiting("alpha", view("stopped", "stopped by rxbob")) == (
        "stopped waiting; the container of alpha is stopped: stopped by rxbob"
    )


def test_giving_up_names_the_limit_the_state_and_the_way_out() -> None:
    assert gave_up("alpha", view("starting"), 3600) == (
        "the container of alpha did not start within 1h00m (starting); "
        "it keeps trying: `rxctl stop --project alpha` to give up"
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (60, "1m00s"), (125, "2m05s"), (3600, "1h00m"), (90061, "25h01m")],
)
def test_a_duration_reads_as_people_write_it(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_the_progress_line_shows_state_bottleneck_and_elapsed_time() -> None:
    now = [100.0]
    stream = StringIO()
    line = WaitLine("alpha", stream, clock=lambda: now[0])
    now[0] += 125
    line.progress({"progress": f"waiting_for_resources: {RESOURCES}"})
    assert stream.getvalue() == (f"waking alpha: waiting_for_resources: {RESOURCES} (2m05s)\n")


def test_the_progress_line_of_a_wait_names_what_it_waits_for() -> None:
    stream = StringIO()
    line = WaitLine("alpha", stream, verb="waiting for", clock=lambda: 0.0)
    line.progress({"progress": "starting"})
    line.stopped("stopped waiting; the container keeps starting (starting)")
    assert stream.getvalue().splitlines() == [
        "waiting for alpha: starting (0s)",
        "stopped waiting; the container keeps starting (starting)",
    ]


# -- the request's timeout on the wire -------------------------------------------------------------


def test_the_request_carries_the_timeout_or_its_absence() -> None:
    assert ExecRequest.parse(REQUEST).timeout_given is False
    unlimited = ExecRequest.parse({**REQUEST, "timeout": None})
    assert (unlimited.timeout, unlimited.timeout_given) == (None, True)
    assert ExecRequest.parse({**REQUEST, "timeout": 90}).timeout == 90.0
    assert ExecRequest.parse({"project": "alpha", "wait": True}).wait is True


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({"timeout": -1}, "timeout must be null or a number of seconds"),
        ({"timeout": "5m"}, "timeout must be null or a number of seconds"),
        ({"timeout": True}, "timeout must be null or a number of seconds"),
        ({"timeout": 1e30}, "timeout must be null or a number of seconds"),
        ({"timeout": float("nan")}, "timeout must be null or a number of seconds"),
        ({"wait": "yes"}, "wait must be true or false"),
        ({"wait": True}, "a wait runs nothing: no argv, no shell"),
    ],
)
def test_a_bad_timeout_or_wait_is_refused_with_a_reason(extra: dict[str, Any], why: str) -> None:
    with pytest.raises(BadRequest, match=f"^{why}"):
        ExecRequest.parse({**REQUEST, **extra})


def test_rxds_limit_for_clients_that_name_none_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="limits.wake_wait_s"):
        parse_config({"limits": {"wake_wait_s": 0}})


# -- --timeout as people write it --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("10m", 600),
        ("2h", 7200),
        ("1d", 86400),
        ("10", 600),  # a bare number is minutes, as sbatch --time
        ("1:30", 90),  # M:S
        ("1:00:00", 3600),
        ("1-00:00:30", 86430),
        (" 5M ", 300),
    ],
)
def test_a_timeout_reads_as_slurm_or_with_a_unit(text: str, seconds: int) -> None:
    assert units.seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "x", "5x", "-5", "1:2:3:4", "5 m", "1.5h"])
def test_a_timeout_that_is_no_duration_is_refused_with_examples(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration like 90s, 10m, 2h, 1d12h or 1:30:00"):
        units.seconds(text)


@given(st.integers(0, 10**6), st.sampled_from(["s", "m", "h", "d"]))
def test_any_count_of_a_unit_is_that_many_seconds(count: int, unit: str) -> None:
    expected = count * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    if expected > units.MAX_SECONDS:
        with pytest.raises(ValueError, match="longer than ten years"):
            units.seconds(f"{count}{unit}")
    else:
        assert units.seconds(f"{count}{unit}") == expected


@given(st.integers(0, 99), st.integers(0, 23), st.integers(0, 59), st.integers(0, 59))
def test_sbatch_times_are_read_to_the_second(d: int, h: int, m: int, s: int) -> None:
    assert units.seconds(f"{d}-{h:02d}:{m:02d}:{s:02d}") == ((d * 24 + h) * 60 + m) * 60 + s
    assert units.minutes(f"{d}-{h:02d}:{m:02d}:{s:02d}") * 60 >= units.seconds(f"{d}-{h}:{m}:{s}")


# -- the commands ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["exec", "shell"])
def test_a_bad_timeout_is_a_usage_error_before_anything_is_asked(command: str) -> None:
    args = [command, "--project", "alpha", "--timeout", "soon"]
    result = CliRunner().invoke(cli, [*args, "true"] if command == "exec" else args)
    assert result.exit_code == 2
    assert "'soon' is not a duration like 90s" in result.output


@pytest.mark.parametrize("command", ["enable", "start"])
def test_a_timeout_without_wait_is_a_usage_error(command: str) -> None:
    result = CliRunner().invoke(
        cli, ["--socket", "/nonexistent", command, "--project", "alpha", "--timeout", "5s"]
    )
    assert result.exit_code == 2
    assert "--timeout needs --wait" in result.output


def test_the_client_shows_rxds_words_when_it_stopped_waiting(tmp_path) -> None:
    path = str(tmp_path / "x.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(4096)
        conn.sendall(
            encode({"stopped": "stopped waiting; the container stays queued", "exit": 130})
        )
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    said: list[str] = []
    code = exec_client.run(path, {"project": "alpha", "wait": True}, on_stopped=said.append)
    thread.join(timeout=30)
    listener.close()
    assert (code, said) == (130, ["stopped waiting; the container stays queued"])


def test_the_server_module_keeps_no_fixed_wake_limit() -> None:
    # The old fixed 10 minutes is gone: the request's timeout or rxd's limits.wake_wait_s decide.
    assert not hasattr(exec_server, "WAKE_TIMEOUT_S")
