"""The cluster tier in parallel: what may run side by side, and the tests that must run alone.

`make test` runs the cluster tier in two parts (the Makefile's ``test`` target):

1. ``-m "cluster and not alone" -n N --dist loadfile`` (pytest-xdist): each test FILE runs on one
   worker, its tests in their order, so a module-scoped fixture (a shared rxd, a container kept
   running for the module) is never seen by two processes; different files run at the same time.
2. ``-m "cluster and alone"``: the tests marked ``alone``, one after another, with nothing else of
   the run on the cluster.

So that files can share the cluster (as the developers' runs on one machine always have):

- everything a test names on the host or in Slurm is its own: rxd's folder, socket, ledger and
  Slurm tag come from tests.support.daemon (a fresh folder per daemon); a project whose container
  runs has a name no other file uses for the same runtime user, best with the file's prefix
  (``ex-main``, ``sp-alpha``): a container's job is a Slurm singleton (``--dependency=singleton``
  on job name ``rx-<project>`` and user, whatever the daemon), so two files' containers of one
  name would wait for each other, and ``instance://rx-<project>-`` would match both; ports come
  from ``free_port()``; temporary folders from pytest's ``tmp_path`` (its own per worker) or
  ``mkdtemp``;
- a test looks only at its own jobs and processes (its daemon's tag, its job ids, its markers),
  never at all of squeue or all of /proc, and waits for Slurm with ``wait_for`` and a deadline
  long enough for another file's job to end first.

A test that cannot keep to this is marked ``@pytest.mark.alone(reason=...)``: it kills or restarts
a Slurm daemon, runs setup.sh, fills a partition, needs every GPU of a node free, or runs a
benchmark. Under xdist such a test fails at once with a pointer here instead of disturbing the
tests running beside it.
"""

from __future__ import annotations

import os

import pytest

ALONE = "alone"
MARKER = (
    f"{ALONE}(reason): needs the whole cluster (kills a slurmd, fills a partition, runs setup.sh "
    "or a benchmark): make test runs it after the parallel part, with nothing beside it"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)


def in_xdist_worker() -> bool:
    return "PYTEST_XDIST_WORKER" in os.environ


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker(ALONE)
    if marker is not None and in_xdist_worker():
        why = marker.kwargs.get("reason", "it needs the whole cluster")
        pytest.fail(
            f"{item.nodeid} is marked alone ({why}): run it without -n, as `make test` does "
            f'(-m "cluster and alone", after the parallel part); see tests/support/parallel.py',
            pytrace=False,
        )
