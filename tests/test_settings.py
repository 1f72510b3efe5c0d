from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxslurm.daemon.errors import BadRequest
from rxslurm.daemon.projects.names import check_project_name
from rxslurm.daemon.settings import (
    MAX_IMAGE_BYTES,
    Settings,
    apply_changes,
    check_against_slurm,
    check_static,
    effective,
)
from rxslurm.daemon.text_checks import BIDI_CONTROLS, bad_character, check_text


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
        (
            {"image": "/a\nb"},
            r"image must not contain control or bidi characters \(found U\+000A\)",
        ),
        ({"image": "/x\r"}, r"found U\+000D"),
        ({"image": "/x\x1b]0;owned\x07"}, r"found U\+001B"),
        ({"image": "/x\x9b2J"}, r"found U\+009B"),  # C1: CSI on 8-bit terminals
        ({"image": "/x\x7f"}, r"found U\+007F"),
        ({"image": "/x\u202egpj.sif"}, r"found U\+202E"),  # right-to-left override
        ({"image": "/x\u2066y"}, r"found U\+2066"),
        ({"image": "/x\u2028y"}, r"found U\+2028"),  # line separator
        ({"image": "/x\ud800"}, r"found U\+D800"),  # lone surrogate: SQLite cannot store it
        ({"image": "/" + "x" * 4096}, r"image is too long \(at most 4096 bytes\)"),
        ({"image": "/" + "é" * 2048}, "image is too long"),  # bytes, not characters
        ({"gpu_type": "a100\n"}, r"found U\+000A"),
        ({"partition": "p" * 65}, "partition is too long"),
        ({"image": 5}, "image must be a string"),
        ({"gpus": [1]}, "gpus must be a whole number, got a list"),
        ({"x" * 10_000: 1}, r"unknown setting 'xxx.*… \(\d+ more characters\); valid settings"),
    ],
)
def test_apply_changes_refuses_bad_values(changes: dict, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        apply_changes(Settings(), changes)


def test_an_image_of_exactly_the_cap_is_accepted() -> None:
    image = "/" + "x" * (MAX_IMAGE_BYTES - 1)
    assert apply_changes(Settings(), {"image": image}).image == image


def test_unicode_that_is_plain_text_is_accepted() -> None:
    # Letters of any script, emoji with a zero-width joiner: printable, not controls.
    for image in ("/data/größe/ü.sif", "/srv/画像/x.sif", "/x/\U0001f469\u200d\U0001f52c.sif"):
        assert apply_changes(Settings(), {"image": image}).image == image


@given(st.text())
def test_check_text_accepts_exactly_text_without_control_or_bidi_characters(text: str) -> None:
    hostile = any(
        ord(c) < 0x20
        or 0x7F <= ord(c) <= 0x9F
        or c in BIDI_CONTROLS
        or 0xD800 <= ord(c) <= 0xDFFF
        or c in "\u2028\u2029"
        for c in text
    )
    try:
        check_text("x", text, 10**9)
    except BadRequest:
        assert hostile
    else:
        assert not hostile
        assert bad_character(text) is None


@pytest.mark.parametrize(
    "name", ["hog\n", "hog\r", "\nhog", "hog\x00", "a-", "-a", "1a", "A", "a_b", "", "a" * 22, "ａ"]
)
def test_project_names_are_matched_in_full(name: str) -> None:
    with pytest.raises(BadRequest, match="project name must be 1-21 characters"):
        check_project_name(name)


@pytest.mark.parametrize("name", ["a", "ab", "a-b", "a1", "a" * 21, "x-1-y"])
def test_good_project_names(name: str) -> None:
    assert check_project_name(name) == name


@given(st.text(max_size=30))
def test_a_project_name_is_only_lowercase_ascii_digits_and_inner_dashes(name: str) -> None:
    try:
        check_project_name(name)
    except BadRequest:
        return
    assert name[0].isascii() and name[0].islower()
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    assert not name.endswith("-") and len(name) <= 21


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
        # Saved before the checks were strict: refused when checked again.
        (Settings(image="/x\r"), r"image must not contain control or bidi characters"),
        (Settings(partition="gpu\n"), r"found U\+000A"),
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
    defaults = Settings(cpus=1, mem_mb=1000, gpu_driver="nvidia", gpu_type="a100")
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
