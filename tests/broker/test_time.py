"""Categories that change as time passes, with the real worker and broker (docs/time.md).

Rule files with a short threshold (overdue after 6 s of waiting, and a 300 s one never
reached here), events stamped with the test's clock (the worker's too: one machine, no
skew). The worker publishes each crossing live, shortly after its instant (its time lag
plus a look at most a second later); a SIGKILL after a crossing fell due and before it
was published loses nothing (the store still has it due: the restarted worker, on an
idle queue, finds out it is the active consumer and makes it); and downstream ends up
where ``inbox-rules replay --until`` the same instant does, update for update.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.support.harness import Bus, WorkerProcess, sla_rules, wait_for
from tests.support.oracle import final_view
from tests.support.streams import encode
from worker.cli import main
from worker.domain.updates import format_time

pytestmark = pytest.mark.broker

# Seconds of waiting: overdue. Long enough for the harness to see an event handled and
# acknowledged (two rabbitmqctl calls: over a second each on a slow machine) and pause
# the worker before the crossing falls due.
THRESHOLD = 6
LAG = 0.2  # INBOX_RULES_TIME_LAG


def _rules(tmp_path: Path) -> Path:
    return sla_rules(tmp_path, THRESHOLD)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Upstream:
    """Events stamped with the time they are published at."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.events: list[dict[str, Any]] = []
        self.sequences: dict[str, int] = {}

    def send(self, kind: str, conversation: str | None = None,
             **data: Any) -> datetime:
        now = datetime.now(UTC)
        scope = conversation or ""
        self.sequences[scope] = self.sequences.get(scope, 0) + 1
        event: dict[str, Any] = {"event_id": f"e-{len(self.events) + 1}", "type": kind,
                                 "account_id": "acc-1", "occurred_at": _iso(now),
                                 "sequence": self.sequences[scope], "data": data}
        if conversation is not None:
            event["conversation_id"] = conversation
        self.events.append(event)
        self.bus.publish_events([event])
        return datetime.fromisoformat(event["occurred_at"])


class Downstream:
    """Every update received, with when it arrived."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.received: list[tuple[float, dict[str, Any]]] = []

    def poll(self) -> list[dict[str, Any]]:
        """Take what arrived, each stamped with when it was received (at most 0.1 s
        after the broker had it)."""
        for _method, _properties, body in self.bus.take(self.bus.updates_queue, quiet=0.1):
            self.received.append((time.time(), json.loads(body)))
        return [u for _, u in self.received]

    def caused_by(self, cause: str) -> list[tuple[float, dict[str, Any]]]:
        self.poll()
        return [(at, u) for at, u in self.received if u["cause_event_id"] == cause]


def _replay_until(events: list[dict[str, Any]], rules: Path,
                  until: datetime) -> list[dict[str, Any]]:
    stdin = b"".join(body + b"\n" for body in encode(events))
    result = CliRunner().invoke(main, ["replay", "-", "--rules", str(rules),
                                       "--until", until.isoformat()],
                                input=stdin, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_crossings_live_through_a_sigkill_and_equal_to_replay_until_the_same_instant(
        vhost: str, bus: Bus, tmp_path: Path) -> None:
    rules = _rules(tmp_path)
    worker = WorkerProcess.in_vhost(vhost, tmp_path, rules_dir=rules, time_lag=LAG)
    upstream, downstream = Upstream(bus), Downstream(bus)
    worker.start()
    try:
        worker.wait_ready()
        # Live: two chats nobody answers, one answered in time.
        upstream.send("account.updated", plan="free", agents=["ag-1", "ag-2"], groups={})
        created = upstream.send("conversation.created", "c-1", group_id=None)
        upstream.send("conversation.created", "c-2", group_id=None)
        upstream.send("conversation.created", "c-3", group_id=None)
        upstream.send("message.created", "c-3", author="agent", agent_id="ag-1")
        first = f"time:{format_time(created + timedelta(seconds=THRESHOLD))}"
        wait_for(lambda: len({u["conversation_id"] for _, u in downstream.caused_by(first)})
                 >= 1, 20, "the first crossing, live")
        crossed = downstream.caused_by(first)
        due = (created + timedelta(seconds=THRESHOLD)).timestamp()
        arrivals = [at for at, _ in crossed]
        assert min(arrivals) >= due + LAG, "never before the instant plus the lag"
        assert max(arrivals) <= due + LAG + 1.0 + 3.0, "live: within a look or so"
        wait_for(lambda: {(u["agent_id"], u["conversation_id"])
                          for _, u in downstream.caused_by(first)}
                 >= {("ag-1", "c-1"), ("ag-2", "c-1")}, 10, "c-1 overdue for both agents")
        c2_instant = format_time(datetime.fromisoformat(upstream.events[2]["occurred_at"])
                                 + timedelta(seconds=THRESHOLD))
        wait_for(lambda: any(u["conversation_id"] == "c-2" and "overdue" in u["added"]
                             for u in downstream.poll()), 10, f"c-2 overdue ({c2_instant})")
        assert not any(u["conversation_id"] == "c-3" and "overdue" in u["categories"]
                       for u in downstream.poll()), "answered in time: never overdue"

        # A SIGKILL after a crossing fell due, before the worker could publish it.
        visitor = upstream.send("message.created", "c-3", author="visitor")
        wait_for(lambda: any(u["cause_event_id"] == upstream.events[-1]["event_id"]
                             for u in downstream.poll()) or bus.drained(), 10,
                 "the visitor's message handled")
        wait_for(bus.drained, 10, "every event acknowledged")
        worker.pause()  # hung: it cannot publish the crossing when it falls due
        instant = visitor + timedelta(seconds=THRESHOLD)
        assert time.time() < instant.timestamp() + LAG, (
            "the worker was paused only after the crossing fell due: THRESHOLD is too "
            "short for this machine's harness")
        time.sleep(max(0.0, instant.timestamp() + LAG + 1.5 - time.time()))
        worker.kill()
        cause = f"time:{format_time(instant)}"
        assert downstream.caused_by(cause) == [], "the crossing was not published"
        worker.start()
        wait_for(lambda: len(downstream.caused_by(cause)) >= 2, 20,
                 "the crossing made after the restart (idle queue: the worker ticks)")
        assert {u["agent_id"] for _, u in downstream.caused_by(cause)} == {"ag-1", "ag-2"}
        until = datetime.now(UTC) - timedelta(seconds=LAG)
        time.sleep(1.5)
        received = downstream.poll()
    finally:
        worker.stop()
    expected = _replay_until(upstream.events, rules, until)
    assert final_view(received) == final_view(expected)
    by_id = {u["update_id"]: u for u in received}
    assert len(by_id) == len(received) or all(
        by_id[u["update_id"]] == u for u in received), "a repeated update repeats its body"
    assert by_id == {u["update_id"]: u for u in expected}, "update for update"
    assert not any("very_overdue" in u["categories"] for u in received)
