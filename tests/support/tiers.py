"""The three test tiers, chosen by markers (the Makefile holds the -m expression of each):

- unit:    no marker below. No root, no Slurm, seconds each; `make unit` runs them as an
           unprivileged user, first in `make test`.
- host:    marked ``root`` (a real rxd, acting as test users, root's own folders) or ``slow``
           (seconds on its own, e.g. building a wheel); run as root, no Slurm job.
- cluster: marked ``cluster``: the real Slurm cluster and the real Apptainer.

A test that needs root says so with ``@pytest.mark.root(reason=...)`` (skipped, with that reason,
when not run as root), or by using a fixture in ROOT_FIXTURES. In the unit tier
(RXSLURM_TEST_TIER=unit, set by `make unit`) a test that skips itself because it is not root
fails instead: it belongs to the host tier and would otherwise run nowhere.
"""

from __future__ import annotations

import json
import os

import pytest

TIER_ENV = "RXSLURM_TEST_TIER"
# Where a collection writes each test's id and markers, one JSON line each (tests/test_tiers.py).
REPORT_ENV = "RXSLURM_TEST_TIER_REPORT"

MARKERS = (
    "root: needs root (a real rxd, acting as test users, root's own folders): the host tier",
    "slow: takes seconds on its own (e.g. building a wheel): the host tier, not `make unit`",
)

# Fixtures that cannot be had without root: a real rxd (it refuses folders it does not own as
# root), an exec server starting commands as another user, a second munged.
ROOT_FIXTURES = frozenset({"rxd", "fake_exec", "other_munged"})


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # tryfirst: before -m deselects by markers.
    for item in items:
        if ROOT_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.root(reason="uses a fixture that needs root"))
    if report := os.environ.get(REPORT_ENV):
        with open(report, "w", encoding="utf-8") as out:
            for item in items:
                marks = sorted({mark.name for mark in item.iter_markers()})
                skips = [str(m.kwargs.get("reason", "")) for m in item.iter_markers("skipif")]
                row = {"test": item.nodeid, "markers": marks, "skip_reasons": skips}
                out.write(json.dumps(row) + "\n")


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("root")
    if marker is not None and os.geteuid() != 0:
        pytest.skip(marker.kwargs.get("reason", "needs root"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    if os.environ.get(TIER_ENV) == "unit" and report.skipped and "root" in str(report.longrepr):
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} skipped in the unit tier because it needs root ({report.longrepr}): "
            "mark it @pytest.mark.root so the host tier runs it as root"
        )
    return report
