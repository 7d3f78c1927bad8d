"""The monitor turns what the link says into health and metrics: a broker alarm on the
real link (driven through the connection double of tests/amqp_doubles.py) makes the
worker unready with a reason naming it and sets ``inbox_rules_broker_blocked``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pika.adapters.select_connection import IOLoop

from tests.amqp_doubles import FakeBroker
from worker.amqp.link import AmqpLink
from worker.amqp.topology import Topology
from worker.driver import Driver
from worker.monitor import Monitor
from worker.observability import HealthState, Metrics, StatusLine
from worker.rulebook import load_rules
from worker.settings import Settings
from worker.store.memory import MemoryStore


@pytest.fixture
def ioloop() -> Iterator[IOLoop]:
    loop = IOLoop()
    yield loop
    loop.close()


def test_a_broker_alarm_makes_the_worker_unready_and_sets_the_gauge_until_it_clears(
        ioloop: IOLoop, tmp_path: Path) -> None:
    settings = Settings(AMQP_URL="amqp://guest:guest@127.0.0.1:1/prod",
                        state_path=tmp_path / "unused", status_interval=0)
    broker = FakeBroker()
    driver = Driver(settings, load_rules(None), MemoryStore())
    link = AmqpLink(settings, Topology.from_settings(settings), driver, ioloop,
                    connection_factory=broker.connect)
    driver.attach(link)
    metrics, health = Metrics(process_metrics=False), HealthState()
    monitor = Monitor(driver, lambda: link.ready, metrics, health,
                      StatusLine(settings.status_interval), lambda: link.blocked)

    def gauge() -> float | None:
        return metrics.registry.get_sample_value("inbox_rules_broker_blocked")

    link.start()
    broker.connection.open()
    monitor.tick()
    assert health.readiness() == (True, "ok") and gauge() == 0

    broker.connection.block("low on memory")
    monitor.tick()
    ready, why = health.readiness()
    assert not ready
    assert why == ("the broker blocks publishing (low on memory): a broker memory or disk "
                   "alarm; updates wait until it clears")
    assert gauge() == 1
    assert health.liveness()[0], "alive all the same: restarting would not help"

    broker.connection.unblock()
    monitor.tick()
    assert health.readiness() == (True, "ok") and gauge() == 0
