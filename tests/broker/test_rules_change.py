"""Changed rule files (a restart with new files, or SIGHUP): every account adopts the new
rules, and downstream ends up where a clean run under the new rules would.

An account adopts new rules when an event touches it (before the event's own updates);
a paced sweep reaches every other stored account once the worker is the active consumer
(it has received a delivery: a hot standby never sweeps). Each adoption publishes the
diff under the cause ``rules:<version>:<generation>`` (the account's n-th adoption),
stamped with the account's last event time, so it is the same update, byte for byte, as
the offline :meth:`Inbox.adopt_rules` gives.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from contracts import parse_event
from tests.support.harness import (
    Bus,
    ThreadWorker,
    WorkerProcess,
    settings_for,
    wait_drained,
    wait_for,
)
from tests.support.oracle import Final, final_view, replay
from tests.support.streams import encode, envelope, event_stream
from worker.domain.inbox import Inbox
from worker.rulebook import load_rules
from worker.rulebook.engine import default_rules_dir
from worker.store.sqlite import SqliteStore

pytestmark = pytest.mark.broker

GROUPS_ON_PRO = "{fact: account.plan, equals: pro}"
GROUPS_ON_STANDARD_TOO = "{fact: account.plan, in: [pro, standard]}"


def _copy_of_default_rules(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    shutil.copytree(default_rules_dir(), rules)
    return rules


def _groups_on_standard_too(rules: Path) -> Path:
    """Edit the rule files in place: groups route chats on the standard plan too."""
    path = rules / "inbox.yaml"
    text = path.read_text()
    changed = text.replace(GROUPS_ON_PRO, GROUPS_ON_STANDARD_TOO)
    assert changed != text
    path.write_text(changed)
    return rules


def _new_chat(account_id: str) -> dict[str, Any]:
    """An event after the stream, for an account the stream already has."""
    return envelope("conversation.created", account_id, {"group_id": None},
                    event_id="after-the-rules-change", occurred_at="2026-12-01T00:00:00Z",
                    conversation_id="c-after-the-rules-change", sequence=1)


def test_restarted_with_changed_rules_every_account_adopts_them(
        vhost: str, bus: Bus, tmp_path: Path) -> None:
    events = event_stream(seed=6, count=300)
    accounts = {e["account_id"] for e in events}
    new_rules_dir = _groups_on_standard_too(_copy_of_default_rules(tmp_path))
    settings = settings_for(vhost, tmp_path / "state.sqlite3")
    bus.publish_events(events)
    with ThreadWorker(settings) as worker:
        wait_for(lambda: worker.stats.acked >= len(events), 30, "all events acked")
    before = bus.updates()
    assert before == replay(events)
    # No adoption before a delivery (a hot standby sends none): one event for a known
    # account makes the worker the active consumer. The event was queued before the
    # adoption the worker then sends, so it is evaluated under the rules in force, the
    # old ones; then every account adopts the new ones, swept.
    after_change = _new_chat(events[-1]["account_id"])
    with ThreadWorker(settings, new_rules_dir) as worker:
        bus.publish_events([after_change])
        wait_for(lambda: worker.stats.acked >= 1
                 and worker.stats.swept_accounts >= len(accounts) - 1, 30,
                 "the event and the sweep of every other account")
        wait_drained(bus, bus.topology.events_queue)
    after = bus.updates()
    new_rules = load_rules(new_rules_dir)
    expected = _replay_then_adopt(events, new_rules_dir, queued=[after_change])
    old_version = load_rules(None).version
    queued_first = {u["rules_version"] for u in after
                    if u["cause_event_id"] == after_change["event_id"]}
    assert queued_first == {old_version}, "queued before the adoption: the rules in force"
    _assert_adopted(before, after, expected, new_rules.version, generation=1,
                    earlier=old_version)
    assert _nonempty(final_view(before + after)) == _nonempty(
        final_view(replay([*events, after_change], new_rules_dir)))
    _assert_every_account_follows(settings.state_path, new_rules.version)


def test_sighup_with_changed_rule_files_every_account_adopts_them(
        vhost: str, bus: Bus, tmp_path: Path) -> None:
    events = event_stream(seed=6, count=300)
    rules_dir = _copy_of_default_rules(tmp_path)
    clean = replay(events)
    bus.publish_events(events)
    with WorkerProcess.in_vhost(vhost, tmp_path, rules_dir=rules_dir) as worker:
        worker.start()
        wait_drained(bus, bus.topology.events_queue)
        wait_for(lambda: bus.ready(bus.updates_queue) >= len(clean), 30,
                 "every update of the stream", alive=worker)
        before = bus.updates()
        assert before == clean
        # Edited in place, then SIGHUP: no event follows, the sweep alone adopts them.
        _groups_on_standard_too(rules_dir)
        new_rules = load_rules(rules_dir)
        expected = _replay_then_adopt(events, rules_dir)
        assert expected, "the edit changes some categories of this stream"
        assert worker.process is not None
        worker.process.send_signal(signal.SIGHUP)
        wait_for(lambda: bus.ready(bus.updates_queue) >= len(expected), 30,
                 "the adoption updates", alive=worker)
        assert worker.stop() == 0, worker.log_tail()
    assert f"partition 0: rules version {new_rules.version} in force" in worker.log()
    after = bus.updates()
    _assert_adopted(before, after, expected, new_rules.version, generation=1)
    assert _nonempty(final_view(before + after)) == _nonempty(
        final_view(replay(events, rules_dir)))
    _assert_every_account_follows(tmp_path / "state.sqlite3", new_rules.version)


def _replay_then_adopt(events: list[dict[str, Any]], rules_dir: Path,
                       then: list[dict[str, Any]] | None = None,
                       queued: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Offline: the stream under the default rules, then the ``queued`` events (still
    under them), then every account adopts the rules of ``rules_dir``, then the
    ``then`` events; the updates after the stream."""
    inbox = Inbox(load_rules(None))
    for body in encode(events):
        inbox.handle(parse_event(body))
    updates = [u for body in encode(queued or []) for u in inbox.handle(parse_event(body))]
    updates += inbox.adopt_rules(load_rules(rules_dir))
    updates += [u for body in encode(then or []) for u in inbox.handle(parse_event(body))]
    parsed: list[dict[str, Any]] = [json.loads(u.body) for u in updates]
    return parsed


