"""A second worker on the same state file is a hot standby: it takes over when the
first stops, from the state the first committed, and publishes nothing stale."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.support.harness import Bus, ThreadWorker, settings_for, wait_drained, wait_for
from tests.support.oracle import replay
from tests.support.streams import event_stream

pytestmark = pytest.mark.broker


def test_the_standby_takes_over_from_the_committed_state(
        vhost: str, bus: Bus, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    events = event_stream(seed=12, count=600)
    first, second = events[:300], events[300:]
    caplog.set_level(logging.INFO, logger="worker.driver")
    settings = settings_for(vhost, tmp_path / "state.sqlite3")
    queue = bus.topology.events_queue
    active, standby = ThreadWorker(settings), ThreadWorker(settings)
    worker = active.__enter__()
    try:
        wait_for(lambda: bus.channel.queue_declare(queue, passive=True).method.consumer_count
                 == 1, 10, "the first worker to consume")
        taking_over = standby.__enter__()  # loads the (empty) state now: soon stale
        try:
            bus.publish_events(first)
            wait_for(lambda: worker.stats.acked >= len(first), 30, "the active worker")
            active.__exit__(None, None, None)
            assert taking_over.stats.acked == 0, "single active consumer: the standby waited"
            bus.publish_events(second)
            wait_for(lambda: taking_over.stats.acked >= len(second), 30, "the standby")
            wait_drained(bus, queue)
        finally:
            standby.__exit__(None, None, None)
    finally:
        if active.thread.is_alive():
            active.__exit__(None, None, None)
    # The standby dropped the accounts it had cached (stale once the first worker moved
    # on) before its first batch, so it loaded what the first worker committed.
    assert "the state store was written by another worker: dropping the cache" in caplog.text
    assert bus.updates() == replay(events)
