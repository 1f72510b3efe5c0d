"""The Python SDK without rxd: rxd's codes mapped to typed errors, the container's settings read
as people write them, env given to a command as argv, importable with the client's dependencies
only, and a command's output, status, refusal and deadline through a stand-in exec socket."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.cli.client import ApiError, DaemonUnavailable
from rxslurm.cli.exec_client import ExecError
from rxslurm.protocol import env_vars
from rxslurm.protocol.exec_wire import LineReader, encode
from rxslurm.sdk import (
    BadRequest,
    Conflict,
    Container,
    Forbidden,
    NotFound,
    QuotaExceeded,
    RxError,
    Secret,
    Timeout,
    Unavailable,
    Volume,
)
from rxslurm.sdk.container import exec_request, gpu_settings, memory_mb
from rxslurm.sdk.errors import error_for, translated
from tests.support.fake_rxd import short_tmp_dir

# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("not_found", 404, NotFound),
        ("forbidden", 403, Forbidden),
        ("not_bound", 403, Forbidden),
        ("quota", 409, QuotaExceeded),
        ("conflict", 409, Conflict),
        ("no_run_as", 409, Conflict),
        ("timeout", None, Timeout),
        ("bad_request", 400, BadRequest),
        ("unavailable", 503, Unavailable),
        # A code this SDK does not know yet: the status decides, else the base.
        ("something_new", 404, NotFound),
        ("something_new", 418, RxError),
        (None, None, RxError),
    ],
)
def test_rxd_codes_map_to_one_exception_each(
    code: str | None, status: int | None, kind: type
) -> None:
    error = error_for("rxd's reason", code, status)
    assert type(error) is kind
    assert (error.message, error.code, error.status) == ("rxd's reason", code, status)


def test_quota_exceeded_is_a_conflict() -> None:
    assert isinstance(error_for("over quota: ...", "quota", 409), Conflict)


@pytest.mark.parametrize(
    ("raised", "kind", "code"),
    [
        (ApiError(404, "not_found", "no project named 'x'"), NotFound, "not_found"),
        (ExecError("a viewer may not exec", "forbidden"), Forbidden, "forbidden"),
        (ExecError("rxd ended the session without an exit status"), RxError, None),
        (DaemonUnavailable("rxd is not running"), Unavailable, None),
    ],
)
def test_the_clients_exceptions_leave_as_the_sdks(
    raised: Exception, kind: type, code: str | None
) -> None:
    with pytest.raises(kind) as caught, translated():
        raise raised
    assert type(caught.value) is kind
    assert caught.value.code == code and caught.value.message == str(raised)


def test_an_exec_error_reads_rxds_code_when_there_is_one() -> None:
    assert ExecError.of({"error": "no", "code": "forbidden"}).code == "forbidden"
    assert ExecError.of({"error": "no"}).code is None
    assert ExecError.of({"error": "no", "code": 7}).code is None


# -- settings and argv -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_", "mb"),
    [("16Gi", 16384), ("16G", 16384), ("16GiB", 16384), ("512Mi", 512), ("2048", 2048), (300, 300)],
)
def test_memory_is_read_as_sbatch_reads_it(given_: str | int, mb: int) -> None:
    assert memory_mb(given_) == mb


@pytest.mark.parametrize("bad", ["16 lots", "Gi", "-1G", True, 1.5])
def test_memory_that_is_not_a_size_is_refused(bad: Any) -> None:
    with pytest.raises(BadRequest):
        memory_mb(bad)


def test_gpu_is_a_count_or_type_and_count() -> None:
    assert gpu_settings(None) == {}
    assert gpu_settings(2) == {"gpus": 2}
    assert gpu_settings("a100:1") == {"gpus": 1, "gpu_type": "a100"}
    assert gpu_settings("a100") == {"gpus": 1, "gpu_type": "a100"}
    for bad in ("a100:x", ":1", True, 1.0):
        with pytest.raises(BadRequest):
            gpu_settings(bad)  # type: ignore[arg-type]


def test_a_containers_settings_are_the_apis() -> None:
    box = Container(
        "alpha",
        image="/images/x.sif",
        cpu=2,
        memory="16Gi",
        gpu="a100:1",
        socket="/nonexistent/rxd.sock",
    )
    assert box.settings == {
        "image": "/images/x.sif",
        "cpus": 2,
        "mem_mb": 16384,
        "gpus": 1,
        "gpu_type": "a100",
    }


def test_port_and_entrypoint_are_the_projects_service_settings() -> None:
    box = Container(
        "alpha",
        port=8000,
        entrypoint=["python3", "-m", "http.server", "8000"],
        socket="/nonexistent/rxd.sock",
    )
    assert box.settings == {
        "port": 8000,
        "service": json.dumps(["python3", "-m", "http.server", "8000"]),
    }
    # One string is one word (never split by a shell).
    assert Container("alpha", entrypoint="serve a", socket="/x").settings == {
        "service": '["serve a"]'
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        {"port": 0},
        {"port": 70000},
        {"port": True},
        {"port": "8000"},
        {"entrypoint": []},
        {"entrypoint": ["python3", ""]},
        {"entrypoint": ["a\0b"]},
        {"entrypoint": [1]},
    ],
)
def test_a_bad_port_or_entrypoint_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        Container("alpha", socket="/nonexistent/rxd.sock", **kwargs)


@pytest.mark.parametrize("bad", ["alpha", "rx-", "", None])
def test_from_id_takes_a_containers_id_only(bad: Any) -> None:
    with pytest.raises(BadRequest):
        Container.from_id(bad, socket="/nonexistent/rxd.sock")


def test_from_id_asks_rxd_for_the_project_the_id_names() -> None:
    # Nothing listens there: the request for project alpha is what fails.
    with pytest.raises(Unavailable):
        Container.from_id("rx-alpha", socket="/nonexistent/rxd.sock")


def test_a_port_forward_refused_by_rxctl_raises_its_reason() -> None:
    box = Container("alpha", socket="/nonexistent/rxd.sock")
    with pytest.raises(RxError, match="rxd is not running"):
        box.port_forward(40123)
    with pytest.raises(BadRequest):
        box.port_forward(0)


words = st.lists(st.text(min_size=1).filter(lambda w: "\0" not in w), min_size=1, max_size=5)
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)


@given(cmd=words, env=st.dictionaries(names, st.text(), max_size=4))
def test_env_travels_in_the_exec_requests_env_field_never_in_argv(
    cmd: list[str], env: dict[str, str]
) -> None:
    env = {k: v.replace("\0", "") for k, v in env.items() if env_vars.refusal(k) is None}
    request = exec_request(cmd, env, cwd="/workspace")
    assert request["argv"] == cmd
    assert request.get("env", {}) == env
    assert request["cwd"] == "/workspace"


@pytest.mark.parametrize(
    "env", [{"1X": "a"}, {"A B": "a"}, {"": "a"}, {"X": 1}, {"PATH": "/x"}, {"X": "a\0b"}]
)
def test_env_names_and_values_are_checked(env: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        exec_request(["true"], env)


def test_exec_needs_a_command() -> None:
    with pytest.raises(BadRequest):
        exec_request([], None)


# -- secrets, env and volumes through a stand-in client --------------------------------------


class StandInClient:
    """Records the API requests the SDK makes; answers as rxd would for an existing project."""

    def __init__(self, volumes: dict[str, Any] | None = None) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.volumes = volumes or {"project": "alpha", "volumes": [], "mounts": []}
        self.door = None
        self.door_error = "no exec door behind the stand-in"

    def request(self, method: str, path: str, body: Any = None) -> Any:
        self.requests.append((method, path, body))
        if path == "/v1/projects/alpha":
            return {"name": "alpha", "container": {"state": "stopped"}}
        if path == "/v1/projects/alpha/volumes" and method == "GET":
            return self.volumes
        return {}

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body)


def test_secret_values_stay_out_of_repr_and_missing_local_names_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SDK_TOKEN", "s3cret-value")
    monkeypatch.delenv("SDK_ABSENT", raising=False)
    secret = Secret.from_local_env("SDK_TOKEN")
    assert secret.values() == {"SDK_TOKEN": "s3cret-value"}
    assert "s3cret-value" not in repr(secret) and "SDK_TOKEN" in repr(secret)
    with pytest.raises(BadRequest, match="SDK_ABSENT"):
        Secret.from_local_env("SDK_ABSENT")
    with pytest.raises(BadRequest, match="reserved") as caught:
        Secret.from_dict({"LD_PRELOAD": "s3cret-value"})
    assert "s3cret-value" not in str(caught.value)


def test_run_sets_env_secrets_and_volumes_before_it_wakes_the_container() -> None:
    box = Container(
        "alpha",
        env={"EPOCHS": "3"},
        secrets=[Secret.from_dict({"HF_TOKEN": "t0ken", "WANDB_KEY": "k"})],
        volumes=[(Volume("data"), "/data"), (Volume("refs"), "/refs:ro")],
    )
    fake = StandInClient(
        {
            "project": "alpha",
            "volumes": [{"name": "data", "path": "/v/data"}],
            "mounts": [
                {"volume": "data", "target": "/data", "read_only": False, "allowed": True},
            ],
        }
    )
    box._client = fake  # type: ignore[assignment]
    with pytest.raises(RxError, match="stand-in"):  # the wait cannot start: no exec door
        box.run(timeout=5)
    changes = [(m, p, b) for m, p, b in fake.requests if m != "GET"]
    assert changes == [
        ("PATCH", "/v1/projects/alpha/env", {"set": {"EPOCHS": "3"}}),
        ("PUT", "/v1/projects/alpha/secrets/HF_TOKEN", {"value": "t0ken"}),
        ("PUT", "/v1/projects/alpha/secrets/WANDB_KEY", {"value": "k"}),
        # "data" is owned and mounted already; "refs" is new: created, then mounted read-only.
        ("POST", "/v1/projects/alpha/volumes", {"name": "refs"}),
        ("PUT", "/v1/projects/alpha/mounts/refs", {"target": "/refs", "read_only": True}),
        ("POST", "/v1/projects/alpha/start", None),
    ]


def test_volume_files_go_in_and_out_of_the_folder_rxd_names(tmp_path: Path) -> None:
    root = tmp_path / "vol"
    root.mkdir()
    fake = StandInClient(
        {"project": "alpha", "volumes": [{"name": "data", "path": str(root)}], "mounts": []}
    )
    volume = Volume("data")
    volume.attach("alpha", fake)  # type: ignore[arg-type]
    local = tmp_path / "train.csv"
    local.write_text("a,b\n")
    volume.put_file(local, "train.csv")
    assert (root / "train.csv").read_text() == "a,b\n"
    assert volume.listdir() == ["train.csv"]
    volume.get_file("train.csv", tmp_path / "back.csv")
    assert (tmp_path / "back.csv").read_text() == "a,b\n"
    with pytest.raises(BadRequest, match="inside the volume"):
        volume.get_file("../etc/passwd", tmp_path / "x")
    with pytest.raises(NotFound):
        volume.listdir("nothing-here")
    other = Volume("other")
    other.attach("alpha", fake)  # type: ignore[arg-type]
    with pytest.raises(NotFound, match="neither owns nor mounts"):
        other.listdir()


# -- importable on the client's dependencies alone ----------------------------------------------

BLOCKED = ("aiohttp", "sqlite_utils", "sqlite3", "spython", "rxslurm.daemon")


def test_the_sdk_imports_nothing_of_the_daemons() -> None:
    """A login node's venv has only the client side: the SDK, and the session runner it
    starts, import with the daemon's dependencies made unimportable."""
    code = textwrap.dedent(
        f"""
        import sys
        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {BLOCKED!r} or name.startswith("rxslurm.daemon"):
                    raise ImportError(f"blocked: {{name}}")
        sys.meta_path.insert(0, Blocker())
        import rxslurm.sdk, rxslurm.sdk.session_child, rxslurm.cli.session, rxslurm.cli.exec_remote
        from rxslurm.sdk import Container
        Container("alpha", memory="1Gi", gpu="a100:1", socket="/nonexistent/rxd.sock")
        print(sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_package_says_it_is_typed() -> None:
    import rxslurm.sdk

    assert (Path(rxslurm.sdk.__file__).parent / "py.typed").is_file()


# -- a command through a stand-in exec socket ---------------------------------------------------

Script = Callable[[socket.socket, dict[str, Any], list[int]], None]


@pytest.fixture
def folder() -> Iterator[Path]:
    with short_tmp_dir() as path:
        yield path


def exec_server(folder: Path, script: Script) -> threading.Thread:
    """rxd's exec socket beside `folder`/rxd.sock, running `script` with the request and the
    caller's descriptors for one session."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(folder / "rxd-exec.sock"))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            try:
                script(conn, json.loads(data), fds)
            finally:
                for fd in fds:
                    os.close(fd)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_a_commands_output_and_status_come_back_apart(folder: Path) -> None:
    seen: dict[str, Any] = {}

    def script(conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
        seen.update(request)
        os.write(fds[1], b"out\xff\n")
        os.write(fds[2], b"err\n")
        conn.sendall(encode({"exit": 3}))

    server = exec_server(folder, script)
    box = Container("alpha", socket=str(folder / "rxd.sock"))
    result = box.exec("sh", "-c", "x", env={"A": "1"}, timeout=30)
    server.join(10)
    assert (result.exit_code, result.stdout_bytes, result.stderr) == (3, b"out\xff\n", "err\n")
    assert result.stdout == "out\ufffd\n"
    assert seen["project"] == "alpha" and seen["argv"] == ["sh", "-c", "x"]
    assert seen["env"] == {"A": "1"}
    assert seen["timeout"] == 30 and seen["wake"] is True and seen["cwd"] == "/workspace"


def test_a_refusal_is_rxds_reason_as_its_exception(folder: Path) -> None:
    def script(conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
        conn.sendall(
            encode({"error": "exec needs role manager; you are viewer", "code": "forbidden"})
        )

    exec_server(folder, script)
    box = Container("alpha", socket=str(folder / "rxd.sock"))
    with pytest.raises(Forbidden, match="exec needs role manager; you are viewer"):
        box.exec("true")


def test_a_command_past_its_deadline_is_sent_term_and_timeout_raised(folder: Path) -> None:
    got: list[dict[str, Any]] = []

    def script(conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
        os.write(fds[1], b"started\n")
        reader = LineReader()
        while not got:
            data = conn.recv(4096)
            if not data:
                return
            got.extend(reader.feed(data))
        conn.sendall(encode({"exit": 143}))

    server = exec_server(folder, script)
    box = Container("alpha", socket=str(folder / "rxd.sock"))
    process = box.exec_stream("sleep", "600", timeout=2)
    assert next(iter(process)).data == b"started\n"
    with pytest.raises(Timeout, match="did not finish within 2 s"):
        process.wait()
    server.join(10)
    # The session's runner forwarded the SDK's SIGTERM to rxd, as rxctl forwards a signal.
    assert got == [{"signal": "TERM"}]


def test_input_longer_than_a_pipe_holds_does_not_wait_on_unread_output(folder: Path) -> None:
    def cat(conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
        while data := os.read(fds[0], 65536):
            os.write(fds[1], data)
        conn.sendall(encode({"exit": 0}))

    server = exec_server(folder, cat)
    box = Container("alpha", socket=str(folder / "rxd.sock"))
    data = os.urandom(1 << 20)
    result = box.exec("cat", stdin=data, timeout=60)
    server.join(10)
    assert (result.exit_code, result.stdout_bytes) == (0, data)
