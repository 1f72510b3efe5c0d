from dataclasses import dataclass, field

import pytest

from rxslurm.daemon.config import DefaultsConfig
from rxslurm.daemon.errors import BadRequest
from rxslurm.daemon.settings import (
    Settings,
    apply_changes,
    check_against_slurm,
    check_static,
    effective,
)


@dataclass
class Part:
    max_gpus_per_node: int = 2
    max_cpus_per_node: int = 2
    max_mem_mb_per_node: int = 4000
    gpu_types: set[str] = field(default_factory=lambda: {"a100"})
    default: bool = False


PARTS = {"cpu": Part(default=True), "gpu": Part()}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cpus": -1}, "cpus must not be negative"),
        ({"gpus": "2"}, "gpus must be a whole number"),
        ({"gpus": True}, "gpus must be a whole number"),
        ({"memory": 5}, "unknown setting 'memory'"),
        ({"partition": 3}, "partition must be a string"),
        ({"image": "a\nb"}, "image must be one line"),
    ],
)
def test_apply_changes_refuses_bad_values(changes: dict, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        apply_changes(Settings(), changes)


def test_apply_changes_keeps_what_is_not_named() -> None:
    current = Settings(cpus=2, gpus=1)
    assert apply_changes(current, {"gpus": 0}) == Settings(cpus=2, gpus=0)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (Settings(gpu_driver="intel"), 'gpu_driver must be "nvidia", "amd"'),
        (Settings(image="relative/x.sif"), "image must be an absolute path"),
        (Settings(image="http://x/y"), "docker://, oras:// or library://"),
        (Settings(image="/a/../etc/shadow"), "must not contain '..'"),
        (Settings(partition="gpu;rm"), "partition may hold only"),
        (Settings(gpu_type="a 100"), "gpu_type may hold only"),
    ],
)
def test_static_checks(settings: Settings, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        check_static(settings)


def test_static_checks_accept_references_and_paths() -> None:
    for image in (
        "",
        "/srv/images/x.sif",
        "docker://python:3.12-slim",
        "oras://r/x:1",
        "library://a/b",
    ):
        check_static(Settings(image=image))


def test_effective_fills_defaults_and_drops_gpu_fields_without_gpus() -> None:
    defaults = DefaultsConfig(cpus=1, mem_mb=1000, gpu_driver="nvidia", gpu_type="a100")
    eff = effective(Settings(cpus=2), defaults)
    assert (eff.cpus, eff.mem_mb, eff.gpu_driver, eff.gpu_type) == (2, 1000, "", "")
    with_gpu = effective(Settings(gpus=1), defaults)
    assert (with_gpu.gpu_driver, with_gpu.gpu_type) == ("nvidia", "a100")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (Settings(partition="nope"), "unknown partition 'nope'; Slurm has: cpu, gpu"),
        (
            Settings(partition="gpu", gpus=3),
            "3 GPUs asked for, but no node of partition gpu has more than 2",
        ),
        (Settings(partition="gpu", gpus=1, gpu_type="h100"), "has no GPUs of type 'h100'"),
        (Settings(cpus=3), "3 CPUs asked for"),
        (Settings(mem_mb=5000), "5000 MB of memory asked for"),
    ],
)
def test_checks_against_what_slurm_reports(settings: Settings, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        check_against_slurm(settings, PARTS, "cpu")


def test_empty_partition_means_the_default_partition() -> None:
    check_against_slurm(Settings(cpus=2), PARTS, "cpu")
    with pytest.raises(BadRequest, match="no node of partition cpu"):
        check_against_slurm(Settings(gpus=3), PARTS, "cpu")
