"""``inbox-rules watch`` against a running worker: the snapshot the worker answers, plus
the updates it publishes, must give the same inbox as the offline replay.

Needs the worker's side of the contract's requests: ``inbox.requests`` declared, snapshot
requests answered on ``reply_to`` (direct reply-to) with the request's
``correlation_id``, the ``categories`` filter and ``after``/``limit`` paging.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from contracts.client import Inbox
from tests.support.harness import (
    Bus,
    ThreadWorker,
    amqp_url,
    settings_for,
    wait_for,
)
from tests.support.oracle import final_view, replay
from tests.support.streams import event_stream
from worker.cli import main
from worker.settings import Settings
from worker.tools.watch import Watcher

pytestmark = pytest.mark.broker


def busiest(updates: list[dict[str, Any]]) -> tuple[str, str]:
    return Counter((u["account_id"], u["agent_id"]) for u in updates).most_common(1)[0][0]


def expected(updates: list[dict[str, Any]], account_id: str, agent_id: str,
             ) -> tuple[dict[str, frozenset[str]], dict[str, int], int]:
    """The oracle's final inbox of one agent: categories (non-empty), counts, last seq."""
    categories, counts = final_view(updates)
    inbox = {conversation: frozenset(cats) for (account, agent, conversation), cats
             in categories.items() if (account, agent) == (account_id, agent_id) and cats}
    seqs = [u["seq"] for u in updates if (u["account_id"], u["agent_id"]) == (account_id,
                                                                                 agent_id)]
    return inbox, counts[(account_id, agent_id)], max(seqs)


def assert_final(view: Inbox, updates: list[dict[str, Any]]) -> None:
    inbox, counts, seq = expected(updates, view.account_id, view.agent_id)
    assert view.synced
    assert view.seq == seq
    assert dict(view.conversations) == inbox
    assert view.counts == counts


def published_and_processed(bus: Bus, settings: Settings,
                            events: list[dict[str, Any]]) -> None:
    bus.publish_events(events)
    wait_for(bus.drained, 120, "the worker to consume every event", interval=0.2)


def test_once_after_the_worker_is_done_shows_the_replays_final_inbox(
        vhost: str, bus: Bus, tmp_path: Path) -> None:
    events = event_stream(seed=21, count=300, accounts=2)
    updates = replay(events)
    account_id, agent_id = busiest(updates)
    settings = settings_for(vhost, tmp_path / "state.sqlite3")
    with ThreadWorker(settings):
        published_and_processed(bus, settings, events)
        with Watcher(settings, account_id, agent_id, timeout=20) as watcher:
            view = watcher.sync()
        assert_final(view, updates)
        # Small pages and a filter: the same inbox, page by page, only those categories.
        with Watcher(settings, account_id, agent_id, timeout=20, page_limit=2,
                     categories=["all", "resolved"]) as watcher:
            paged = watcher.sync()
        assert paged.seq == view.seq and paged.counts == view.counts
        assert dict(paged.conversations) == {
            cid: cats for cid, cats in view.conversations.items()
            if {"all", "resolved"} & set(cats)}
        # An agent the worker never heard of: an empty inbox at seq 0.
        with Watcher(settings, account_id, "ag-nobody", timeout=20) as watcher:
            empty = watcher.sync()
        assert (empty.seq, dict(empty.conversations)) == (0, {})


def test_live_watch_follows_the_updates_from_an_empty_start(
        vhost: str, bus: Bus, tmp_path: Path) -> None:
    events = event_stream(seed=22, count=250, accounts=1)
    updates = replay(events)
    account_id, agent_id = busiest(updates)
    _inbox, _counts, last_seq = expected(updates, account_id, agent_id)
    settings = settings_for(vhost, tmp_path / "state.sqlite3")
    with ThreadWorker(settings), Watcher(settings, account_id, agent_id,
                                         timeout=20) as watcher:
        assert watcher.sync().seq == 0
        # Half the events first, then the watch starts applying, then the rest.
        published_and_processed(bus, settings, events[:120])
        bus.publish_events(events[120:])
        deadline = time.monotonic() + 120
        watcher.run(stop=lambda: watcher.view.seq >= last_seq
                    or time.monotonic() > deadline)
        assert_final(watcher.view, updates)
        assert watcher.snapshots == 1  # every update came through the queue, in order


def test_cli_once_prints_the_tabs_with_their_counts(vhost: str, bus: Bus,
                                                    tmp_path: Path) -> None:
    events = event_stream(seed=23, count=120, accounts=1)
    updates = replay(events)
    account_id, agent_id = busiest(updates)
    _inbox, counts, _seq = expected(updates, account_id, agent_id)
    settings = settings_for(vhost, tmp_path / "state.sqlite3")
    with ThreadWorker(settings):
        published_and_processed(bus, settings, events)
        result = CliRunner().invoke(
            main, ["watch", "--account", account_id, "--agent", agent_id, "--once",
                   "--timeout", "20"],
            env={"AMQP_URL": amqp_url(vhost), "COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    for tab, count in counts.items():
        assert f"{tab}  {count}" in result.output

