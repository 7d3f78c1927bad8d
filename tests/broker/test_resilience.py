"""Nothing is lost: a crashed and restarted worker, cut connections, a SIGTERM."""

from __future__ import annotations

import functools
import signal
from pathlib import Path

import pytest

from tests.support.harness import (
    Bus,
    ThreadWorker,
    WorkerProcess,
    close_connections,
    settings_for,
    wait_drained,
    wait_for,
)
from tests.support.oracle import final_view, replay
from tests.support.streams import encode, event_stream

pytestmark = pytest.mark.broker

EVENTS = 2000


def test_a_crashed_worker_restarted_mid_stream_loses_nothing(
        vhost: str, bus: Bus, tmp_path: Path) -> None:
    events = event_stream(seed=3, count=EVENTS)
    queue = bus.topology.events_queue
    bus.publish_events(events)
    with WorkerProcess.in_vhost(vhost, tmp_path) as worker:
        _start_and_get_going(worker, bus)
        assert worker.stop(signal.SIGKILL) == -signal.SIGKILL
        # What it held unacknowledged goes back to the queue with what it never got.
        wait_for(lambda: bus.ready(queue) > 0, 5, "killed mid-stream")
        worker.start()
        wait_drained(bus, queue)
        assert worker.stop() == 0, worker.log()
    assert bus.ready(queue) == 0
    assert final_view(bus.updates()) == final_view(replay(events))
    assert bus.ready(bus.topology.dead_letter_queue) == 0


def test_cut_connections_reconnect_and_end_like_an_offline_replay(
        vhost: str, bus: Bus, tmp_path: Path) -> None:
    events = event_stream(seed=4, count=EVENTS)
    queue = bus.topology.events_queue
    bus.publish_events(events)
    bus.close()  # only the worker's connection is left in this vhost
    probe = Bus(vhost)
    try:
        with ThreadWorker(settings_for(vhost, tmp_path / "state.sqlite3")) as worker:
            for threshold in (300, 2000):
                wait_for(functools.partial(_more_updates_than, probe, threshold), 30,
                         "updates to flow")
                probe.close()
                assert close_connections(vhost) >= 1
                probe = Bus(vhost)
            wait_drained(probe, queue)
            assert worker.link.reconnects >= 2
        assert probe.ready(queue) == 0
        received = probe.updates()
    finally:
        probe.close()
    assert final_view(received) == final_view(replay(events))


def test_sigterm_finishes_the_batch_acks_and_exits_zero(
        vhost: str, bus: Bus, tmp_path: Path) -> None:
    events = event_stream(seed=5, count=EVENTS)
    queue = bus.topology.events_queue
    bus.publish_events(events)
    with WorkerProcess.in_vhost(vhost, tmp_path) as worker:
        _start_and_get_going(worker, bus)
        assert worker.stop() == 0, worker.log()
        # It acked every event it handled (the batches it had started) and handed the
        # rest back in order: the queue holds exactly the events after the last one it
        # handled, in publish order; those it had received but not started come first,
        # marked redelivered (the stop drops the connection: the broker requeues them).
        left = bus.drain(queue)
        handled = len(events) - len(left)
        assert 0 < handled < len(events), "stopped mid-stream"
        assert [body for _m, _p, body in left] == encode(events)[handled:]
        redelivered = [method.redelivered for method, _p, _b in left]
        assert redelivered == sorted(redelivered, reverse=True), "handed back in order"
        bus.publish([body for _m, _p, body in left])
        worker.start()
        wait_drained(bus, queue)
        assert worker.stop() == 0, worker.log()
    assert bus.ready(queue) == 0
    assert "lost the connection" not in worker.log(), "heartbeats kept it up"
    # A clean stop publishes nothing twice: downstream sees exactly the clean run.
    assert bus.updates() == replay(events)


def _start_and_get_going(worker: WorkerProcess, bus: Bus) -> None:
    worker.start()
    wait_for(functools.partial(_more_updates_than, bus, 500), 30, "the worker to get going")


def _more_updates_than(bus: Bus, count: int) -> bool:
    return bus.ready("test.updates") > count
