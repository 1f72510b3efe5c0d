"""Every test is in exactly one tier, and `make test` runs every tier, the unit tier first."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _pytest.mark.expression import Expression

from tests.support.tiers import REPORT_ENV

ROOT = Path(__file__).resolve().parent.parent
MAKEFILE = (ROOT / "Makefile").read_text()
TIERS = ("UNIT_TIER", "HOST_TIER", "CLUSTER_TIER")


def tier_expressions() -> dict[str, str]:
    found = dict(re.findall(r"^(\w+_TIER) := (.+)$", MAKEFILE, re.MULTILINE))
    assert sorted(found) == sorted(TIERS), found
    return found


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> dict[str, frozenset[str]]:
    """Test id -> its markers, for the whole suite as pytest collects it (markers added at
    collection included)."""
    report = tmp_path_factory.mktemp("tiers") / "report.jsonl"
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env={**os.environ, REPORT_ENV: str(report)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    return {row["test"]: frozenset(row["markers"]) for row in rows}


def tier_of(markers: frozenset[str]) -> list[str]:
    """The tiers whose -m expression selects a test with these markers (exactly one, we hope)."""
    return [
        name
        for name, expression in tier_expressions().items()
        if Expression.compile(expression).evaluate(lambda mark, **_: mark in markers)
    ]


def test_every_test_is_in_exactly_one_tier(suite: dict[str, frozenset[str]]) -> None:
    placed = {test: tier_of(markers) for test, markers in suite.items()}
    assert {test: tiers for test, tiers in placed.items() if len(tiers) != 1} == {}
    counts = {name: sum(tiers == [name] for tiers in placed.values()) for name in TIERS}
    # Not vacuous: the whole suite was seen, and each tier has tests.
    assert len(suite) > 1000 and all(counts.values()), counts


def test_no_unit_test_has_a_skip_condition(suite: dict[str, frozenset[str]]) -> None:
    # Its condition is read where the suite is collected: false here, where the cluster is set
    # up, it may be true on a fresh machine, where `make unit` runs before the cluster exists;
    # the test would then pass by not running. (tiers.py fails a skip in the unit tier, too.)
    conditional = [
        test
        for test, markers in suite.items()
        if tier_of(markers) == ["UNIT_TIER"] and "skipif" in markers
    ]
    assert conditional == []


def test_make_test_runs_the_unit_tier_first_then_every_other_tier() -> None:
    recipe = re.search(r"^test: (.*)\n((?:\t.*\n)+)", MAKEFILE, re.MULTILINE)
    assert recipe is not None
    prerequisites, commands = recipe.group(1).split(), recipe.group(2)
    # Before the unit tier only the static checks, which need neither root nor the cluster.
    assert prerequisites[: prerequisites.index("unit")] == ["venv", "lint", "typecheck"]
    assert prerequisites.index("unit") < prerequisites.index("cluster")
    for tier in ("HOST_TIER", "CLUSTER_TIER"):
        assert f'pytest -m "$({tier})' in commands
    unit = re.search(r"^unit: .*\n\t(.*)\n", MAKEFILE, re.MULTILINE)
    assert unit is not None and 'pytest -p no:cacheprovider -m "$(UNIT_TIER)"' in unit.group(1)
    assert unit.group(1).startswith("tests/support/unprivileged.sh ")


def make_test_selections() -> list[str]:
    """The -m expression of each pytest command `make test` runs (the unit target's among them),
    with the tier variables filled in."""
    recipe = re.search(r"^test: .*\n((?:\t.*\n)+)", MAKEFILE, re.MULTILINE)
    unit = re.search(r"^unit: .*\n\t(.*)\n", MAKEFILE, re.MULTILINE)
    assert recipe is not None and unit is not None
    commands = (unit.group(1) + "\n" + recipe.group(1)).replace("\\\n", " ")
    tiers = tier_expressions()
    return [
        re.sub(r"\$\((\w+_TIER)\)", lambda m: f"({tiers[m.group(1)]})", expression)
        for expression in re.findall(r'pytest .*?-m "([^"]+)"', commands)
    ]


def test_make_test_runs_every_test_exactly_once(suite: dict[str, frozenset[str]]) -> None:
    # The cluster tier runs in parts (side by side, then the `alone` tests): together they are
    # the tier, and no test runs in two of them.
    selections = [Expression.compile(expression) for expression in make_test_selections()]
    assert len(selections) >= 4, make_test_selections()
    runs = {
        test: sum(e.evaluate(markers.__contains__) for e in selections)
        for test, markers in suite.items()
    }
    assert {test: count for test, count in runs.items() if count != 1} == {}
    assert any("alone" in markers for markers in suite.values())
