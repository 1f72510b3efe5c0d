"""Node Epilog program: stops the Apptainer instances a job left running on its node.

An Apptainer instance daemonizes (its parent becomes PID 1), so on a site that tracks a job's
processes by parentage (proctrack/linuxproc, proctrack/pgid) it outlives the job whenever the
holder's own trap does not run: SIGKILL, a time limit past KillWait, a lost node. slurmd runs this
program as root on the compute node after every job (slurm.conf `Epilog=`), with SLURM_JOB_ID and
SLURM_JOB_UID in its environment.

Which processes: those of the job's uid (the kernel's, from /proc/PID/status) that carry the job's
SLURM_JOB_ID and are an Apptainer instance, plus their descendants of that same uid. Apptainer's
starter replaces its own environment with its engine configuration (ENGINE_CONFIG1..N, JSON), so
for the starter the job id and the instance flag are read from the environment it passes to the
container. Names, command lines and paths are never consulted: a user controls those. A user does
control their own environment too, but only their own processes can be matched, so a forged job id
harms no one else; root's processes are never touched.

How: a pidfd for each (so a reused pid is never signalled), SIGTERM, then SIGKILL to whatever is
left after the grace period. It always exits 0 quickly and appends one line per job it acted on to
its log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
LOG = Path("/var/log/slurm/rxslurm-epilog.log")
GRACE_S = 5.0
# Environments are read this far only (Apptainer's engine configuration is a few KiB).
ENVIRON_CAP = 1 << 20
MAX_CONFIG_CHUNKS = 64
INSTANCE_VARS = (b"APPTAINER_INSTANCE", b"SINGULARITY_INSTANCE")


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    uid: int
    start: int  # start time in clock ticks since boot: with the pid, names one process for good
    job: str | None
    instance: bool


def parse_environ(raw: bytes) -> dict[bytes, bytes]:
    env: dict[bytes, bytes] = {}
    for entry in raw.split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep and key and key not in env:
            env[key] = value
    return env


def _engine_env(env: Mapping[bytes, bytes]) -> tuple[dict[bytes, bytes], bool] | None:
    """The container environment and instance flag in Apptainer's starter configuration."""
    chunks = env.get(b"ENGINE_CONFIG_CHUNKS", b"")
    if not chunks.isdigit() or not 0 < int(chunks) <= MAX_CONFIG_CHUNKS:
        return None
    text = b"".join(env.get(b"ENGINE_CONFIG%d" % n, b"") for n in range(1, int(chunks) + 1))
    try:
        config = json.loads(text)
        inner = config["engineConfig"]
        entries = inner["ociConfig"]["process"]["env"]
        instance = inner["jsonConfig"].get("instance") is True
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(entries, list):
        return None
    joined = b"\0".join(e.encode("utf-8", "replace") for e in entries if isinstance(e, str))
    return parse_environ(joined), instance


def job_and_instance(raw: bytes) -> tuple[str | None, bool]:
    """(the SLURM_JOB_ID a process carries, whether it is part of an Apptainer instance)."""
    env = parse_environ(raw)
    job = env.get(b"SLURM_JOB_ID")
    instance = any(name in env for name in INSTANCE_VARS)
    if job is None:
        engine = _engine_env(env)
        if engine is not None:
            inner, instance = engine
            job = inner.get(b"SLURM_JOB_ID")
    if job is None or not job.isdigit() or not job.isascii():
        return None, instance
    return job.decode(), instance


def _stat_fields(text: str) -> tuple[int, int] | None:
    """(ppid, start time) from /proc/PID/stat; the name in parentheses may hold anything."""
    rest = text.rpartition(")")[2].split()
    try:
        return int(rest[1]), int(rest[19])
    except (IndexError, ValueError):
        return None


def _real_uid(status: str) -> int | None:
    for line in status.splitlines():
        if line.startswith("Uid:"):
            fields = line.split()
            return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
    return None


def read_proc(proc: Path, pid: int) -> Proc | None:
    """One process, or None when it is gone or unreadable (it may exit while we read)."""
    base = proc / str(pid)
    try:
        stat = _stat_fields((base / "stat").read_text(errors="replace"))
        uid = _real_uid((base / "status").read_text(errors="replace"))
        with open(base / "environ", "rb") as f:
            raw = f.read(ENVIRON_CAP)
    except OSError:
        return None
    if stat is None or uid is None:
        return None
    job, instance = job_and_instance(raw)
    return Proc(pid=pid, ppid=stat[0], uid=uid, start=stat[1], job=job, instance=instance)


