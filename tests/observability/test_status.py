"""The status line: at most one per interval, only while busy, idle time not counted."""

from __future__ import annotations

import logging

import pytest

from worker.observability.status import StatusLine


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_emits_at_most_every_interval_while_busy(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    status = StatusLine(30, clock=clock)
    caplog.set_level(logging.INFO, logger="worker.status")

    clock.now = 10
    assert status.tick(consumed=100, published=90, dead_lettered=1, unacked=20) is None
    clock.now = 30
    line = status.tick(consumed=300, published=250, dead_lettered=2, unacked=50,
                       queue_depth=1200)
    assert line == ("status: 10.0 events/s, 8.3 updates/s, 2 dead letter(s), "
                    "lag 50 unacked, 1200 queued (last 30 s)")
    assert [r.getMessage() for r in caplog.records] == [line]
    assert caplog.records[0].data["events_per_s"] == 10.0  # type: ignore[attr-defined]

    clock.now = 45  # busy again, but the last line is only 15 s old
    assert status.tick(consumed=400, published=300, dead_lettered=2, unacked=0) is None
    clock.now = 60
    assert status.tick(consumed=600, published=300, dead_lettered=2, unacked=0) == (
        "status: 10.0 events/s, 1.7 updates/s, 0 dead letter(s), lag 0 unacked (last 30 s)")


def test_quiet_when_idle_and_idle_time_does_not_dilute_the_rate(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    status = StatusLine(30, clock=clock)
    caplog.set_level(logging.INFO, logger="worker.status")
    for second in range(1, 3600, 5):  # an hour with nothing to do
        clock.now = second
        assert status.tick(consumed=0, published=0, dead_lettered=0, unacked=0) is None
    assert caplog.records == []

    start = clock.now
    clock.now = start + 15
    assert status.tick(consumed=300, published=0, dead_lettered=0, unacked=0) is None
    clock.now = start + 30
    line = status.tick(consumed=600, published=0, dead_lettered=0, unacked=0)
    assert line is not None and line.startswith("status: 20.0 events/s")  # not 600/3630

    clock.now += 300
    assert status.tick(consumed=600, published=0, dead_lettered=0, unacked=0) is None


def test_interval_zero_turns_it_off() -> None:
    clock = FakeClock()
    status = StatusLine(0, clock=clock)
    clock.now = 1000
    assert status.tick(consumed=5, published=5, dead_lettered=0, unacked=0) is None
