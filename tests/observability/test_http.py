"""The HTTP endpoints answer as the health state says, from their own thread."""

from __future__ import annotations

import re
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from worker.errors import SettingsError
from worker.observability.http import HealthState, HttpServer, serve_http, start_http
from worker.observability.metrics import Metrics
from worker.settings import Settings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def get(server: HttpServer, path: str, method: str = "GET",
        headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    """(status, content type, body) of one request; error statuses are answers too."""
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", method=method,
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers["Content-Type"], error.read().decode()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def health(clock: FakeClock) -> HealthState:
    return HealthState(stale_after=30, clock=clock)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def server(metrics: Metrics, health: HealthState) -> Iterator[HttpServer]:
    with serve_http(0, metrics, health, host="127.0.0.1") as running:
        yield running


def test_metrics_are_served_in_the_prometheus_text_format(
        server: HttpServer, metrics: Metrics) -> None:
    metrics.events_consumed(12)
    status, content_type, body = get(server, "/metrics")
    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"  # no Accept header
    assert "inbox_rules_events_consumed_total 12.0" in body


def test_metrics_speak_openmetrics_when_the_scraper_asks(
        server: HttpServer, metrics: Metrics) -> None:
    metrics.events_consumed(12)
    # What Prometheus sends (abridged): OpenMetrics preferred, the text format accepted.
    accept = ("application/openmetrics-text;version=1.0.0;q=0.5,"
              "text/plain;version=0.0.4;q=0.4,*/*;q=0.1")
    status, content_type, body = get(server, "/metrics", headers={"Accept": accept})
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    assert "\ninbox_rules_events_consumed_total 12.0\n" in body
    assert body.endswith("# EOF\n")  # OpenMetrics' terminator, absent from the text format


def test_healthz_is_200_while_the_loop_turns_and_503_once_it_is_stale(
        server: HttpServer, health: HealthState, clock: FakeClock) -> None:
    assert get(server, "/healthz")[0] == 200  # start-up counts as a turn
    clock.now += 25
    health.loop_turned()
    clock.now += 25
    assert get(server, "/healthz")[:1] == (200,)
    clock.now += 10  # 35 s since the last turn, the limit is 30
    status, _, body = get(server, "/healthz")
    assert status == 503
    assert "loop has not turned for 35 s" in body
    health.loop_turned()
    assert get(server, "/healthz")[0] == 200


def test_readyz_is_200_only_while_connected_consuming_and_able_to_commit(
        server: HttpServer, health: HealthState, clock: FakeClock) -> None:
    status, content_type, body = get(server, "/readyz")
    assert (status, body) == (503, "not connected to the broker\n")
    assert content_type == "text/plain; charset=utf-8"

    health.update(connected=True)
    assert get(server, "/readyz")[::2] == (503, "not consuming\n")
    health.update(consuming=True)
    assert get(server, "/readyz")[::2] == (200, "ok\n")

    health.update(can_commit=False, reason="store: database or disk is full")
    assert get(server, "/readyz")[::2] == (503, "store: database or disk is full\n")
    health.update(can_commit=True, reason="")
    assert get(server, "/readyz")[::2] == (200, "ok\n")

    health.update(connected=False, consuming=False, reason="connection lost: broker closed it")
    assert get(server, "/readyz")[::2] == (503, "connection lost: broker closed it\n")

    health.update(connected=True, consuming=True, reason="")
    clock.now += 31  # a stuck loop is not ready either
    status, _, body = get(server, "/readyz")
    assert status == 503 and "loop has not turned" in body


def test_readyz_is_503_while_the_broker_blocks_the_connection(
        server: HttpServer, health: HealthState) -> None:
    health.update(connected=True, consuming=True)
    health.update(broker_blocked="low on disk")
    status, _, body = get(server, "/readyz")
    assert status == 503
    assert body == ("the broker blocks publishing (low on disk): a broker memory or disk "
                    "alarm; updates wait until it clears\n")
    assert health.broker_blocked == "low on disk"
    assert get(server, "/healthz")[0] == 200
    health.update(consuming=False, reason="")  # the alarm stays the news
    assert "low on disk" in get(server, "/readyz")[2]
    health.update(consuming=True, broker_blocked="")
    assert get(server, "/readyz")[::2] == (200, "ok\n")


def test_only_get_on_the_three_paths(server: HttpServer) -> None:
    assert get(server, "/")[0] == 404
    assert get(server, "/metrics/extra")[0] == 404
    assert get(server, "/metrics?name[]=x")[0] == 200  # a query string is not a path
    assert get(server, "/metrics", method="POST")[0] == 405
    assert get(server, "/healthz", method="DELETE")[0] == 405


def test_close_frees_the_port(metrics: Metrics, health: HealthState) -> None:
    server = serve_http(0, metrics, health, host="127.0.0.1")
    port = server.port
    server.close()
    server.close()  # idempotent
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_port_0_in_the_settings_turns_http_off(metrics: Metrics, health: HealthState) -> None:
    assert start_http(Settings(http_port=0), metrics, health) is None
    server = start_http(Settings(http_port=_free_port(), http_host="127.0.0.1"), metrics, health)
    assert server is not None
    with server:
        assert get(server, "/healthz")[0] == 200


def test_a_port_in_use_is_a_settings_error_naming_the_variable(
        metrics: Metrics, health: HealthState) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        with pytest.raises(SettingsError) as caught:
            start_http(Settings(http_port=port, http_host="127.0.0.1"), metrics, health)
    assert str(caught.value) == (f"INBOX_RULES_HTTP_PORT={port}: port already in use "
                                 "(choose another, or 0 to turn HTTP off)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_health_is_exported_as_a_metric_for_alerts(
        server: HttpServer, health: HealthState) -> None:
    def checks() -> dict[str, str]:
        body = get(server, "/metrics")[2]
        return dict(re.findall(r'^inbox_rules_healthy\{check="(\w+)"\} (\S+)$', body, re.M))

    assert checks() == {"live": "1.0", "ready": "0.0", "connected": "0.0", "consuming": "0.0",
                        "can_commit": "1.0"}
    health.update(connected=True, consuming=True)
    assert checks()["ready"] == "1.0"
