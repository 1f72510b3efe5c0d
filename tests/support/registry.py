"""Pull tests' helpers: the loopback registry tests/cluster/registry.sh runs, a registry that
stalls, and an rxd that pulls with the real Apptainer from them."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Rxd, running_rxd
from tests.support.lifecycle import lifecycle_config

REGISTRY = "127.0.0.1:5055"
SMALL = f"docker://{REGISTRY}/rxslurm/busybox:1"
BIG = f"docker://{REGISTRY}/rxslurm/big:1"  # a 24 MiB layer of random bytes
APPTAINER = "/usr/bin/apptainer"
PULL_USER = "rxpull"


def require_registry() -> None:
    try:
        with urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=5):  # noqa: S310
            return
    except OSError as exc:
        pytest.fail(
            f"no test registry on {REGISTRY} ({exc}): run tests/cluster/registry.sh as root",
            pytrace=False,
        )


def pull_config(root: Path, **pulls: str) -> str:
    """``[pulls]`` for a test daemon: its own work folder, plain HTTP to loopback registries,
    and no wait in enable (a test sees "pulling" every time), unless the test says otherwise."""
    settings = {
        "work_dir": f'"{root}/pulls"',
        "plain_http": f'["{REGISTRY}"]',
        "enable_wait_s": "0",
        **pulls,
    }
    lines = "".join(f"{k} = {v}\n" for k, v in settings.items())
    return f'[apptainer]\nbinary = "{APPTAINER}"\n[pulls]\n{lines}'


@contextlib.contextmanager
def pulling_rxd(**pulls: str) -> Iterator[Rxd]:
    """A running rxd set up for pulls, shut down afterwards (see running_rxd)."""
    require_registry()
    with running_rxd(lambda root: lifecycle_config(root) + pull_config(root, **pulls)) as daemon:
        yield daemon


@contextlib.contextmanager
def stalling_registry() -> Iterator[str]:
    """``127.0.0.1:PORT`` of a server that accepts connections and never answers."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.2)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        done.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        server.close()


def pull_events(rxd: Rxd) -> list[dict]:
    """The audit trail's image.pull events, oldest first."""
    rows = rxd.ledger_rows(
        "SELECT actor, target_id, detail FROM events WHERE action = 'image.pull' ORDER BY id"
    )
    return [{"actor": a, "image": t, **json.loads(d)} for a, t, d in rows]


def leases(rxd: Rxd) -> int:
    """How many quota leases are held."""
    ((count,),) = rxd.ledger_rows("SELECT COUNT(*) FROM leases")
    return int(count)


def processes_mentioning(text: str) -> list[tuple[int, int, str]]:
    """(pid, uid, argv) of live processes whose command line contains ``text``."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            uid = proc.stat().st_uid
        except OSError:
            continue
        if text in argv:
            found.append((int(proc.name), uid, argv))
    return found


def skopeo(*args: str) -> str:
    """skopeo against the loopback registry (plain HTTP); its output."""
    result = subprocess.run(  # noqa: S603 - fixed argv
        ["skopeo", *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def registry_digest(name: str) -> str:
    """The manifest digest the registry serves for ``name`` (``repo:tag``)."""
    raw = skopeo("inspect", "--tls-verify=false", f"docker://{REGISTRY}/{name}")
    return str(json.loads(raw)["Digest"])


def copy_tag(source: str, dest: str) -> None:
    """Point ``dest`` (``repo:tag``) at ``source``'s very manifest: the same digest."""
    skopeo(
        "copy",
        "--quiet",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        f"docker://{REGISTRY}/{source}",
        f"docker://{REGISTRY}/{dest}",
    )


def push_marked(dest: str, marker: str, work: Path) -> None:
    """Push ``dest``: the busybox image plus a file ``/<marker>`` (a new layer: a new digest)."""
    layout = work / "oci"
    skopeo("copy", "--quiet", "--src-tls-verify=false", SMALL, f"oci:{layout}:base")
    tree = work / "extra"
    tree.mkdir()
    (tree / marker).write_text(f"{marker}\n")
    insert = ["umoci", "insert", "--image", f"{layout}:base", str(tree / marker), f"/{marker}"]
    subprocess.run(insert, check=True, capture_output=True, timeout=120)  # noqa: S603
    skopeo(
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        f"oci:{layout}:base",
        f"docker://{REGISTRY}/{dest}",
    )