def scan(proc: Path = PROC) -> list[Proc]:
    try:
        names = [e.name for e in os.scandir(proc) if e.name.isdigit()]
    except OSError:
        return []
    found = (read_proc(proc, int(name)) for name in names)
    return [p for p in found if p is not None]


def select_leftovers(procs: Iterable[Proc], job_id: str, uid: int) -> list[Proc]:
    """The job's instance processes of that uid, and their descendants of that uid."""
    procs = [p for p in procs if p.pid > 1 and p.pid != os.getpid()]
    children: dict[int, list[Proc]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p)
    chosen = {p.pid: p for p in procs if p.uid == uid and p.job == job_id and p.instance}
    todo = list(chosen.values())
    while todo:
        for child in children.get(todo.pop().pid, []):
            if child.uid == uid and child.pid not in chosen:
                chosen[child.pid] = child
                todo.append(child)
    return sorted(chosen.values(), key=lambda p: p.pid)


def _pidfd(proc: Path, p: Proc) -> int | None:
    """A pidfd for p, only if the pid still names the process that was scanned."""
    try:
        fd = os.pidfd_open(p.pid)
    except OSError:
        return None
    again = read_proc(proc, p.pid)
    if again is None or (again.start, again.uid) != (p.start, p.uid):
        os.close(fd)
        return None
    return fd


def _signal_all(fds: Mapping[int, int], signum: int) -> None:
    for fd in fds.values():
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(fd, signum)


def _wait_exit(fds: dict[int, int], deadline: float) -> None:
    """Drop from fds every process that exits before the deadline (a pidfd turns readable)."""
    while fds:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        poller = select.poll()
        for fd in fds.values():
            poller.register(fd, select.POLLIN)
        for fd, _ in poller.poll(left * 1000):
            pid = next(pid for pid, f in fds.items() if f == fd)
            os.close(fds.pop(pid))


def stop(procs: Iterable[Proc], grace_s: float, proc: Path = PROC) -> tuple[list[int], list[int]]:
    """SIGTERM, then SIGKILL after grace_s; returns (pids signalled, pids that needed SIGKILL)."""
    fds = {p.pid: fd for p in procs if (fd := _pidfd(proc, p)) is not None}
    signalled = sorted(fds)
    _signal_all(fds, signal.SIGTERM)
    _wait_exit(fds, time.monotonic() + grace_s)
    killed = sorted(fds)
    _signal_all(fds, signal.SIGKILL)
    _wait_exit(fds, time.monotonic() + 1.0)
    for fd in fds.values():
        os.close(fd)
    return signalled, killed


def _log(path: Path, line: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    try:
        with open(path, "a") as f:
            f.write(f"{stamp} {line}\n")
    except OSError:
        print(line, file=sys.stderr)


def run(env: Mapping[str, str], proc: Path, grace_s: float, log: Path) -> None:
    job_id, uid = env.get("SLURM_JOB_ID", ""), env.get("SLURM_JOB_UID", "")
    if not (job_id.isascii() and job_id.isdigit() and uid.isascii() and uid.isdigit()):
        return
    if int(uid) == 0:  # root's processes are never ours to stop
        return
    leftovers = select_leftovers(scan(proc), job_id, int(uid))
    if not leftovers:
        return
    signalled, killed = stop(leftovers, grace_s, proc)
    _log(
        log,
        f"job {job_id} uid {uid}: {len(leftovers)} instance process(es) outlived the job; "
        f"SIGTERM {signalled or 'none'}; SIGKILL {killed or 'none'}",
    )


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rxslurm-node-epilog", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--grace", type=float, default=GRACE_S, help="seconds between SIGTERM and SIGKILL"
    )
    parser.add_argument("--log", type=Path, default=LOG, help="file that records what was stopped")
    parser.add_argument("--proc", type=Path, default=PROC, help=argparse.SUPPRESS)
    log = LOG
    try:
        args = parser.parse_args(argv)
        log = args.log
        run(os.environ if env is None else env, args.proc, max(0.0, args.grace), log)
    except SystemExit:
        pass
    except Exception as err:  # noqa: BLE001 - an Epilog that fails drains the node; never do that
        _log(log, f"rxslurm-node-epilog: error: {err!r}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
