"""/metrics on a real rxd and the real cluster: a wake shows in the wake histogram and in the
containers per state, over the metrics listener and to any user on the socket."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cli import ok
from tests.support.cluster import run_as
from tests.support.daemon import Rxd, free_port, running_rxd
from tests.support.lifecycle import lifecycle_config, make_project, wait_state

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("container_runtime")]

PROJECT = "metered"


@pytest.fixture(scope="module")
def metrics_rxd() -> Iterator[tuple[Rxd, str]]:
    url = f"http://127.0.0.1:{free_port()}/metrics"
    listen = url.removeprefix("http://").removesuffix("/metrics")

    def config(root: Path) -> str:
        return f'metrics_listen = "{listen}"\n' + lifecycle_config(root)

    with running_rxd(config) as daemon:
        yield daemon, url


def scrape(url: str) -> tuple[str, dict[str, Any]]:
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - our own listener
        text = response.read().decode()
    return text, {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict[str, Any], name: str, **labels: str) -> float:
    """The one sample named `name` (as written: `_total`, `_count`...) with these labels."""
    matches = [
        s.value
        for family in families.values()
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matches) == 1, (name, labels, matches)
    return float(matches[0])


def test_a_wake_shows_in_the_wake_histogram_and_the_containers_per_state(
    metrics_rxd: tuple[Rxd, str],
) -> None:
    rxd, url = metrics_rxd
    _, before = scrape(url)
    wakes_before = value(before, "rxslurm_wake_latency_seconds_count")
    make_project(rxd, PROJECT)

    ok(rxd.rxctl("rxalice", "enable", "--project", PROJECT))
    wait_state(rxd, PROJECT, "running")
    text, after = scrape(url)

    assert value(after, "rxslurm_wake_latency_seconds_count") == wakes_before + 1
    assert value(after, "rxslurm_wake_latency_seconds_sum") > 0
    assert value(after, "rxslurm_containers", state="running") == 1
    assert value(after, "rxslurm_containers", state="error") == 0
    assert value(after, "rxslurm_slurm_reachable") == 1
    assert value(after, "rxslurm_reconcile_passes_total") > 0
    assert (
        value(
            after,
            "rxslurm_api_requests_total",
            route="/v1/projects/{name}/status",
            method="GET",
            code="2xx",
        )
        >= 1
    )
    assert PROJECT not in text and "rxalice" not in text and str(rxd.root) not in text

    ok(rxd.rxctl("rxalice", "stop", "--project", PROJECT))
    wait_state(rxd, PROJECT, "stopped")
    _, stopped = scrape(url)
    assert value(stopped, "rxslurm_containers", state="stopped") == 1
    assert value(stopped, "rxslurm_containers", state="running") == 0


def test_any_user_reads_metrics_on_the_socket(metrics_rxd: tuple[Rxd, str]) -> None:
    rxd, _ = metrics_rxd
    # rxdave is no member of anything here: the figures are aggregates.
    result = ok(
        run_as(
            "rxdave",
            ["curl", "--silent", "--fail", "--unix-socket", str(rxd.socket), "http://rxd/metrics"],
        )
    )
    names = {f.name for f in text_string_to_metric_families(result.stdout)}
    assert {"rxslurm_containers", "rxslurm_wake_latency_seconds", "rxslurm_api_requests"} <= names


def test_the_metrics_listener_serves_nothing_but_metrics(metrics_rxd: tuple[Rxd, str]) -> None:
    _, url = metrics_rxd
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url.replace("/metrics", "/v1/whoami"), timeout=30)  # noqa: S310
    assert err.value.code == 404
