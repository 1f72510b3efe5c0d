"""Quotas on the real cluster: leases, waiting for resources, the queue, reject, QOS mirroring.

Each test runs its own rxd (quotas live in its ledger) with real Linux users and real Slurm
jobs. The ledger is read directly only to sample leases while containers settle (read-only).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import tomllib
from typing import Any

import pytest

from tests.support.cli import ok, refused
from tests.support.cluster import run_as, wait_for
from tests.support.daemon import Rxd
from tests.support.lifecycle import (
    ADMIN,
    comment_of,
    gpu_leases,
    gpu_quota_rxd,
    lifecycle_rxd,
    make_project,
    rx_jobs,
    status,
    wait_state,
)
from tests.support.real_apptainer import BASE_IMAGE

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("container_runtime")]

IMAGE = str(BASE_IMAGE)
WAITING = "waiting_for_resources"


def admin(rxd: Rxd, *args: str) -> str:
    return ok(rxd.rxctl(ADMIN, "admin", *args)).stdout


def admin_json(rxd: Rxd, *args: str) -> Any:
    return json.loads(admin(rxd, *args, "--json"))


def enable_gpu_project(rxd: Rxd, name: str, user: str) -> None:
    make_project(rxd, name, "--gpus", "1", "--partition", "gpu", user=user)
    ok(rxd.rxctl(user, "enable", "--project", name))


def rxctl_all(rxd: Rxd, calls: list[tuple[str, ...]]) -> list[subprocess.CompletedProcess[str]]:
    """Run several rxctl calls at the same time (each `(user, *args)`)."""
    results: list[Any] = [None] * len(calls)

    def one(i: int) -> None:
        results[i] = rxd.rxctl(calls[i][0], *calls[i][1:])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# -- "Done when" ---------------------------------------------------------------------------------


def test_two_of_three_run_the_third_waits_and_starts_when_an_admin_stops_one() -> None:
    # A long interval: the third must start in the pass that sees the stop, not a later one.
    interval = 8.0
    with gpu_quota_rxd(2, reconcile_interval=str(interval)) as rxd:
        owners = {"qa": "rxalice", "qb": "rxbob", "qc": "rxcarol"}
        for name, user in owners.items():
            make_project(rxd, name, "--gpus", "1", "--partition", "gpu", user=user)
        for result in rxctl_all(rxd, [(u, "enable", "--project", p) for p, u in owners.items()]):
            ok(result)
        seen: dict[str, dict[str, Any]] = {}

        def two_run_one_waits() -> bool:
            seen.update({p: status(rxd, u, p) for p, u in owners.items()})
            over = [p for p, s in seen.items() if s["over_quota"]]
            running = [p for p, s in seen.items() if s["state"] == "running"]
            return len(over) == 1 and len(running) == 2

        wait_for(two_run_one_waits, timeout=90, what="two running and one over quota")
        (third,) = [p for p, s in seen.items() if s["over_quota"]]
        first, second = sorted(p for p in owners if p != third)
        waiting = seen[third]
        assert waiting["state"] == WAITING
        holders = {f"{first} (1), {second} (1)", f"{second} (1), {first} (1)"}
        prefix, _, rest = waiting["reason"].partition(" in use by ")
        assert prefix == "partition gpu: deployment quota 2 GPUs, 2", waiting
        assert rest.removesuffix("; this container needs 1") in holders, waiting
        assert waiting["job_id"] is None
        assert gpu_leases(rxd) == {first: 1, second: 1}

        # The admin's view: every container, with what it holds or asks.
        seen = {c["project"]: c for c in admin_json(rxd, "containers")["containers"]}
        assert set(seen) == set(owners)
        assert seen[third]["state"] == WAITING and seen[third]["lease"] is False
        assert seen[third]["job_id"] is None and seen[third]["partition"] == "gpu"
        assert seen[first]["state"] == "running" and seen[first]["lease"] is True
        assert seen[first]["linux_user"] == owners[first] and seen[first]["gpus"] == 1
        assert seen[first]["job_id"] and seen[first]["node"] in ("n1", "n2", "n3")
        assert isinstance(seen[first]["age_s"], int)
        text = admin(rxd, "containers")
        assert text.splitlines()[0].split() == [
            "PROJECT",
            "USER",
            "PARTITION",
            "STATE",
            "GPUS",
            "CPUS",
            "MEM",
            "MB",
            "JOB",
            "NODE",
            "AGE",
            "CPU",
            "BUSY",
            "MEM",
            "USED",
            "GPUS",
            "HELD",
            "REASON",
        ]
        (quota,) = admin_json(rxd, "quota", "list")["quotas"]
        assert quota["in_use"]["gpus"] == 2 and sorted(quota["holders"]) == [first, second]
        row = admin(rxd, "quota", "list").splitlines()[1].split()
        assert row[1:5] == ["gpu", "deployment", "-", "2/2"]

        # An admin stops a container that is not theirs; the audit log says who.
        refused_stop = rxd.rxctl("rxdave", "admin", "stop", "--project", first)
        assert refused(refused_stop) == (
            "Error: this needs an rx-slurm admin (root or the admin group)"
        )
        assert admin(rxd, "stop", first) == f"{first}: stopped by an admin; now stopping\n"
        wait_state(rxd, first, "stopped", user=owners[first], timeout=30)
        # The stop freed a lease in the pass that saw it: the third starts without anyone
        # doing anything, well within one reconcile interval.
        started = wait_state(
            rxd, third, "starting", "running", user=owners[third], timeout=interval
        )
        assert started["job_id"]
        wait_state(rxd, third, "running", user=owners[third])
        assert gpu_leases(rxd) == {second: 1, third: 1}
        events = admin_json(rxd, "audit", "--limit", "200")["events"]
        assert any(
            e["actor"] == ADMIN
            and e["target_id"] == f"rx-{first}"
            and e["detail"].get("to") == "stopping"
            and e["detail"].get("reason") == f"stopped by admin {ADMIN}"
            for e in events
        ), events


def test_twenty_concurrent_enables_never_hold_more_leases_than_the_quota() -> None:
    with gpu_quota_rxd(2) as rxd:
        names = [f"herd{i:02d}" for i in range(20)]
        script = (
            "import sys, threading\n"
            "from rxslurm.cli.client import Client\n"
            "sock, names = sys.argv[1], sys.argv[2:]\n"
            "for n in names:\n"
            "    Client(sock).post('/v1/projects', {'name': n, 'settings': {\n"
            f"        'image': '{IMAGE}', 'gpus': 1, 'partition': 'gpu'}}}})\n"
            "errors = []\n"
            "def enable(n):\n"
            "    try: Client(sock).post(f'/v1/projects/{n}/enable')\n"
            "    except Exception as e: errors.append(f'{n}: {e}')\n"
            "threads = [threading.Thread(target=enable, args=(n,)) for n in names]\n"
            "[t.start() for t in threads]; [t.join() for t in threads]\n"
            "print(len(errors), errors[:3])\n"
        )
        samples: list[tuple[int, int, int]] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                (count, gpus), *_ = rxd.ledger_rows(
                    "SELECT count(*), coalesce(sum(gpus), 0) FROM leases"
                )
                (holding,), *_ = rxd.ledger_rows(
                    "SELECT count(*) FROM containers WHERE state IN "
                    "('starting', 'running', 'stopping') OR (state = ? AND job_id IS NOT NULL)",
                    (WAITING,),
                )
                samples.append((count, gpus, holding))

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            result = ok(
                run_as(
                    "rxalice", [sys.executable, "-c", script, str(rxd.socket), *names], timeout=300
                )
            )
            assert result.stdout.startswith("0 "), result.stdout

            seen: dict = {}

            def settled() -> bool:
                seen.clear()
                seen.update(
                    rxd.ledger_rows("SELECT state, count(*) FROM containers GROUP BY state")
                )
                return seen == {"running": 2, WAITING: 18}

            try:
                wait_for(settled, timeout=120, what="2 running and 18 waiting")
            except TimeoutError as exc:
                reasons = rxd.ledger_rows("SELECT name, state, reason, job_id FROM containers")
                raise AssertionError(f"{exc}; states {seen}; {reasons}") from None
        finally:
            done.set()
            sampler.join()
        assert len(samples) > 20
        assert max(s[0] for s in samples) <= 2, "more than 2 leases at once"
        assert max(s[1] for s in samples) <= 2, "more than 2 GPUs leased at once"
        assert max(s[2] for s in samples) <= 2, "more than 2 containers holding a job"
        assert max(s[1] for s in samples) == 2
        comments = {comment_of(rxd, n) for n in names}
        jobs = [r for r in rx_jobs_all() if r[4] in comments and r[1] in ("RUNNING", "PENDING")]
        assert len(jobs) == 2, jobs
        waiting = [
            r[0]
            for r in rxd.ledger_rows("SELECT reason FROM containers WHERE state = ?", (WAITING,))
        ]
        assert all(w.startswith("partition gpu: ") for w in waiting), waiting

        # Clean up: stop all at once (the waiting ones have no job to end), then disable.
        for stopped in rxctl_all(rxd, [("rxalice", "stop", "--project", n) for n in names]):
            ok(stopped)
        wait_for(
            lambda: (
                rxd.ledger_rows("SELECT count(*) FROM containers WHERE state != 'stopped'")
                == [(0,)]
            ),
            timeout=90,
            what="every container to stop",
        )
        assert gpu_leases(rxd) == {}
        for disabled in rxctl_all(rxd, [("rxalice", "disable", "--project", n) for n in names]):
            ok(disabled)


def rx_jobs_all() -> list[list[str]]:
    out = subprocess.run(
        ["squeue", "-h", "--all", "-o", "%i|%T|%u|%b|%k|%N"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split("|") for line in out.splitlines()]


def test_leases_go_when_jobs_are_cancelled_or_fail_outside_rxd() -> None:
    with gpu_quota_rxd(1) as rxd:
        enable_gpu_project(rxd, "la", "rxalice")
        first = wait_state(rxd, "la", "running")
        enable_gpu_project(rxd, "lb", "rxalice")
        assert wait_state(rxd, "lb", WAITING)["reason"] == (
            "partition gpu: deployment quota 1 GPUs, 1 in use by la (1); this container needs 1"
        )
        # Cancelled outside rx-slurm: the lease goes and the waiting container gets it.
        ok(run_as("rxalice", ["scancel", str(first["job_id"])]))
        assert wait_state(rxd, "la", "stopped", timeout=30)["reason"] == (
            "cancelled outside rx-slurm"
        )
        second = wait_state(rxd, "lb", "running", timeout=60)
        assert gpu_leases(rxd) == {"lb": 1}
        # The job fails outside rx-slurm (its batch shell is killed): error, lease released.
        ok(run_as("rxalice", ["scancel", "--batch", "--signal=KILL", str(second["job_id"])]))
        failed = wait_state(rxd, "lb", "error", timeout=30)
        assert f"Slurm job {second['job_id']} ended FAILED" in failed["reason"]
        assert gpu_leases(rxd) == {}
        ok(rxd.rxctl("rxalice", "start", "--project", "la"))
        wait_state(rxd, "la", "running")
        assert gpu_leases(rxd) == {"la": 1}


def test_reject_policy_refuses_in_one_line_with_no_job_and_no_lease() -> None:
    with gpu_quota_rxd(1, '[quotas]\npolicy = "reject"\n') as rxd:
        enable_gpu_project(rxd, "ra", "rxalice")
        wait_state(rxd, "ra", "running")
        make_project(rxd, "rb", "--gpus", "1", "--partition", "gpu", user="rxbob")
        expected = (
            "Error: over quota: partition gpu: deployment quota 1 GPUs, 1 in use by ra (1); "
            "this container needs 1"
        )
        assert refused(rxd.rxctl("rxbob", "enable", "--project", "rb")) == expected
        assert refused(rxd.rxctl("rxbob", "start", "--project", "rb")) == expected
        rb = wait_state(rxd, "rb", "stopped", user="rxbob")
        assert rb["job_id"] is None and rb["over_quota"] is False
        assert rx_jobs(comment_of(rxd, "rb")) == []
        assert gpu_leases(rxd) == {"ra": 1}
        ok(rxd.rxctl("rxalice", "stop", "--project", "ra"))
        wait_state(rxd, "ra", "stopped")
        # Nothing was queued: rb stays stopped until someone starts it.
        assert status(rxd, "rxbob", "rb")["state"] == "stopped"
        ok(rxd.rxctl("rxbob", "start", "--project", "rb"))
        wait_state(rxd, "rb", "running", user="rxbob")


# -- QOS mirroring -------------------------------------------------------------------------------


def assocs_of(user: str) -> list[str]:
    out = subprocess.run(
        [
            "sacctmgr",
            "-P",
            "-n",
            "show",
            "assoc",
            "where",
            f"users={user}",
            "format=account,user,partition,qos,defaultqos",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return sorted(out.split())


def squeue_field(job: str, field: str) -> str:
    out = subprocess.run(
        ["squeue", "-h", "-j", job, "-o", field], capture_output=True, text=True, timeout=30
    )
    return out.stdout.strip()


def test_mirrored_qos_makes_plain_sbatch_over_the_user_limit_pend() -> None:
    before = assocs_of("rxcarol")
    jobs: list[str] = []
    removed = qos = ""
    with lifecycle_rxd() as rxd:
        qos = f"{rxd_tag(rxd)}-gpu-user-rxcarol"
        try:
            text = admin(
                rxd,
                "quota",
                "set",
                "--partition",
                "gpu",
                "--user",
                "rxcarol",
                "--gpus",
                "2",
                "--mirror",
            )
            lines = text.splitlines()
            assert lines[0].startswith("Quota ") and lines[0].endswith(
                "on partition gpu for user rxcarol: 2 GPUs."
            )
            assert lines[1].endswith(
                f"Slurm QOS {qos} (MaxTRESPerUser=gres/gpu=2), default QOS of rxcarol's "
                "associations on partition gpu (accounts rxtest)"
            ), text
            # Plain sbatch work, outside rx-slurm. Nodes have 2 GPUs each, so 3 GPUs are asked
            # with --gpus (any nodes), which Slurm could run if not for the QOS.
            for gpus in ("3", "2"):
                jobs.append(
                    ok(
                        run_as(
                            "rxcarol",
                            [
                                "sbatch",
                                "--parsable",
                                "-p",
                                "gpu",
                                f"--gpus={gpus}",
                                "-o",
                                "/dev/null",
                                "--wrap",
                                "sleep 300",
                            ],
                        )
                    ).stdout.strip()
                )
            over, within = jobs
            wait_for(
                lambda: squeue_field(over, "%T|%r") == "PENDING|QOSMaxGRESPerUser",
                timeout=30,
                what="the 3-GPU job to pend on the QOS",
            )
            assert squeue_field(over, "%q") == qos
            assert squeue_field(within, "%r") != "QOSMaxGRESPerUser"
            (quota,) = admin_json(rxd, "quota", "list")["quotas"]
            assert quota["mirror_qos"] is True
            # rxd's own lease fits (plain jobs are not leases), but Slurm holds the container
            # back: its status says why in the same words as rxd's own quotas would.
            wait_for(
                lambda: squeue_field(within, "%T") == "RUNNING",
                timeout=60,
                what="the 2-GPU job to run",
            )
            enable_gpu_project(rxd, "mq", "rxcarol")
            pending = wait_state(rxd, "mq", WAITING, user="rxcarol", timeout=30)
            jobs.append(str(pending["job_id"]))
            # Slurm may first say "Priority" (the 3-GPU job is older) before its scheduler
            # names the QOS limit.
            wait_for(
                lambda: (
                    status(rxd, "rxcarol", "mq")["reason"]
                    == "your QOS limit on GPUs is reached (Slurm: QOSMaxGRESPerUser)"
                ),
                timeout=60,
                what="mq to wait on the QOS",
            )
            pending = status(rxd, "rxcarol", "mq")
            assert pending["state"] == WAITING and pending["over_quota"] is False
            assert gpu_leases(rxd) == {"mq": 1}
            ok(rxd.rxctl("rxcarol", "stop", "--project", "mq"))
            wait_state(rxd, "mq", "stopped", user="rxcarol")
        finally:
            subprocess.run(["scancel", *jobs], check=False)
            rxd.cancel_own_jobs()
            # A partition association can go only once its jobs have left.
            wait_for(
                lambda: all(squeue_field(j, "%T") in ("", "COMPLETED", "CANCELLED") for j in jobs),
                timeout=60,
                what="rxcarol's jobs to leave",
            )
            quotas = admin_json(rxd, "quota", "list")["quotas"]
            removed = admin(rxd, "quota", "rm", str(quotas[0]["id"])) if quotas else ""
    try:
        assert f"removed Slurm QOS {qos} (restored the associations of rxcarol)" in removed
        assert "kept association" not in removed
        assert assocs_of("rxcarol") == before
        listed = subprocess.run(
            ["sacctmgr", "-P", "-n", "show", "qos", "format=name"], capture_output=True, text=True
        ).stdout.split()
        assert qos not in listed
    finally:
        restore_assocs("rxcarol", before)
        if qos:
            subprocess.run(["sacctmgr", "-i", "delete", "qos", qos], capture_output=True)


def restore_assocs(user: str, before: list[str]) -> None:
    """Delete partition associations a failed test left for `user` (shared cluster)."""
    for line in assocs_of(user):
        account, _, partition = line.split("|")[:3]
        if line not in before and partition:
            argv = ["sacctmgr", "-i", "delete", "user", "where", f"name={user}"]
            argv += [f"account={account}", f"partition={partition}"]
            wait_for(
                lambda argv=argv: (
                    subprocess.run(argv, capture_output=True, timeout=60).returncode == 0
                ),
                timeout=60,
                what=f"{user}'s association on {partition} to go",
            )


def rxd_tag(rxd: Rxd) -> str:
    return tomllib.loads(rxd.config.read_text())["slurm"]["tag"].lower()


# -- the commands' errors ------------------------------------------------------------------------


def test_quota_commands_refuse_in_one_line() -> None:
    with lifecycle_rxd() as rxd:
        assert refused(
            rxd.rxctl(ADMIN, "admin", "quota", "set", "--partition", "nope", "--gpus", "1")
        ) == ("Error: unknown partition 'nope'; Slurm has: cpu, gpu")
        assert refused(rxd.rxctl(ADMIN, "admin", "quota", "set", "--partition", "gpu")) == (
            "Error: a quota needs at least one limit (gpus, cpus, mem_mb or containers)"
        )
        both = rxd.rxctl(
            ADMIN,
            "admin",
            "quota",
            "set",
            "--partition",
            "gpu",
            "--project",
            "p",
            "--user",
            "u",
            "--gpus",
            "1",
        )
        assert refused(both) == "Error: give at most one of --project and --user"
        assert refused(rxd.rxctl("rxalice", "admin", "quota", "list")) == (
            "Error: this needs an rx-slurm admin (root or the admin group)"
        )
        assert refused(rxd.rxctl(ADMIN, "admin", "quota", "rm", "99")) == (
            "Error: no quota with id 99"
        )
        assert admin(rxd, "quota", "list") == (
            "no quotas; set one with: rxctl admin quota set --partition P --gpus N\n"
        )
        out = admin(
            rxd,
            "quota",
            "set",
            "--partition",
            "gpu",
            "--project",
            "alpha",
            "--gpus",
            "2",
            "--mirror",
        )
        assert out.splitlines()[1].endswith(
            ": not mirrored into Slurm: a project quota has no Slurm equivalent (Slurm knows "
            "users and accounts, not rx-slurm projects); rxd enforces it for containers only"
        )
        out = admin(
            rxd, "quota", "set", "--partition", "cpu", "--user", "rxbob", "--containers", "1"
        )
        assert out.endswith("on partition cpu for user rxbob: 1 running containers.\n")
        quotas = admin_json(rxd, "quota", "list")["quotas"]
        assert [(q["partition"], q["scope"], q["subject"]) for q in quotas] == [
            ("cpu", "user", "rxbob"),
            ("gpu", "project", "alpha"),
        ]
        assert admin(rxd, "containers") == "no container is starting, running or waiting\n"
        assert refused(rxd.rxctl(ADMIN, "admin", "stop", "--project", "ghost")) == (
            "Error: no project named 'ghost' (or you are not a member)"
        )
