"""The local test cluster is what the shared conventions promise, and its helpers behave."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.cluster import SETUP, Cluster, run_as, run_setup, slurmctld_up, wait_for

# States in which a node takes jobs; other helpers' jobs may keep a node mixed or allocated.
SCHEDULABLE = {"idle", "mixed", "allocated", "completing"}
# The harness checks the cluster itself (every node's state, both GPUs of one node, setup.sh doing
# nothing): with nothing of the run beside it (tests/support/parallel.py).
WHOLE_CLUSTER = pytest.mark.alone(reason="checks the cluster itself: nodes, setup.sh, both GPUs")


def slurm(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, f"{argv}: {result.stderr}"
    return result.stdout


def table(*argv: str) -> list[list[str]]:
    return [line.split("|") for line in slurm(*argv).splitlines() if line]


@pytest.mark.cluster
@WHOLE_CLUSTER
def test_three_nodes_take_jobs_with_two_a100_gpus_each(slurm_cluster: Cluster) -> None:
    nodes = {
        name: (state, gres)
        for name, state, gres in table("sinfo", "-h", "-N", "-p", "cpu", "-o", "%N|%T|%G")
    }
    assert sorted(nodes) == list(slurm_cluster.nodes)
    for name, (state, gres) in nodes.items():
        # A "*" suffix means not responding; drained/down nodes are not in SCHEDULABLE.
        assert state in SCHEDULABLE, f"{name} is {state}"
        assert gres == "gpu:a100:2", name


@pytest.mark.cluster
@WHOLE_CLUSTER
def test_partitions_cpu_is_default_and_gpu_exists_over_all_nodes() -> None:
    partitions = {
        name: (nodes, avail) for name, nodes, avail in table("sinfo", "-h", "-o", "%P|%N|%a")
    }
    # sinfo marks the default partition with "*".
    assert partitions == {"cpu*": ("n[1-3]", "up"), "gpu": ("n[1-3]", "up")}


@pytest.mark.cluster
@WHOLE_CLUSTER
def test_each_test_user_has_an_association_in_the_test_account(slurm_cluster: Cluster) -> None:
    rows = table(
        "sacctmgr",
        "-n",
        "-P",
        "show",
        "assoc",
        f"cluster={slurm_cluster.name}",
        f"account={slurm_cluster.account}",
        "format=user",
    )
    users = {row[0] for row in rows if row[0]}
    assert set(slurm_cluster.users) <= users


@pytest.mark.cluster
@WHOLE_CLUSTER
def test_test_user_gpu_job_runs_with_both_gpus_and_is_accounted(slurm_cluster: Cluster) -> None:
    submitted = run_as(
        "rxalice",
        [
            "sbatch",
            "--parsable",
            "-p",
            "gpu",
            "--gres=gpu:a100:2",
            "-t",
            "5",
            "-o",
            "/dev/null",
            "--wrap",
            'test "$CUDA_VISIBLE_DEVICES" = 0,1',
        ],
    )
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]

    def finished() -> list[str] | None:
        rows = table(
            "sacct", "-n", "-P", "-X", "-j", job, "-o", "user,account,partition,state,exitcode"
        )
        if not rows or rows[0][3] in {"PENDING", "RUNNING", "COMPLETING"}:
            return None
        # A short job's end can reach slurmdbd before the rest of its record (the partition).
        return rows[0] if rows[0][2] else None

    # Other tests may hold the GPUs for a while; the job waits for them.
    row = wait_for(finished, timeout=300, interval=0.5, what=f"job {job} to finish in sacct")
    # exit 0:0 means the job saw CUDA_VISIBLE_DEVICES=0,1.
    assert row == ["rxalice", slurm_cluster.account, "gpu", "COMPLETED", "0:0"]


@pytest.mark.cluster
@WHOLE_CLUSTER
def test_setup_again_does_no_work_and_leaves_the_cluster_up() -> None:
    if os.geteuid() != 0:
        pytest.skip(f"{SETUP} needs root")
    result = run_setup(timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # Everything was up (the session fixture saw to that), so nothing is started or restarted.
    for daemon in ("munge", "mariadb", "slurmdbd", "slurmctld"):
        assert f"setup.sh: {daemon}: running\n" in result.stdout, result.stdout
    assert "started" not in result.stdout
    assert "restarting" not in result.stdout
    assert slurmctld_up()


@pytest.mark.root(reason="run_as needs root")
def test_run_as_gives_the_user_their_groups_and_a_clean_environment() -> None:
    if os.geteuid() != 0:
        pytest.skip("run_as needs root")
    result = run_as(
        "rxop", ["sh", "-c", 'id -un; id -Gn; echo "$HOME|$PWD|$SECRET"'], env={"SECRET": "given"}
    )
    assert result.returncode == 0, result.stderr
    name, groups, env = result.stdout.splitlines()
    assert name == "rxop"
    assert {"rxop", "rxusers", "rxadmin"} <= set(groups.split())
    assert env == "/home/rxop|/home/rxop|given"
    assert "PYTEST_CURRENT_TEST" not in run_as("rxop", ["env"]).stdout


def test_wait_for_returns_the_first_truthy_value_and_names_what_timed_out() -> None:
    values = iter([0, None, "ready"])
    assert wait_for(lambda: next(values), timeout=5, interval=0) == "ready"
    with pytest.raises(TimeoutError, match="the moon"):
        wait_for(lambda: False, timeout=0, what="the moon")
