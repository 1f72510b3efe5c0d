"""The three test tiers, chosen by markers (the Makefile holds the -m expression of each):

- unit:    none of the markers below. No root, no Slurm, no service of this machine, seconds
           each; `make unit` runs them as an unprivileged user, first in `make test`.
- host:    marked ``root`` (a real rxd, acting as test users, root's own folders), ``munged``
           (the cluster's munged) or ``slow`` (seconds on its own, e.g. building a wheel); run as
           root after the cluster is set up, but no Slurm job.
- cluster: marked ``cluster``: the real Slurm cluster and the real Apptainer.

A test that needs root says so with ``@pytest.mark.root(reason=...)`` or by using a fixture in
ROOT_FIXTURES; one that needs munged with tests.support.munge.needs_munged. Either is skipped,
with its reason, where what it needs is missing. In the unit tier (RXSLURM_TEST_TIER=unit, set by
`make unit`) any skip fails instead: a unit test needs nothing, and a test that skips there
for want of something belongs to the host tier, or it would run nowhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest

from tests.support.munge import CLUSTER_SOCKET

TIER_ENV = "RXSLURM_TEST_TIER"
# Where a collection writes each test's id and markers, one JSON line each (tests/test_tiers.py).
REPORT_ENV = "RXSLURM_TEST_TIER_REPORT"

MARKERS = (
    "root: needs root (a real rxd, acting as test users, root's own folders): the host tier",
    "munged: needs the cluster's munged (started by tests/cluster/setup.sh): the host tier",
    "slow: takes seconds on its own (e.g. building a wheel): the host tier, not `make unit`",
)

# What each requirement marker needs, checked just before its test runs.
REQUIREMENTS: dict[str, Callable[[], bool]] = {
    "root": lambda: os.geteuid() == 0,
    "munged": CLUSTER_SOCKET.is_socket,
}

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
                out.write(json.dumps({"test": item.nodeid, "markers": marks}) + "\n")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for name, met in REQUIREMENTS.items():
        marker = item.get_closest_marker(name)
        if marker is not None and not met():
            pytest.skip(marker.kwargs.get("reason", f"needs {name}"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    if os.environ.get(TIER_ENV) == "unit" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} skipped in the unit tier ({report.longrepr}): a unit test needs "
            "nothing; mark what it needs (root, munged, slow) so the host tier runs it"
        )
    return report
