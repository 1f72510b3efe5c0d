"""`rxctl admin containers` with usage: a running container's CPU, memory and GPUs from the same
cached usage as `rxctl status`, "-" where it is unavailable, nothing asked of Slurm for others."""

from __future__ import annotations

from pathlib import Path

from rxslurm.cli.commands_quota import container_lines, usage_cells
from tests.unit.test_reconciler_edges import running, world
from tests.unit.test_usage import usage_with


def test_the_admin_list_carries_a_running_containers_usage_and_none_for_others(
    tmp_path: Path,
) -> None:
    w = world(tmp_path, ("alpha", "starting"), ("beta", "starting"), ("gamma", "starting"))
    alpha = running(w, "alpha")
    running(w, "beta")  # the fake's sstat fails for it
    w.slurm.usages[alpha] = usage_with(42.0, 3 << 30, 2)
    w.add_job("gamma", "PENDING")

    listed = {c["project"]: c for c in w.service.admin_containers(with_usage=True)}

    assert listed["alpha"]["usage"]["memory_bytes"] == 3 << 30
    assert "unavailable" in listed["beta"]["usage"]
    assert listed["gamma"]["usage"] is None
    assert w.slurm.usage_calls == 2


def test_the_admin_list_without_usage_asks_slurm_nothing(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    running(w, "alpha")

    (only,) = w.service.admin_containers()

    assert "usage" not in only and w.slurm.usage_calls == 0


def test_usage_cells_show_dashes_for_what_is_unknown() -> None:
    assert usage_cells(None) == ("-", "-", "-")
    assert usage_cells({"unavailable": "sstat: no steps", "gpus": 1}) == ("-", "-", "1")
    first = {"cpu_s": 3.0, "cpus_busy": None, "memory_bytes": 1 << 30, "gpus": 0}
    assert usage_cells(first) == ("-", "1.0 GiB", "0")
    assert usage_cells({**first, "cpus_busy": 1.5}) == ("1.5", "1.0 GiB", "0")


def test_the_admin_table_has_the_usage_columns() -> None:
    row = {
        "project": "alpha",
        "linux_user": "rxalice",
        "partition": "gpu",
        "state": "running",
        "gpus": 1,
        "cpus": 2,
        "mem_mb": 4096,
        "job_id": 142,
        "node": "n1",
        "age_s": 60,
        "usage": {"cpus_busy": 1.98, "memory_bytes": 70 << 20, "gpus": 1},
        "reason": None,
    }

    header, line = container_lines([row])

    assert header.split()[-7:] == ["CPU", "BUSY", "MEM", "USED", "GPUS", "HELD", "REASON"]
    assert line.split()[-5:] == ["1.98", "70.0", "MiB", "1", "-"]
