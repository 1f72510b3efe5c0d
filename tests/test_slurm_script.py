"""rxslurm.slurm.script: batch scripts rendered from templates, with every value quoted."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from rxslurm.slurm.script import (
    TemplateError,
    parse_template,
    render,
    render_batch_script,
    template_params,
)
from tests.support.golden import assert_golden

FIXTURES = Path(__file__).parent / "fixtures" / "slurm"
GOLDEN = FIXTURES / "probe.golden.sh"

GOLDEN_VALUES = {
    "message": "hello from rx-slurm",
    "wait_for": "/tmp/rx release/flag",
    "max_wait_s": 30,
    "exit_code": 0,
}


def test_probe_template_matches_golden_file() -> None:
    rendered = render_batch_script("probe.sh", **GOLDEN_VALUES)
    assert_golden(GOLDEN, rendered, "tests/test_slurm_script.py")


def test_declared_parameters_are_listed() -> None:
    assert template_params("probe.sh") == ("message", "wait_for", "max_wait_s", "exit_code")


def test_unknown_parameter_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(TemplateError) as info:
        render_batch_script("probe.sh", **GOLDEN_VALUES, gpus=2)
    assert "gpus" in str(info.value)
    assert "valid ones: message, wait_for, max_wait_s, exit_code" in str(info.value)


def test_missing_parameter_is_refused() -> None:
    values = dict(GOLDEN_VALUES)
    del values["wait_for"]
    with pytest.raises(TemplateError, match="missing parameter.*wait_for"):
        render_batch_script("probe.sh", **values)


@pytest.mark.parametrize("bad", ["two\nlines", "carriage\rreturn", "nul\0byte", "end\n"])
def test_line_breaks_and_nul_in_values_are_refused(bad: str) -> None:
    with pytest.raises(TemplateError, match="message: the value contains"):
        render_batch_script("probe.sh", **{**GOLDEN_VALUES, "message": bad})


@pytest.mark.parametrize("bad", [True, None, ["list"]])
def test_values_without_a_plain_spelling_are_refused(bad: object) -> None:
    with pytest.raises(TemplateError, match="message"):
        render_batch_script("probe.sh", **{**GOLDEN_VALUES, "message": bad})


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "", "nope.sh"])
def test_template_names_are_confined_to_the_package(name: str) -> None:
    with pytest.raises(TemplateError):
        render_batch_script(name)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('#rx:param x\necho "{{x}}"\n', "whole shell word"),
        ("#rx:param x\necho pre{{x}}\n", "whole shell word"),
        ("#rx:param x\n#SBATCH --comment {{x}}\n", "#SBATCH"),
        ("echo {{y}}\n", "not declared"),
        ("#rx:param x\n#rx:param x\n", "declared twice"),
        ("#rx:params x\n", "unknown directive"),
    ],
)
def test_templates_breaking_the_rules_fail_to_load(text: str, problem: str) -> None:
    with pytest.raises(TemplateError, match=problem):
        parse_template("t.sh", text)


def test_placeholders_may_stand_after_equals_and_before_semicolons() -> None:
    template = parse_template("t.sh", "#rx:param x\nv={{x}}; echo ok ({{x}})\n")
    assert render(template, {"x": "a b"}) == "v='a b'; echo ok ('a b')\n"


HOSTILE_VALUES = [
    "it's",
    'say "hi"',
    "a; rm -rf /tmp/nothing-here",
    "$(id -u)",
    "`id -u`",
    "${HOME}",
    "a|b&&c||d > /tmp/x < /etc/passwd",
    "*",
    "-n",
    "\\back\\slash\\",
    "ünïcödé ✓ 日本",
    "{{wait_for}}",
    "}}{{",
    "  spaced  out  ",
    "",
    "tab\there",
]


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_hostile_values_come_back_literally_from_bash(value: str) -> None:
    script = render_batch_script("probe.sh", message=value, wait_for="", max_wait_s=0, exit_code=0)
    result = subprocess.run(
        ["/bin/bash", "-s"],
        input=script,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/nonexistent"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"message={value}"


def test_non_numeric_numbers_cannot_reach_bash_arithmetic() -> None:
    # Bash evaluates a variable's text inside $(( )); "a[$(cmd)]" would run cmd there.
    marker = Path("/tmp/rxslurm-arith-injection")
    marker.unlink(missing_ok=True)
    script = render_batch_script(
        "probe.sh",
        message="x",
        wait_for="",
        max_wait_s=f"a[$(touch {marker})]",
        exit_code=f"b[$(touch {marker})]",
    )
    result = subprocess.run(
        ["/bin/bash", "-s"], input=script, capture_output=True, text=True, timeout=90, check=False
    )
    assert result.returncode == 0, result.stderr
    assert not marker.exists()


def test_exit_code_parameter_sets_the_status() -> None:
    script = render_batch_script("probe.sh", message="x", wait_for="", max_wait_s=0, exit_code=7)
    result = subprocess.run(
        ["/bin/bash", "-s"], input=script, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 7


def test_a_words_parameter_is_a_bash_array_of_literal_words() -> None:
    template = parse_template("t.sh", "#rx:words cmd\ncmd=({{cmd}})\n")
    assert render(template, {"cmd": ["a b", "$(x)", "'"]}) == "cmd=('a b' '$(x)' ''\"'\"'')\n"
    with pytest.raises(TemplateError, match="cmd: give a list of words"):
        render(template, {"cmd": "a b"})
    with pytest.raises(TemplateError, match="cmd: the value contains a newline"):
        render(template, {"cmd": ["a\nb"]})


@pytest.mark.parametrize("line", ["x={{cmd}}", "run {{cmd}}", "x=( {{cmd}} )"])
def test_a_words_parameter_stands_only_as_a_whole_array(line: str) -> None:
    with pytest.raises(TemplateError, match="is a list of words"):
        parse_template("t.sh", f"#rx:words cmd\n{line}\n")
