"""Compute nodes see nothing of rxd but its network door, as on a real cluster.

tests/cluster/setup.sh starts each `slurmd -N nX` in a mount namespace of its own in which rxd's
socket and ledger folders (a service host's defaults, and PRIVATE_ROOT where every test rxd keeps
its sockets and ledger) are empty tmpfs mounts; shared storage and munged's socket are the
host's. So a batch job, on any node, cannot see the socket rxd's host sees, and its rxctl works
only through the door. slurmctld stays on rxd's host, but its hooks reach rxd through the door
too when that is what /etc/rxslurm/hook-sockets lists, as on a site whose controller is another
host.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import ok
from tests.support.cluster import run_as, wait_for
from tests.support.daemon import PRIVATE_ROOT, RXCTL, Rxd, free_port, running_rxd, test_root
from tests.support.hook_targets import hooks_poke
from tests.support.login_node import DEFAULT_HIDDEN
from tests.support.munge import CLUSTER_SOCKET, needs_munged

SETUP = Path(__file__).resolve().parent / "cluster" / "setup.sh"
NODES = ("n1", "n2", "n3")
ALICE_UID = 2001


def node_hidden_folders() -> list[str]:
    """The folders setup.sh hides from every slurmd (its NODE_HIDDEN, variables expanded)."""
    text = SETUP.read_text()
    words = re.search(r"^readonly NODE_HIDDEN=\((.*)\)$", text, re.M)
    assert words, "setup.sh has no NODE_HIDDEN"
    values = dict(re.findall(r"^readonly (\w+)=(\S+)$", text, re.M))
    return [
        re.sub(r"\$(\w+)", lambda m: values[m.group(1)], w.strip('"'))
        for w in words.group(1).split()
    ]


def test_nodes_hide_what_login_nodes_hide_and_every_test_rxds_folder() -> None:
    hidden = node_hidden_folders()
    assert str(PRIVATE_ROOT) in hidden
    assert set(DEFAULT_HIDDEN) == set(hidden)


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    port = free_port()
    with running_rxd(f'listen = "127.0.0.1:{port}"\n', bind=("rxalice",)) as daemon:
        yield daemon


def server(rxd: Rxd) -> str:
    import tomllib

    return str(tomllib.loads(rxd.config.read_text())["daemon"]["listen"])


# What the job prints: each probe on a line of its own, rxctl's answers last.
PROBE = """\
test -S {socket} && echo socket-seen
test -e {ledger} && echo ledger-seen
echo "private: $(ls -A {private} | wc -l)"
test -S {munge} && echo munge-socket
test -d {shared} && echo shared-folder
{rxctl} --socket {socket} whoami 2>&1; echo "socket-rc: $?"
{rxctl} whoami --json
"""


def run_job_on(rxd: Rxd, node: str, folder: Path) -> str:
    script = PROBE.format(
        socket=rxd.socket,
        ledger=rxd.ledger,
        private=PRIVATE_ROOT,
        munge=CLUSTER_SOCKET,
        shared=rxd.root,
        rxctl=RXCTL,
    )
    out = folder / f"{node}.out"
    argv = ["sbatch", "--parsable", "-w", node, "-n", "1", "-c", "1", "--mem=100", "-t", "5"]
    submitted = ok(
        run_as(
            "rxalice",
            [*argv, "-o", str(out), "--wrap", script],
            env={"RXSLURM_SERVER": server(rxd)},
        )
    )
    job = submitted.stdout.strip().split(";")[0]
    try:

        def ended() -> str | None:
            state = subprocess.run(
                ["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30
            ).stdout.strip()
            return None if state else out.read_text() if out.exists() else None

        return wait_for(ended, timeout=300, interval=0.5, what=f"job {job} on {node} to end")
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)


@pytest.mark.cluster
@needs_munged
@pytest.mark.parametrize("node", NODES)
def test_a_job_on_each_node_sees_no_rxd_but_its_door(rxd: Rxd, node: str) -> None:
    # rxd's host sees both; the node neither.
    assert rxd.socket.is_socket() and rxd.ledger.is_file()
    folder = test_root()
    pw = pwd.getpwnam("rxalice")
    os.chown(folder, pw.pw_uid, pw.pw_gid)
    try:
        text = run_job_on(rxd, node, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    lines = text.splitlines()
    stale = f"{node}'s slurmd does not hide rxd's folders: run tests/cluster/setup.sh\n{text}"
    assert "socket-seen" not in lines and "ledger-seen" not in lines, stale
    assert "private: 0" in lines, stale
    # What a node shares with rxd's host is there.
    assert "munge-socket" in lines and "shared-folder" in lines, text
    assert f"Error: rxd is not running (nothing listens on {rxd.socket})" in lines, text
    assert "socket-rc: 1" in lines, text
    me = json.loads(text[text.index("{") :])  # rxctl whoami --json, last
    assert (me["user"], me["uid"], me["door"]) == ("rxalice", ALICE_UID, "munge"), text


def hook_pokes(rxd: Rxd) -> int:
    """Pokes of the hook route rxd answered for SlurmUser (root on the test cluster)."""
    return sum(
        1
        for line in rxd.log_text().splitlines()
        if '"path": "/v1/hooks/job"' in line and '"status": 202' in line and '"who": "root"' in line
    )


@pytest.mark.cluster
@needs_munged
def test_slurmctlds_hooks_reach_rxd_through_the_door(rxd: Rxd) -> None:
    # Only the door is listed for this rxd (not its socket): every poke it gets came over TCP,
    # with a MUNGE credential of SlurmUser, from the real PrologSlurmctld/EpilogSlurmctld.
    before = hook_pokes(rxd)
    name = f"rx-hosts-{rxd.root.name}"  # the hooks look at rx-* jobs only
    with hooks_poke(server(rxd)):
        submitted = ok(
            run_as(
                "rxalice",
                ["sbatch", "--parsable", "-J", name, "-n", "1", "-c", "1", "--mem=100", "-t", "2"]
                + ["-o", "/dev/null", "--wrap", "true"],
            )
        )
        job = submitted.stdout.strip().split(";")[0]
        try:
            # A start and an end: the end's poke comes once the job is done.
            wait_for(
                lambda: hook_pokes(rxd) >= before + 2,
                timeout=300,
                interval=0.5,
                what=f"slurmctld's hooks to poke rxd for job {job}",
            )
        finally:
            subprocess.run(["scancel", job], capture_output=True, timeout=30)
