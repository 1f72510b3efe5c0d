"""rxd's /metrics: the exposition text by hand, and what Prometheus' own parser reads of it.

Unit tier: a temp-dir ledger, a Slurm that knows two partitions, an in-process aiohttp server.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from rxslurm.daemon.api import routes_metrics
from rxslurm.daemon.api.app import make_app
from rxslurm.daemon.api.context import DAEMON, Daemon
from rxslurm.daemon.api.peercred import Caller
from rxslurm.daemon.api.serve import ROUTES
from rxslurm.daemon.config import ConfigError, parse_config
from rxslurm.daemon.ledger.timestamps import to_timestamp, utcnow
from rxslurm.daemon.main import effective_lines
from rxslurm.daemon.metrics import CONTENT_TYPE, Counters, Family, Histogram, Sample, render
from rxslurm.protocol.states import State
from tests.support.cluster import wait_for
from tests.test_api_fuzz import QuietSlurm
from tests.unit.test_reconciler_edges import world

CALLER = Caller(pid=1, uid=4242, gid=4242, user="metrics-alice", groups=())
SECRET_PROJECT = "secret-project"


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


# -- the exposition text ---------------------------------------------------------------------------


def test_render_writes_help_type_and_samples_with_escapes() -> None:
    text = render(
        [
            Family(
                "rx_things",
                "gauge",
                "Things\\now,\nsecond line",
                [Sample(3, {"kind": 'a"b\\c\nd'}), Sample(0.25, {"kind": "e"})],
            ),
            Family("rx_unknown", "gauge", "Not yet.", [Sample(float("nan"))]),
        ]
    )
    assert text == (
        "# HELP rx_things Things\\\\now,\\nsecond line\n"
        "# TYPE rx_things gauge\n"
        'rx_things{kind="a\\"b\\\\c\\nd"} 3\n'
        'rx_things{kind="e"} 0.25\n'
        "# HELP rx_unknown Not yet.\n"
        "# TYPE rx_unknown gauge\n"
        "rx_unknown NaN\n"
    )
    parsed = families(text)
    assert parsed["rx_things"].samples[0].labels == {"kind": 'a"b\\c\nd'}
    assert math.isnan(parsed["rx_unknown"].samples[0].value)


def test_a_family_of_an_unknown_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown metric type"):
        Family("rx_x", "summary-ish", "", [])


def test_histogram_buckets_are_cumulative_with_sum_and_count() -> None:
    hist = Histogram([10, 1, 5])
    for value in (0.5, 1, 3, 7, 100, -2):  # -2: a clock stepping back counts as 0
        hist.observe(value)
    text = render([Family("rx_wait_seconds", "histogram", "Waits.", hist.samples())])
    assert text.splitlines()[2:] == [
        'rx_wait_seconds_bucket{le="1"} 3',
        'rx_wait_seconds_bucket{le="5"} 4',
        'rx_wait_seconds_bucket{le="10"} 5',
        'rx_wait_seconds_bucket{le="+Inf"} 6',
        "rx_wait_seconds_sum 111.5",
        "rx_wait_seconds_count 6",
    ]
    parsed = families(text)["rx_wait_seconds"]
    assert parsed.type == "histogram"


@pytest.mark.parametrize("buckets", [[], [0], [-1, 2], [1, math.inf]])
def test_histogram_buckets_must_be_finite_and_positive(buckets: list[float]) -> None:
    with pytest.raises(ValueError, match="finite and positive"):
        Histogram(buckets)


def test_counters_refuse_a_wrong_number_of_labels() -> None:
    counts = Counters(("route", "code"))
    with pytest.raises(ValueError, match="expected labels"):
        counts.inc("/v1/whoami")


@given(
    value=st.text(max_size=40),
    number=st.floats(allow_nan=False) | st.integers(-(2**60), 2**60).map(float),
)
def test_any_label_value_and_number_round_trip_through_prometheus_parser(
    value: str, number: float
) -> None:
    text = render([Family("rx_prop", "gauge", "Property.", [Sample(number, {"v": value})])])
    (sample,) = families(text)["rx_prop"].samples
    assert sample.labels == {"v": value}
    assert sample.value == number


# -- the endpoint ----------------------------------------------------------------------------------


def _daemon(tmp_path: Path) -> Daemon:
    from rxslurm.daemon.ledger.store import Ledger

    config = parse_config(
        {
            "daemon": {"ledger": str(tmp_path / "ledger.db")},
            "workspaces": {"root": str(tmp_path / "workspaces")},
        }
    )
    ledger = Ledger.open(config.daemon.ledger, migrate=True)
    now = to_timestamp(utcnow())
    with ledger.transaction() as db:
        for partition in ("gpu", "cpu"):  # cpu's queue is empty: it shows, as 0
            db["quotas"].insert(
                {
                    "scope": "deployment",
                    "partition": partition,
                    "max_gpus": 1,
                    "created_at": now,
                    "created_by": "test",
                }
            )
        for i, (state, partition) in enumerate(
            [("running", ""), ("running", ""), ("stopped", ""), ("waiting_for_resources", "gpu")]
        ):
            name = f"{SECRET_PROJECT}-{i}"
            project = db["projects"].insert(
                {
                    "name": name,
                    "created_at": now,
                    "created_by": "alice",
                    "workspace": str(tmp_path),
                    "image": "/images/base.sif",
                    "partition": partition,
                }
            )
            db["containers"].insert(
                {
                    "project_id": project.last_pk,
                    "name": f"rx-{name}",
                    "state": state,
                    "desired": "running",
                    "runtime_user": "nobody",
                    "runtime_uid": 65534,
                    "image": "/images/base.sif",
                    "overlay_path": str(tmp_path / f"{name}.img"),
                    "state_dir": str(tmp_path),
                    "created_at": now,
                    "updated_at": now,
                    "queued_at": now if state == "waiting_for_resources" else None,
                }
            )
    return Daemon(config=config, ledger=ledger, slurm=QuietSlurm())  # type: ignore[arg-type]


@web.middleware
async def as_alice(request: web.Request, handler: Any) -> web.StreamResponse:
    request["caller"] = CALLER  # stands in for SO_PEERCRED
    return await handler(request)


def _scrape(daemon: Daemon, before: list[tuple[str, str]]) -> tuple[str, str]:
    """Make the requests in `before`, then GET /metrics: its content type and text."""
    app = make_app([*ROUTES, *routes_metrics.routes], {DAEMON: daemon}, identify=as_alice)

    async def run() -> tuple[str, str]:
        async with TestClient(TestServer(app)) as client:
            for method, path in before:
                await (await client.request(method, path)).read()
            response = await client.get(routes_metrics.METRICS)
            assert response.status == 200
            return response.headers["Content-Type"], await response.text()

    return asyncio.run(run())


def test_metrics_endpoint_parses_and_names_no_project_user_or_path(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path)
    daemon.reconciler.sessions.opened(1)
    daemon.reconciler.sessions.opened(1)
    daemon.reconciler.sessions.opened(2)
    daemon.reconciler.wake_latency.observe(4.0)
    daemon.reconciler.slurm_reachable = False  # as after a pass Slurm did not answer
    try:
        content_type, text = _scrape(
            daemon,
            [
                ("GET", f"/v1/projects/{SECRET_PROJECT}-0/status"),
                ("GET", "/v1/whoami"),
                ("GET", f"/nowhere/{SECRET_PROJECT}"),
                ("TRACE", "/v1/whoami"),
            ],
        )
    finally:
        daemon.ledger.close()
    assert content_type == CONTENT_TYPE
    assert SECRET_PROJECT not in text and "metrics-alice" not in text and str(tmp_path) not in text
    parsed = families(text)

    per_state = {s.labels["state"]: s.value for s in parsed["rxslurm_containers"].samples}
    assert per_state == {
        **{state.value: 0 for state in State},
        "running": 2,
        "stopped": 1,
        "waiting_for_resources": 1,
    }
    queue = {s.labels["partition"]: s.value for s in parsed["rxslurm_quota_queue_length"].samples}
    assert queue == {"cpu": 0, "gpu": 1}
    assert parsed["rxslurm_exec_sessions_open"].samples[0].value == 3
    assert parsed["rxslurm_slurm_reachable"].samples[0].value == 0
    assert parsed["rxslurm_reconcile_passes"].samples[0].value == 0
    assert math.isnan(parsed["rxslurm_reconcile_last_pass_seconds"].samples[0].value)
    wake = {
        (s.name, s.labels.get("le")): s.value
        for s in parsed["rxslurm_wake_latency_seconds"].samples
    }
    assert wake[("rxslurm_wake_latency_seconds_bucket", "2")] == 0
    assert wake[("rxslurm_wake_latency_seconds_bucket", "5")] == 1
    assert wake[("rxslurm_wake_latency_seconds_count", None)] == 1

    requests = {
        (s.labels["route"], s.labels["method"], s.labels["code"]): s.value
        for s in parsed["rxslurm_api_requests"].samples
    }
    assert requests[("/v1/projects/{name}/status", "GET", "4xx")] == 1  # alice is no member
    assert requests[("/v1/whoami", "GET", "2xx")] == 1
    assert requests[("unmatched", "GET", "4xx")] == 1
    assert requests[("unmatched", "other", "4xx")] == 1  # TRACE: not a method of the API


def test_metrics_are_not_served_on_the_platform_or_network_doors() -> None:
    # They go to the Unix socket's app and the metrics listener only (api/serve.py).
    assert routes_metrics.METRICS not in {route.path for route in ROUTES}


# -- the wake latency, where the state changes -----------------------------------------------------


def test_transition_starting_to_running_records_the_wake_latency(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    job_id = w.add_job("alpha", "RUNNING")  # submitted now, on the fake clock
    w.reconcile()
    assert w.state("alpha") == "starting"  # the holder has not reported yet
    w.clock.advance(42)
    w.runtime.report(job_id, f"running rx-alpha-{job_id}")

    w.reconcile()
    w.reconcile()  # already running: not a second wake

    assert w.state("alpha") == "running"
    samples = {(s.suffix, s.labels.get("le")): s.value for s in w.reconciler.wake_latency.samples()}
    assert samples[("_count", None)] == 1
    assert samples[("_sum", None)] == 42
    assert samples[("_bucket", "30")] == 0
    assert samples[("_bucket", "60")] == 1


def test_a_pass_that_changes_nothing_records_no_wake(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "starting"))
    w.add_job("alpha", "PENDING")
    w.reconcile()
    assert w.state("alpha") == "waiting_for_resources"
    assert w.reconciler.wake_latency.samples()[-1].value == 0


# -- the listener's configuration ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("daemon", "message"),
    [
        ({"metrics_listen": "9817"}, 'must be "host:port"'),
        ({"metrics_listen": "127.0.0.1:x"}, 'must be "host:port"'),
        ({"metrics_listen": "10.0.0.5:9817"}, "not a loopback address"),
        ({"metrics_listen": "metrics.example:9817"}, "not a loopback address"),
        (
            {"metrics_listen": "127.0.0.1:9817", "listen": "127.0.0.1:9817"},
            "must differ from the other listeners",
        ),
    ],
)
def test_a_bad_metrics_listen_is_refused(daemon: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"daemon": daemon})


def test_metrics_listen_beyond_loopback_only_when_the_admin_says_so() -> None:
    config = parse_config({"daemon": {"metrics_listen": "0.0.0.0:9817", "metrics_remote": True}})
    assert config.daemon.metrics_listen == "0.0.0.0:9817"


def test_check_config_shows_the_metrics_listener() -> None:
    lines = effective_lines(parse_config({"daemon": {"metrics_listen": "127.0.0.1:9817"}}))
    assert 'metrics_listen = "127.0.0.1:9817"' in lines
    assert "metrics_remote = false" in lines


def test_an_internal_error_is_counted_as_5xx_under_its_route_pattern(tmp_path: Path) -> None:
    broken = web.RouteTableDef()

    @broken.get("/v1/broken/{name}")
    async def fails(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    daemon = _daemon(tmp_path)
    app = make_app([*broken, *routes_metrics.routes], {DAEMON: daemon}, identify=as_alice)

    async def run() -> str:
        async with TestClient(TestServer(app)) as client:
            assert (await client.get(f"/v1/broken/{SECRET_PROJECT}")).status == 500
            return await (await client.get(routes_metrics.METRICS)).text()

    try:
        text = asyncio.run(run())
    finally:
        daemon.ledger.close()
    (sample,) = [
        s for s in families(text)["rxslurm_api_requests"].samples if s.labels["code"] == "5xx"
    ]
    assert sample.labels == {"route": "/v1/broken/{name}", "method": "GET", "code": "5xx"}
    assert SECRET_PROJECT not in text


def test_each_reconciler_pass_is_counted_with_its_duration(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    assert w.reconciler.passes == 0 and w.reconciler.last_pass_seconds is None
    w.reconciler.start()

    def poked_twice() -> bool:
        w.reconciler.poke()
        return w.reconciler.passes >= 2

    try:
        wait_for(poked_twice, timeout=30, interval=0.05, what="two reconciler passes")
    finally:
        w.reconciler.stop()
    assert w.reconciler.passes >= 2
    assert w.reconciler.last_pass_seconds is not None and w.reconciler.last_pass_seconds >= 0
