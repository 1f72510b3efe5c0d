"""A fleet at scale: thousands of held Slurm jobs, and a ledger of containers that own them.

The jobs are real (`sbatch --hold`, so they never run), named `rx-bench-<i>` with the comment
`<tag>:container=<i>` and submitted as the bench user through rx-slurm's own adapter. The
ledger is written with SQL, which takes a second where the API would take an hour: one project,
member and container per job (a container in STARTING whose job is recorded, holding its quota
lease), plus resting containers up to the ledger's size. The held jobs are always cancelled at
the end (the cluster is shared; MaxJobCount counts them until MinJobAge after they end).
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import USER, BenchError
from bench.rig import bench_config, suffix
from tests.support.daemon import Rxd, new_rxd

HELD_SCRIPT = "#!/bin/sh\n# rx-slurm benchmark: submitted held, never runs\ntrue\n"
CANCEL_CHUNK = 1000


@dataclass
class HeldFleet:
    tag: str
    size: int
    workers: int = 4
    job_ids: list[int] = field(default_factory=list)  # job_ids[i] holds container i + 1
    submit_s: float = 0.0

    def submit(self) -> None:
        from rxslurm.slurm.adapter import JobSpec, SlurmCli
        from rxslurm.slurm.runas import RunAs

        slurm = SlurmCli(timeout=120)
        who = RunAs.for_user(USER)

        def one(i: int) -> int:
            spec = JobSpec(
                name=f"rx-bench-{i}",
                comment=f"{self.tag}:container={i}",
                hold=True,
                workdir="/tmp",
                output="/dev/null",
            )
            return slurm.submit(HELD_SCRIPT, spec, who)

        failed: list[BaseException] = []

        def guarded(i: int) -> int | None:
            # After one refusal (e.g. MaxJobCount), the rest are not tried.
            if failed:
                return None
            try:
                return one(i)
            except Exception as exc:
                failed.append(exc)
                return None

        started = time.perf_counter()
        with ThreadPoolExecutor(self.workers) as pool:
            results = list(pool.map(guarded, range(1, self.size + 1)))
        self.submit_s = time.perf_counter() - started
        self.job_ids = [j for j in results if j is not None]
        if failed:
            raise BenchError(f"submitted {len(self.job_ids)} of {self.size} held jobs: {failed[0]}")

    def cancel(self) -> None:
        """Cancel every job submitted, then any job left with this fleet's tag."""
        ids = [str(j) for j in self.job_ids]
        for start in range(0, len(ids), CANCEL_CHUNK):
            subprocess.run(
                ["scancel", *ids[start : start + CANCEL_CHUNK]],
                capture_output=True,
                timeout=300,
                check=False,
            )
        listed = subprocess.run(
            ["squeue", "-h", "--all", "-t", "PENDING,RUNNING", "-o", "%i|%k"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        left = [
            line.split("|", 1)[0]
            for line in listed.stdout.splitlines()
            if line.partition("|")[2].startswith(f"{self.tag}:container=")
        ]
        for start in range(0, len(left), CANCEL_CHUNK):
            subprocess.run(
                ["scancel", *left[start : start + CANCEL_CHUNK]],
                capture_output=True,
                timeout=300,
                check=False,
            )


@contextmanager
def held_fleet(size: int, workers: int = 4) -> Iterator[HeldFleet]:
    fleet = HeldFleet(tag=f"bench-{suffix()}", size=size, workers=workers)
    try:
        fleet.submit()
        yield fleet
    finally:
        fleet.cancel()


def big_ledger(fleet: HeldFleet, containers: int) -> Rxd:
    """A migrated bench rxd (not started) whose ledger holds `containers` containers; the first
    len(fleet.job_ids) are STARTING with their held job recorded, the rest are STOPPED."""
    rxd = new_rxd(lambda root: bench_config(root, fleet.tag))
    fill_ledger(rxd.ledger, fleet.job_ids, containers, rxd.root)
    return rxd


def fill_ledger(path: Path, job_ids: list[int], containers: int, root: Path) -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    active = len(job_ids)
    if containers < active:
        raise ValueError("the ledger needs a container for every job")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO platform_users (id, display_name, created_at) VALUES (?, '', ?)",
            [USER, now],
        )
        conn.execute(
            "INSERT INTO bindings (platform_user_id, uid, username, bound_at, bound_by) "
            "VALUES (?, 2001, ?, ?, 'bench')",
            [USER, USER, now],
        )
        ids = range(1, containers + 1)
        conn.executemany(
            "INSERT INTO projects (id, name, created_at, created_by, image, workspace, "
            "run_as, run_as_user, settings_changed_at) "
            "VALUES (?, ?, ?, ?, '/images/bench.sif', ?, 'bound', ?, ?)",
            ((i, f"bench-{i}", now, USER, f"{root}/workspaces/bench-{i}", USER, now) for i in ids),
        )
        conn.executemany(
            "INSERT INTO members (project_id, platform_user_id, role, added_at, added_by) "
            "VALUES (?, ?, 'owner', ?, ?)",
            ((i, USER, now, USER) for i in ids),
        )
        conn.executemany(
            "INSERT INTO containers (id, project_id, name, state, reason, desired, image, "
            "overlay_path, runtime_user, runtime_uid, created_at, updated_at, job_id, state_dir) "
            "VALUES (?, ?, ?, ?, ?, ?, '/images/bench.sif', ?, ?, 2001, ?, ?, ?, ?)",
            (
                (
                    i,
                    i,
                    f"rx-bench-{i}",
                    "starting" if i <= active else "stopped",
                    "submitting" if i <= active else "stopped by user",
                    "running" if i <= active else "stopped",
                    f"{root}/containers/rx-bench-{i}/overlay.img",
                    USER,
                    now,
                    now,
                    job_ids[i - 1] if i <= active else None,
                    f"{root}/containers/rx-bench-{i}",
                )
                for i in ids
            ),
        )
        conn.executemany(
            "INSERT INTO jobs (job_id, container_id, state, submitted_at) "
            "VALUES (?, ?, 'PENDING', ?)",
            ((job_id, i, now) for i, job_id in enumerate(job_ids, start=1)),
        )
        if "leases" in tables:
            conn.executemany(
                "INSERT INTO leases (container_id, partition, project, linux_user, gpus, cpus, "
                "mem_mb, acquired_at) VALUES (?, 'cpu', ?, ?, 0, 1, 1000, ?)",
                ((i, f"bench-{i}", USER, now) for i in range(1, active + 1)),
            )
        conn.execute("COMMIT")
    finally:
        conn.close()
