"""The Python SDK (rxslurm.sdk) end to end, as a researcher's notebook uses it: real rxd, real
Slurm, real Apptainer. Each script runs as a test user in a process of its own, finding rxd as
rxctl does ($RXCTL_SOCKET), and prints what it saw as JSON."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import textwrap
import urllib.parse
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import ok
from tests.support.cluster import VENV_BIN, run_as, spawn_as, wait_for
from tests.support.daemon import Rxd, free_port, running_rxd
from tests.support.lifecycle import gpu_quota_rxd, lifecycle_config, status
from tests.support.real_apptainer import BASE_IMAGE
from tests.test_service_e2e import fetch as fetch_as_user

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("container_runtime")]

PYTHON = str(VENV_BIN / "python")
BUILDS = "[builds]\nenabled = true\ncpus = 1\nmem_mb = 500\ntime_limit_min = 15\n"
PROLOGUE = f"""\
import json
from rxslurm.sdk import *
IMAGE = {str(BASE_IMAGE)!r}
def show(**seen):
    print(json.dumps(seen))
def raised(call):
    try:
        call()
    except RxError as exc:
        return [type(exc).__name__, exc.code, exc.message]
    return None
"""


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    def config(root: Path) -> str:
        return lifecycle_config(root) + f'[volumes]\nroot = "{root}/volumes"\n' + BUILDS

    with running_rxd(config, bind=("rxalice", "rxbob")) as daemon:
        yield daemon
        daemon.cancel_own_jobs()


def sdk(
    rxd: Rxd,
    user: str,
    script: str,
    timeout: float = 300,
    server: str | None = None,
    env: dict[str, str] | None = None,
    python: str = PYTHON,
) -> dict[str, Any]:
    """What `script` (after PROLOGUE) showed, run as `user` in a fresh Python against rxd: on
    its socket, or through the network door at `server` (as on a login node: no socket named)."""
    code = PROLOGUE + textwrap.dedent(script)
    door = {"RXSLURM_SERVER": server} if server else {"RXCTL_SOCKET": str(rxd.socket)}
    result = run_as(user, [python, "-c", code], env={**door, **(env or {})}, timeout=timeout)
    assert result.returncode == 0, (result.stdout, result.stderr, rxd.log_text()[-3000:])
    seen: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return seen


def test_notebook_runs_execs_and_stops_a_container(rxd: Rxd) -> None:
    seen = sdk(
        rxd,
        "rxalice",
        """
        box = Container("nb", image=IMAGE, cpu=1, memory="256Mi")
        box.run(timeout=240)
        state = box.status
        result = box.exec(
            "sh", "-c", 'echo "$GREETING out"; echo err >&2; echo kept > /opt/sdk-marker; exit 3',
            env={"GREETING": "hello"},
        )
        pieces = [(o.stream, o.text) for o in box.exec_stream("sh", "-c", "echo a; echo b >&2")]
        show(state=state, id=box.id, job=box.info["job_id"], exit=result.exit_code,
             out=result.stdout, err=result.stderr, raw=result.stdout_bytes.decode(),
             pieces=pieces)
        """,
    )
    assert seen["state"] == "running" and seen["id"] == "rx-nb"
    assert (seen["exit"], seen["out"], seen["err"]) == (3, "hello out\n", "err\n")
    assert seen["raw"] == "hello out\n"
    assert sorted(seen["pieces"]) == [["stderr", "b\n"], ["stdout", "a\n"]]
    # The project was created with the container's settings, the caller its owner.
    shown = ok(rxd.rxctl("rxalice", "project", "show", "--project", "nb", "--json"))
    project = json.loads(shown.stdout)
    assert project["role"] == "owner"
    assert project["settings"]["mem_mb"] == 256 and project["settings"]["cpus"] == 1

    # Another process finds the same container by name and sees what the first left in it.
    other = sdk(
        rxd,
        "rxalice",
        """
        box = Container.from_name("nb")
        result = box.exec("cat", "/opt/sdk-marker")
        show(job=box.info["job_id"], out=result.stdout, exit=result.exit_code)
        """,
    )
    assert other == {"job": seen["job"], "out": "kept\n", "exit": 0}

    stopped = sdk(
        rxd,
        "rxalice",
        """
        box = Container.from_name("nb")
        box.stop(grace_period_seconds=120)
        show(state=box.status)
        """,
    )
    assert stopped == {"state": "stopped"}
    assert status(rxd, "rxalice", "nb")["state"] == "stopped"


def test_a_secret_and_a_volume_reach_a_command_and_the_secret_no_listing_or_log(rxd: Rxd) -> None:
    value = "sdk-" + secrets.token_hex(12)
    seen = sdk(
        rxd,
        "rxalice",
        """
        import pathlib, tempfile
        data = Volume("sdk-data")
        box = Container(
            "nbvol", image=IMAGE, cpu=1, memory="256Mi", env={"STAGE": "train"},
            secrets=[Secret.from_local_env("SDK_TOKEN")], volumes=[(data, "/data")],
        )
        box.run(timeout=240)
        local = pathlib.Path(tempfile.mkdtemp()) / "input.txt"
        local.write_text("from the notebook\\n")
        data.put_file(local, "input.txt")
        result = box.exec(
            "sh", "-c",
            'cat /data/input.txt; echo "$STAGE $EXTRA"; printf %s "$SDK_TOKEN" > /data/out.txt',
            env={"EXTRA": "one-off"},
        )
        back = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
        data.get_file("out.txt", back)
        show(exit=result.exit_code, out=result.stdout, listed=data.listdir(),
             back=back.read_text(), secret=repr(box.secrets[0]))
        box.stop(grace_period_seconds=120)
        """,
        # The notebook's own environment holds it, as a token exported in a shell would.
        env={"SDK_TOKEN": value},
    )
    assert seen["exit"] == 0, seen
    assert seen["out"] == "from the notebook\ntrain one-off\n"
    assert seen["listed"] == ["input.txt", "out.txt"]
    # The command saw the secret (and wrote it to the volume, read back here).
    assert seen["back"] == value
    assert value not in seen["secret"]
    # rxd keeps it as the project's secret: rxctl lists its name, never its value.
    listed = ok(rxd.rxctl("rxalice", "secret", "list", "--project", "nbvol", "--json")).stdout
    assert [s["name"] for s in json.loads(listed)["secrets"]] == ["SDK_TOKEN"]
    assert value not in listed
    assert value not in rxd.log_text()
    mounts = json.loads(
        ok(rxd.rxctl("rxalice", "volume", "list", "--project", "nbvol", "--json")).stdout
    )["mounts"]
    assert [(m["volume"], m["target"], m["read_only"]) for m in mounts] == [
        ("sdk-data", "/data", False)
    ]


def test_a_chain_is_built_once_and_a_second_run_uses_its_build(rxd: Rxd) -> None:
    # Builds need the project's dev mode, its owner's switch (docs/images.md).
    ok(rxd.rxctl("rxalice", "project", "create", "nbimg", "--image", str(BASE_IMAGE)))
    ok(rxd.rxctl("rxalice", "project", "set", "--project", "nbimg", "--dev-mode", "on"))
    chain = """
        chain = (
            Image.local(IMAGE)
            .env({"CHAIN": "it's built"})
            .run_commands('echo "$CHAIN" > /opt/sdk-chain')
        )
        """
    first = sdk(
        rxd,
        "rxalice",
        chain
        + """
        box = Container("nbimg", image=chain, cpu=1, memory="256Mi")
        box.run(timeout=600)
        result = box.exec("sh", "-c", 'cat /opt/sdk-chain; echo "$CHAIN"')
        show(name=chain.build_name, out=result.stdout, exit=result.exit_code)
        box.stop(grace_period_seconds=120)
        """,
        timeout=700,
    )
    assert (first["exit"], first["out"]) == (0, "it's built\nit's built\n")
    second = sdk(
        rxd,
        "rxalice",
        chain
        + """
        box = Container("nbimg", image=chain, cpu=1, memory="256Mi")
        box.run(timeout=300)
        show(out=box.exec("cat", "/opt/sdk-chain").stdout)
        box.stop(grace_period_seconds=120)
        """,
    )
    assert second == {"out": "it's built\n"}
    images = json.loads(
        ok(rxd.rxctl("rxalice", "image", "list", "--project", "nbimg", "--json")).stdout
    )["images"]
    # One build, named by the chain's digest: the second run() found it.
    assert [(i["name"], i["state"]) for i in images] == [(first["name"], "succeeded")]


TINY_WHEEL = """
    import base64, hashlib, pathlib, tempfile, zipfile
    def tiny_wheel(folder):
        # A wheel of one module, written here: nothing comes from a package index.
        files = {
            "tinyrx/__init__.py": "def hello():\\n    return 'tiny wheel 0.1'\\n",
            "tinyrx-0.1.dist-info/METADATA": (
                "Metadata-Version: 2.1\\nName: tinyrx\\nVersion: 0.1\\n"
            ),
            "tinyrx-0.1.dist-info/WHEEL": (
                "Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\n"
                "Tag: py3-none-any\\n"
            ),
        }
        record = ""
        for name, text in files.items():
            digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest())
            record += f"{name},sha256={digest.decode().rstrip('=')},{len(text)}\\n"
        files["tinyrx-0.1.dist-info/RECORD"] = record + "tinyrx-0.1.dist-info/RECORD,,\\n"
        wheel = pathlib.Path(folder) / "tinyrx-0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            for name, text in files.items():
                archive.writestr(zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0)), text)
        return wheel
    """


def pieces(*parts: str) -> str:
    """One script of parts indented each its own way."""
    return "".join(textwrap.dedent(part) for part in parts)


USES_ALL_THREE = (
    "import os, tinyrx; print(tinyrx.hello()); print(open('/data/in.txt').read().strip()); "
    "print(len(os.environ['SDK_TOKEN']))"
)


def test_notebook_builds_a_local_wheel_into_its_image_once(rxd: Rxd) -> None:
    """#18's done-when: a chain that pip-installs a wheel of this host (uploaded through the API
    into the build context), a secret and a volume used by one command, a stop with a grace
    period; a second run() of the same chain in another process does not build again."""
    ok(rxd.rxctl("rxalice", "project", "create", "nbwheel", "--image", str(BASE_IMAGE)))
    ok(rxd.rxctl("rxalice", "project", "set", "--project", "nbwheel", "--dev-mode", "on"))
    token = "sdk-" + secrets.token_hex(8)
    chain = """
        image = (
            Image.local(IMAGE)
            .add_local_file(wheel, "/opt/wheels/")
            .pip_install("--no-index", "/opt/wheels/tinyrx-0.1-py3-none-any.whl")
            .add_local_dir(blobs, "/opt/blobs")
        )
        box = Container(
            "nbwheel", image=image, cpu=1, memory="256Mi",
            secrets=[Secret.from_local_env("SDK_TOKEN")], volumes=[(Volume("nbw-data"), "/data")],
        )
        """
    first = sdk(
        rxd,
        "rxalice",
        pieces(
            TINY_WHEEL,
            """
            import hashlib, os
            wheel = tiny_wheel(tempfile.mkdtemp())
            # A folder with a file of three upload chunks (512 KiB each), one executable.
            blobs = pathlib.Path(tempfile.mkdtemp())
            (blobs / "sub").mkdir()
            (blobs / "sub" / "big.bin").write_bytes(os.urandom(1300 * 1024))
            (blobs / "run.sh").write_text("#!/bin/sh\\necho ran\\n")
            (blobs / "run.sh").chmod(0o755)
            """,
            chain,
            f"""
        box.run(timeout=900)
        local = pathlib.Path(tempfile.mkdtemp()) / "in.txt"
        local.write_text("from the volume\\n")
        Volume("nbw-data", project="nbwheel").put_file(local, "in.txt")
        result = box.exec("python3", "-c", {USES_ALL_THREE!r})
        big = box.exec("sh", "-c", "sha256sum < /opt/blobs/sub/big.bin; /opt/blobs/run.sh")
        box.stop(grace_period_seconds=120)
        show(wheel=str(wheel), blobs=str(blobs), name=image.build_name, out=result.stdout,
             exit=result.exit_code, state=box.status, big=big.stdout,
             digest=hashlib.sha256((blobs / "sub" / "big.bin").read_bytes()).hexdigest())
        """,
        ),
        timeout=1000,
        env={"SDK_TOKEN": token},
    )
    assert (first["exit"], first["state"]) == (0, "stopped"), first
    assert first["out"] == f"tiny wheel 0.1\nfrom the volume\n{len(token)}\n"
    # The folder's big file came through in chunks, whole; the executable bit too.
    assert first["big"] == f"{first['digest']}  -\nran\n"
    second = sdk(
        rxd,
        "rxalice",
        pieces(
            TINY_WHEEL,
            f"""
            wheel, blobs = pathlib.Path({first["wheel"]!r}), pathlib.Path({first["blobs"]!r})
            """,
            chain,
            """
        box.run(timeout=300)
        result = box.exec("python3", "-c", "import tinyrx; print(tinyrx.hello())")
        left = box.exec("ls", "-A", "/workspace/.rx-build-contexts")
        box.stop(grace_period_seconds=120)
        show(name=image.build_name, out=result.stdout, left=[left.exit_code, left.stdout])
        """,
        ),
        env={"SDK_TOKEN": token},
    )
    assert second["name"] == first["name"]
    assert second["out"] == "tiny wheel 0.1\n"
    # The uploaded context went once the build ended.
    assert second["left"] == [0, ""]
    images = json.loads(
        ok(rxd.rxctl("rxalice", "image", "list", "--project", "nbwheel", "--json")).stdout
    )["images"]
    # One build: the second run() found it by the chain's digest, the wheel's among it.
    assert [(i["name"], i["state"]) for i in images] == [(first["name"], "succeeded")]
    history = ok(rxd.rxctl("rxalice", "history", "--project", "nbwheel", "--json")).stdout
    actions = [e["action"] for e in json.loads(history)["events"]]
    assert "image.context-written" in actions and "image.context-deleted" in actions

    # One changed byte in the added folder: another image, built.
    changed = sdk(
        rxd,
        "rxalice",
        pieces(
            TINY_WHEEL,
            f"""
            wheel, blobs = pathlib.Path({first["wheel"]!r}), pathlib.Path({first["blobs"]!r})
            (blobs / "run.sh").write_text("#!/bin/sh\\necho ran again\\n")
            """,
            chain,
            """
        box.run(timeout=900)
        result = box.exec("/opt/blobs/run.sh")
        box.stop(grace_period_seconds=120)
        show(name=image.build_name, out=result.stdout)
        """,
        ),
        timeout=1000,
        env={"SDK_TOKEN": token},
    )
    assert changed["out"] == "ran again\n"
    assert changed["name"] != first["name"]
    images = json.loads(
        ok(rxd.rxctl("rxalice", "image", "list", "--project", "nbwheel", "--json")).stdout
    )["images"]
    assert sorted((i["name"], i["state"]) for i in images) == sorted(
        [(first["name"], "succeeded"), (changed["name"], "succeeded")]
    )


CONTEXT_CALLS = """
    import base64
    from rxslurm.cli.client import Client
    from rxslurm.sdk.errors import translated
    ROUTE = "/v1/projects/ctxapi/image-contexts/sdk-test"
    def put(path, data, offset=0, last=True):
        body = {"path": path, "offset": offset, "data": base64.b64encode(data).decode(),
                "last": last}
        with translated():
            return Client().request("PUT", ROUTE, body)
    def delete():
        with translated():
            return Client().request("DELETE", ROUTE)
    """


def test_the_context_upload_route_checks_role_path_and_offset_and_is_audited(rxd: Rxd) -> None:
    ok(rxd.rxctl("rxalice", "project", "create", "ctxapi", "--image", str(BASE_IMAGE)))
    member = ("project", "member", "add", "--project", "ctxapi", "rxbob", "--role", "viewer")
    ok(rxd.rxctl("rxalice", *member))
    viewer = sdk(
        rxd,
        "rxbob",
        pieces(CONTEXT_CALLS, "show(put=raised(lambda: put('a.txt', b'x')))\n"),
    )
    assert viewer["put"][:2] == ["Forbidden", "forbidden"]
    owner = sdk(
        rxd,
        "rxalice",
        pieces(
            CONTEXT_CALLS,
            """
            show(
                up=raised(lambda: put("../a.txt", b"x")),
                gap=raised(lambda: put("a.txt", b"x", offset=5)),
                first=put("d/a.txt", b"hello ", last=False)["size"],
                last=put("d/a.txt", b"world", offset=6),
                deleted=delete()["deleted"],
                again=raised(delete),
            )
            """,
        ),
    )
    assert owner["up"][0] == "BadRequest"
    assert owner["gap"][:2] == ["Conflict", "conflict"]
    assert owner["first"] == 6
    assert owner["last"] == {
        "project": "ctxapi",
        "context": ".rx-build-contexts/sdk-test",
        "path": "d/a.txt",
        "size": 11,
        "complete": True,
    }
    assert owner["deleted"] == ".rx-build-contexts/sdk-test"
    assert owner["again"][0] == "NotFound"
    history = ok(rxd.rxctl("rxalice", "history", "--project", "ctxapi", "--json")).stdout
    events = [e for e in json.loads(history)["events"] if e["action"].startswith("image.context")]
    assert [e["action"] for e in events].count("image.context-written") == 2
    assert [e["action"] for e in events].count("image.context-deleted") == 1


def fetch(url: str) -> str | None:
    """GET as rxalice: the forward relays only its own user's connections (root's included)."""
    parts = urllib.parse.urlsplit(url)
    assert parts.port is not None
    return fetch_as_user(parts.port, parts.path)


def test_a_service_container_found_by_its_id_is_reached_through_port_forward(rxd: Rxd) -> None:
    """port= and entrypoint= make the project's service (docs/services.md); another process
    finds the container by the id the first saw and forwards a local port to the service."""
    port, local = free_port(), free_port()
    seen = sdk(
        rxd,
        "rxalice",
        f"""
        box = Container(
            "sdksvc", image=IMAGE, cpu=1, memory="256Mi", port={port},
            entrypoint=["python3", "-m", "http.server", "--bind", "127.0.0.1",
                        "--directory", "/workspace", "{port}"],
        )
        box.run(timeout=240)
        box.exec("sh", "-c", "echo served > /workspace/hello.txt")
        show(id=box.id, service=box.refresh().info.get("service"))
        """,
    )
    assert seen["id"] == "rx-sdksvc"
    assert str(seen["service"]).endswith(f":{port}")
    holder = PROLOGUE + textwrap.dedent(
        f"""
        import sys
        box = Container.from_id({seen["id"]!r}, socket={str(rxd.socket)!r})
        forward = box.port_forward({local})
        show(url=forward.url)
        sys.stdout.flush()
        sys.stdin.read()  # until the test is done with the forward
        forward.close()
        box.stop(grace_period_seconds=120)
        show(state=box.status)
        """
    )
    process = spawn_as("rxalice", [PYTHON, "-c", holder], stdin=subprocess.PIPE)
    try:
        assert process.stdout is not None and process.stdin is not None
        url = json.loads(process.stdout.readline())["url"]
        assert url == f"http://127.0.0.1:{local}"
        body = wait_for(lambda: fetch(url + "/hello.txt"), 60, what="the service, forwarded")
        assert body == "served\n"
        # communicate() closes the script's stdin: it closes the forward and stops the box.
        out, _ = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    assert json.loads(out.splitlines()[-1]) == {"state": "stopped"}, out
    assert fetch(url + "/hello.txt") is None  # the forward closed with it


def test_each_typed_error_comes_from_a_real_failure(rxd: Rxd) -> None:
    seen = sdk(
        rxd,
        "rxalice",
        """
        missing = raised(lambda: Container.from_name("nosuch"))
        box = Container("errs", image=IMAGE, cpu=1, memory="256Mi")
        # A wait of no time at all: the container cannot be running yet.
        waited = raised(lambda: box.run(timeout=0))
        box.run(timeout=240)
        slow = raised(lambda: box.exec("sleep", "300", timeout=3))
        after = box.exec("echo", "still here")
        show(missing=missing, waited=waited, slow=slow, after=[after.exit_code, after.stdout])
        """,
    )
    assert seen["missing"] == [
        "NotFound",
        "not_found",
        "no project named 'nosuch' (or you are not a member)",
    ]
    kind, code, message = seen["waited"]
    assert (kind, code) == ("Timeout", "timeout")
    assert message.startswith("the container of errs did not start within 0s")
    assert seen["slow"][:2] == ["Timeout", None]
    assert "did not finish within 3 s" in seen["slow"][2]
    assert seen["after"] == [0, "still here\n"]

    ok(
        rxd.rxctl(
            "rxalice", "project", "member", "add", "--project", "errs", "rxbob", "--role", "viewer"
        )
    )
    viewer = sdk(
        rxd,
        "rxbob",
        """
        box = Container.from_name("errs")
        show(state=box.status, refused=raised(lambda: box.exec("id")))
        """,
    )
    assert viewer["state"] == "running"
    assert viewer["refused"][:2] == ["Forbidden", "forbidden"]
    ok(rxd.rxctl("rxalice", "stop", "--project", "errs"))


def test_a_full_quota_is_quota_exceeded() -> None:
    with gpu_quota_rxd(1, '[quotas]\npolicy = "reject"\n') as rxd:
        seen = sdk(
            rxd,
            "rxalice",
            """
            box = Container("greedy", image=IMAGE, cpu=1, memory="256Mi", gpu="a100:2",
                            partition="gpu")
            show(refused=raised(lambda: box.run(timeout=60)), state=box.refresh().status)
            """,
        )
    kind, code, message = seen["refused"]
    assert (kind, code) == ("QuotaExceeded", "quota")
    assert message == (
        "over quota: partition gpu: deployment quota 1 GPUs, 0 in use by nobody; "
        "this container needs 2"
    )
    assert seen["state"] == "stopped"


def test_the_docs_notebook_prints_what_the_doc_says(rxd: Rxd) -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "sdk.md").read_text()
    section = doc.split("## A notebook", 1)[1]
    example, printed = re.findall(r"```(?:python|text)\n(.*?)```", section, re.DOTALL)[:2]
    example = example.replace('"docker://python:3.12-slim"', repr(str(BASE_IMAGE)))
    result = run_as(
        "rxalice",
        [PYTHON, "-c", example],
        env={"RXCTL_SOCKET": str(rxd.socket)},
        timeout=300,
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stdout == printed


def test_the_sdk_through_the_munge_network_door() -> None:
    """From another host the SDK finds rxd as rxctl does ($RXSLURM_SERVER) and is proved by
    MUNGE: the owner's commands run as steps it starts itself, a manager's are relayed by rxd."""
    port = free_port()
    server = f"127.0.0.1:{port}"

    def config(root: Path) -> str:
        return f'listen = "{server}"\n' + lifecycle_config(root)

    with running_rxd(config, bind=("rxalice", "rxbob")) as rxd:
        owner = sdk(
            rxd,
            "rxalice",
            """
            box = Container("door", image=IMAGE, cpu=1, memory="256Mi")
            box.run(timeout=240)
            result = box.exec("sh", "-c", "echo out; echo err >&2; exit 4")
            show(state=box.status, exit=result.exit_code, out=result.stdout, err=result.stderr)
            """,
            server=server,
        )
        assert owner == {"state": "running", "exit": 4, "out": "out\n", "err": "err\n"}
        member = ("project", "member", "add", "--project", "door", "rxbob", "--role", "manager")
        ok(rxd.rxctl("rxalice", *member))
        manager = sdk(
            rxd,
            "rxbob",
            """
            box = Container.from_name("door")
            result = box.exec("sh", "-c", "cat; exit 5", stdin=b"from the manager")
            show(exit=result.exit_code, out=result.stdout)
            """,
            server=server,
        )
        # A manager's command is relayed by rxd, its input too.
        assert manager == {"exit": 5, "out": "from the manager"}
        # What the SDK did came through the door: rxd recorded it as proved by MUNGE.
        history = ok(rxd.rxctl("rxalice", "history", "--project", "door", "--json")).stdout
        origins = {e["action"]: e["origin"] for e in json.loads(history)["events"]}
        assert origins["project.created"] == "munge", origins


ROOT = Path(__file__).resolve().parent.parent
NOT_SOURCE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "results")
DAEMON_ONLY = ("aiohttp", "sqlite_utils", "spython")
# pip of the fresh venv reads no configuration (the machine's may name indexes): --no-index and
# the wheels made here are all it has.
OFFLINE_PIP = {
    "PIP_CONFIG_FILE": os.devnull,
    "PIP_NO_INDEX": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
}


def wheel_of_installed(name: str, out: Path) -> Path:
    """A wheel of a pure-Python distribution installed in this venv, from its own files (its
    RECORD names them): how a wheel reaches a venv with no index."""
    dist = importlib.metadata.distribution(name)
    info = next(f for f in dist.files or () if f.name == "WHEEL")
    tags = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
            if line.startswith("Tag:")]  # fmt: skip
    wheel = out / f"{dist.metadata['Name']}-{dist.version}-{tags[0]}.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for file in dist.files or ():
            path = Path(str(file.locate()))
            if file.parts[0] == ".." or "__pycache__" in file.parts or not path.is_file():
                continue
            if file.name in ("INSTALLER", "REQUESTED", "direct_url.json"):
                continue
            archive.write(path, str(file))
    return wheel


def test_the_client_side_alone_in_a_fresh_venv_uses_the_sdk(rxd: Rxd, tmp_path: Path) -> None:
    """`pip install rx-slurm` without the daemon extra, offline, into a new venv: no aiohttp,
    sqlite-utils or spython in it, and the SDK runs, execs and stops a container with it."""
    dist = tmp_path / "dist"
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    built = subprocess.run(
        [PYTHON, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", dist, source],
        capture_output=True,
        text=True,
        env={**os.environ, **OFFLINE_PIP},
        timeout=300,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheel_of_installed("click", dist)
    # Test users run it: a folder they may read, not pytest's (root's, 0700).
    home = Path(tempfile.mkdtemp(prefix="rx-sdk-venv-", dir="/tmp"))
    try:
        home.chmod(0o755)
        venv = home / "venv"
        subprocess.run(["/usr/bin/python3", "-m", "venv", venv], check=True, timeout=120)
        installed = subprocess.run(
            [venv / "bin" / "pip", "install", "--no-index", "--find-links", dist, "rx-slurm"],
            capture_output=True,
            text=True,
            env={**os.environ, **OFFLINE_PIP},
            timeout=300,
        )
        assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
        fresh = str(venv / "bin" / "python")
        seen = sdk(
            rxd,
            "rxalice",
            f"""
            import importlib.util, rxslurm.sdk
            box = Container("fresh", image=IMAGE, cpu=1, memory="256Mi")
            box.run(timeout=240)
            result = box.exec("sh", "-c", "echo from a fresh venv; exit 2")
            box.stop(grace_period_seconds=120)
            show(sdk=rxslurm.sdk.__file__, exit=result.exit_code, out=result.stdout,
                 state=box.status,
                 daemon_deps=[m for m in {DAEMON_ONLY!r} if importlib.util.find_spec(m)])
            """,
            python=fresh,
        )
    finally:
        shutil.rmtree(home)
    assert seen["sdk"].startswith(str(venv)), seen  # the fresh venv's copy, not the checkout
    assert seen["daemon_deps"] == []
    assert (seen["exit"], seen["out"], seen["state"]) == (2, "from a fresh venv\n", "stopped")
