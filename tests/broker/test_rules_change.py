"""New rule files at start: everything is re-categorised and published before the
worker consumes again."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from contracts import parse_event
from tests.support.harness import Bus, ThreadWorker, settings_for, wait_for
from tests.support.oracle import final_view
from tests.support.streams import encode, event_stream
from worker.domain.inbox import Inbox
from worker.rulebook import load_rules
from worker.rulebook.engine import default_rules_dir

pytestmark = pytest.mark.broker


def _groups_on_standard_too(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    shutil.copytree(default_rules_dir(), rules)
    path = rules / "inbox.yaml"
    text = path.read_text()
    changed = text.replace("{fact: account.plan, equals: pro}",
                           "{fact: account.plan, in: [pro, standard]}")
    assert changed != text
    path.write_text(changed)
    return rules


def test_changed_rules_recategorise_everything_before_consuming(
        vhost: str, bus: Bus, tmp_path: Path) -> None:
    events = event_stream(seed=6, count=300)
    new_rules_dir = _groups_on_standard_too(tmp_path)
    settings = settings_for(vhost, tmp_path / "state.sqlite3")
    bus.publish_events(events)
    with ThreadWorker(settings) as worker:
        wait_for(lambda: worker.stats.acked >= len(events), 30, "all events acked")
    with ThreadWorker(settings, new_rules_dir) as worker:
        queue = bus.topology.events_queue
        wait_for(lambda: bus.channel.queue_declare(queue, passive=True).method.consumer_count
                 > 0, 30, "the worker to consume again")
        adopted = worker.stats.updates
    received = bus.updates()
    causes = {u["cause_event_id"] for u in received[-adopted:]}
    new_rules = load_rules(new_rules_dir)
    assert adopted > 0 and causes == {f"rules:{new_rules.version}"}
    assert final_view(received) == final_view(_replay_then_adopt(events, new_rules_dir))


def _replay_then_adopt(events: list[dict[str, Any]], rules_dir: Path) -> list[dict[str, Any]]:
    inbox = Inbox(load_rules(None))
    updates = [u for body in encode(events) for u in inbox.handle(parse_event(body))]
    updates += inbox.adopt_rules(load_rules(rules_dir), datetime.now(UTC))
    return [u.model_dump(mode="json") for u in updates]