def _assert_adopted(before: list[dict[str, Any]], after: list[dict[str, Any]],
                    expected: list[dict[str, Any]], version: str, generation: int,
                    earlier: str | None = None) -> None:
    """``earlier``: the version of the updates caused before the adoption, if any."""
    adoptions = [u for u in after if u["cause_event_id"].startswith("rules:")]
    assert adoptions, "the new rules changed nothing downstream"
    assert {u["cause_event_id"] for u in adoptions} == {f"rules:{version}:{generation}"}
    first = after.index(adoptions[0])
    assert all(u["rules_version"] == version for u in after[first:])
    assert all(u["rules_version"] == earlier for u in after[:first])
    # Exactly the offline adoption's updates (ids, seqs, counts, times), published once;
    # accounts are swept in any order, so compare them in (account, agent, seq) order.
    def order(u: dict[str, Any]) -> tuple[str, str, int]:
        return u["account_id"], u["agent_id"], u["seq"]

    assert sorted(after, key=order) == sorted(expected, key=order)
    assert final_view(before + after) == final_view(before + expected)
    # No update_id is ever reused for other content (here: none is reused at all).
    ids = [u["update_id"] for u in before + after]
    assert len(set(ids)) == len(ids)


def _nonempty(view: Final) -> Final:
    """A final view without the (agent, conversation) pairs that end in no category
    (an agent the old rules showed a chat to, and the new rules never would, ends with
    [] downstream while a clean run under the new rules never mentions the pair)."""
    categories, counts = view
    return {key: value for key, value in categories.items() if value}, counts


def _assert_every_account_follows(state_path: Path, version: str) -> None:
    store = SqliteStore(state_path)
    try:
        assert store.accounts_behind(version, "", 1000) == []
    finally:
        store.close()
