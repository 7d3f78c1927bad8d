"""The reference downstream consumer without a broker or a terminal: :class:`InboxView`
on real update streams (``inbox-rules replay`` of a generated stream, through the
oracle), :class:`Watcher` against a double of pika's blocking connection, and the
rendering into a recording console."""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from contracts.requests import SnapshotReply, SnapshotRequest
from contracts.updates import CategoryUpdate
from tests.support.oracle import replay
from tests.support.streams import event_stream
from worker.amqp.topology import Topology
from worker.cli import main
from worker.settings import Settings
from worker.tools.watch import (
    DIRECT_REPLY_TO,
    SNAPSHOT_ROUTING_KEY,
    Applied,
    Buffered,
    Duplicate,
    Gap,
    InboxView,
    Result,
    Stale,
    Watcher,
    WatchError,
    render_view,
)

Inbox = dict[str, tuple[str, ...]]
SETTINGS = Settings(AMQP_URL="amqp://guest:guest@localhost/%2F")
REQUESTS_EXCHANGE = Topology.from_settings(SETTINGS).requests_exchange
UPDATES_EXCHANGE = Topology.from_settings(SETTINGS).updates_exchange


# -- one agent's real update stream -----------------------------------------------------
@dataclass(frozen=True)
class Stream:
    account_id: str
    agent_id: str
    updates: tuple[CategoryUpdate, ...]  # seq 1, 2, 3 ... in publish order

    def view(self, **options: Any) -> InboxView:
        return InboxView(self.account_id, self.agent_id, **options)

    def upto(self, seq: int) -> tuple[CategoryUpdate, ...]:
        return self.updates[:seq]

    def inbox_at(self, seq: int) -> Inbox:
        """The oracle's inbox after the updates up to ``seq``: the last categories per
        conversation, the empty ones left out (what the contract's snapshot lists)."""
        last: dict[str, list[str]] = {}
        for update in self.upto(seq):
            last[update.conversation_id] = update.categories
        return {cid: tuple(cats) for cid, cats in last.items() if cats}

    def counts_at(self, seq: int) -> dict[str, int]:
        return dict(self.updates[seq - 1].counts) if seq else {}

    def unread_counts_at(self, seq: int) -> dict[str, int]:
        return dict(self.updates[seq - 1].unread_counts) if seq else {}

    def unread_at(self, seq: int) -> set[str]:
        """The conversations whose last update up to ``seq`` said unread."""
        last: dict[str, bool] = {}
        for update in self.upto(seq):
            last[update.conversation_id] = update.unread
        return {cid for cid, unread in last.items() if unread}

    def snapshot(self, seq: int, *, after: str | None = None, limit: int | None = None,
                 categories: Sequence[str] | None = None) -> SnapshotReply:
        """The worker's reply at ``seq`` (a page of it with ``after``/``limit``), built
        from the oracle's updates as SnapshotReply documents it."""
        inbox = sorted(self.inbox_at(seq).items())
        if categories:
            inbox = [(cid, cats) for cid, cats in inbox if set(cats) & set(categories)]
        if after is not None:
            inbox = [(cid, cats) for cid, cats in inbox if cid > after]
        more = limit is not None and len(inbox) > limit
        page = inbox[:limit] if limit is not None else inbox
        return SnapshotReply(
            account_id=self.account_id, agent_id=self.agent_id, seq=seq,
            rules_version=self.updates[0].rules_version, counts=self.counts_at(seq),
            unread_counts=self.unread_counts_at(seq),
            conversations={cid: list(cats) for cid, cats in page},
            unread=sorted(cid for cid, _ in page if cid in self.unread_at(seq)),
            next_after=page[-1][0] if more else None)

    @property
    def last(self) -> int:
        return len(self.updates)


@cache
def stream() -> Stream:
    """The busiest agent of a generated stream (joins, transfers, resolves, deletes,
    re-sent events), its updates from ``inbox-rules replay``."""
    updates = replay(event_stream(seed=5, count=400, accounts=1))
    busiest = Counter((u["account_id"], u["agent_id"]) for u in updates).most_common(1)[0][0]
    mine = tuple(CategoryUpdate.model_validate(u) for u in updates
                 if (u["account_id"], u["agent_id"]) == busiest)
    assert [u.seq for u in mine] == list(range(1, len(mine) + 1))
    assert len(mine) > 60 and len(stream_conversations(mine)) > 8
    return Stream(busiest[0], busiest[1], mine)


def stream_conversations(updates: Sequence[CategoryUpdate]) -> set[str]:
    return {u.conversation_id for u in updates}


def assert_shows(view: InboxView, s: Stream, seq: int) -> None:
    """The view is exactly the oracle's inbox at ``seq``."""
    assert view.seq == seq
    assert dict(view.conversations) == s.inbox_at(seq)
    assert view.counts == s.counts_at(seq)
    assert view.unread == s.unread_at(seq) & set(view.conversations)
    assert view.unread_counts == s.unread_counts_at(seq)


def final_inbox(s: Stream) -> Inbox:
    """The final categories per conversation from the full update stream."""
    return s.inbox_at(s.last)


# -- InboxView --------------------------------------------------------------------------
def test_snapshot_then_updates_applied_in_seq_order() -> None:
    s = stream()
    view = s.view()
    start = s.last // 3
    loaded = view.load_snapshot(s.snapshot(start))
    assert (loaded.complete, loaded.next_after, loaded.results) == (True, None, ())
    assert view.synced
    assert_shows(view, s, start)
    for update in s.updates[start:]:
        assert view.apply(update) == Applied(update)
    assert dict(view.conversations) == final_inbox(s)
    assert_shows(view, s, s.last)
    assert view.tabs == ["all", "new", "mine", "primary", "resolved"]


def test_unknown_agent_starts_empty_at_seq_0() -> None:
    s = stream()
    view = s.view()
    view.load_snapshot(SnapshotReply(account_id=s.account_id, agent_id=s.agent_id, seq=0,
                                     rules_version="v", counts={}, conversations={}))
    assert (view.seq, dict(view.conversations), view.tabs) == (0, {}, [])
    for update in s.updates:
        assert isinstance(view.apply(update), Applied)
    assert dict(view.conversations) == final_inbox(s)


def test_duplicates_dropped_by_update_id() -> None:
    s = stream()
    view = s.view()
    view.load_snapshot(s.snapshot(0))
    for update in s.updates:
        assert isinstance(view.apply(update), Applied)
        # A redelivery: the same update again, at once and once more a little later.
        assert view.apply(update) == Duplicate(update.update_id, update.seq)
        if update.seq > 3:
            earlier = s.updates[update.seq - 4]
            assert view.apply(earlier) == Duplicate(earlier.update_id, earlier.seq)
    assert_shows(view, s, s.last)


def test_duplicate_window_is_bounded_and_older_repeats_are_stale() -> None:
    s = stream()
    view = s.view(duplicate_window=5)
    view.load_snapshot(s.snapshot(0))
    for update in s.updates[:20]:
        view.apply(update)
    assert view.apply(s.updates[19]) == Duplicate(s.updates[19].update_id, 20)
    # Forgotten by the window, still never applied twice: its seq is behind.
    assert view.apply(s.updates[2]) == Stale(3, 20)
    assert_shows(view, s, 20)


def test_stale_updates_ignored() -> None:
    s = stream()
    view = s.view()
    at = s.last // 2
    view.load_snapshot(s.snapshot(at))
    for update in s.updates:  # from the start: everything up to the snapshot is old
        result = view.apply(update)
        assert result == (Stale(update.seq, at) if update.seq <= at else Applied(update))
    assert_shows(view, s, s.last)


def test_forced_gap_detected_then_resync_ends_with_the_right_inbox() -> None:
    """Updates dropped on purpose from the replayed stream: the gap is seen, the gapped
    update is not applied, later ones wait, and a snapshot at the oracle's state of that
    moment brings the view to the exact final inbox."""
    s = stream()
    view = s.view()
    start = 10
    view.load_snapshot(s.snapshot(start))
    dropped = set(range(start + 6, start + 11))  # seqs 16..20 never arrive
    delivered = [u for u in s.updates[start:] if u.seq not in dropped]
    gap_at = None
    for index, update in enumerate(delivered):
        before = (view.seq, dict(view.conversations), dict(view.counts))
        result = view.apply(update)
        if update.seq < min(dropped):
            assert result == Applied(update)
            continue
        assert result == Gap(expected=min(dropped), got=max(dropped) + 1)
        assert (view.seq, dict(view.conversations), dict(view.counts)) == before
        assert not view.synced
        gap_at = index
        break
    assert gap_at is not None
    # The resync: what the downstream asks for now. Meanwhile the stream goes on.
    arrived_meanwhile = 7
    resync_seq = max(dropped) + 1 + arrived_meanwhile - 3  # the worker is a bit behind
    for update in delivered[gap_at + 1:gap_at + 1 + arrived_meanwhile]:
        assert view.apply(update) == Buffered(update.seq)
    assert view.buffered == arrived_meanwhile + 1
    loaded = view.load_snapshot(s.snapshot(resync_seq))
    assert loaded.complete and not loaded.resync_needed
    assert [type(r) for r in loaded.results] == [Stale] * 5 + [Applied] * 3
    assert view.synced
    for update in delivered[gap_at + 1 + arrived_meanwhile:]:
        assert view.apply(update) == Applied(update)
    assert dict(view.conversations) == final_inbox(s)
    assert_shows(view, s, s.last)


def test_updates_before_the_snapshot_are_buffered_then_applied_in_seq_order() -> None:
    s = stream()
    view = s.view()
    early = list(s.updates[:40])
    random.Random(3).shuffle(early)  # a redelivery can reorder them
    early += early[:5]  # and repeat some
    for update in early:
        assert view.apply(update) == Buffered(update.seq)
    assert dict(view.conversations) == {} and not view.synced
    loaded = view.load_snapshot(s.snapshot(25))
    kinds = Counter(type(r).__name__ for r in loaded.results)
    repeated_new = sum(1 for u in early[:5] if u.seq > 25)  # seen once: duplicates
    assert kinds == {"Stale": 25 + 5 - repeated_new, "Applied": 15,
                     "Duplicate": repeated_new}
    assert_shows(view, s, 40)


def test_gap_in_the_buffer_asks_for_another_snapshot() -> None:
    s = stream()
    view = s.view()
    for update in s.updates[:30]:
        if update.seq != 21:
            view.apply(update)
    loaded = view.load_snapshot(s.snapshot(12))
    assert loaded.resync_needed and not view.synced
    assert isinstance(loaded.results[-1], Gap) and loaded.results[-1] == Gap(21, 22)
    assert view.seq == 20 and view.buffered == 9  # 22..30 kept for after the next one
    assert isinstance(view.apply(s.updates[30]), Buffered)
    view.load_snapshot(s.snapshot(24))
    assert view.synced
    assert_shows(view, s, 31)


def test_pages_taken_at_different_seqs_combine_exactly() -> None:
    """Each page covers (after, next_after] at its own seq; an update applies to a
    conversation only above its page's seq; counts come from the newest page."""
    s = stream()
    view = s.view()
    seqs = iter((20, 26, 33, 33, 41, 45, 52, 60, 60, 70))
    after: str | None = None
    results: list[Result] = []
    pages = 0
    buffered_up_to = 0
    while True:
        seq = next(seqs)
        # The updates published while the pages were taken reach the queue too.
        for update in s.updates[buffered_up_to:seq]:
            view.apply(update)
        buffered_up_to = seq
        loaded = view.load_snapshot(s.snapshot(seq, after=after, limit=3), after=after)
        pages += 1
        results.extend(loaded.results)
        if loaded.complete:
            break
        assert not view.synced and dict(view.conversations) == {}
        after = loaded.next_after
    assert pages >= 3
    # Every page but the newest already holds what some later updates did: only the
    # newest page's seq is the inbox's, and the view shows exactly that one.
    assert_shows(view, s, seq)
    for update in s.updates[seq:]:
        assert view.apply(update) == Applied(update)
    assert_shows(view, s, s.last)


def test_pages_never_show_older_states_than_their_own() -> None:
    """Before the updates reach the newest page's seq, each page's conversations stay
    at least as new as that page: an older update never rolls them back, nor the
    counts."""
    s = stream()
    view = s.view()
    first = s.last // 4
    page_seqs = (first, first + 25, first + 50)
    size = -(-len(s.inbox_at(first) | s.inbox_at(first + 25) | s.inbox_at(first + 50)) // 3)
    after: str | None = None
    ranges: list[tuple[str | None, str | None, int]] = []
    for seq in page_seqs:
        reply = s.snapshot(seq, after=after, limit=size if seq != page_seqs[-1] else None)
        ranges.append((after, reply.next_after, seq))
        loaded = view.load_snapshot(reply, after=after)
        after = loaded.next_after
    assert loaded.complete and view.seq == first and view.counts == s.counts_at(first + 50)
    delivered = first + 15  # only these have come out of the queue so far
    for update in s.updates[first:delivered]:
        assert view.apply(update) == Applied(update)

    def expected(cid: str) -> tuple[str, ...] | None:
        for low, high, seq in ranges:
            if (low is None or cid > low) and (high is None or cid <= high):
                return s.inbox_at(max(seq, delivered)).get(cid)
        raise AssertionError(cid)

    every = stream_conversations(s.updates)
    want = {cid: cats for cid in every if (cats := expected(cid)) is not None}
    assert dict(view.conversations) == want
    # Applying every update as it comes would have rolled some conversations back.
    rolled_back = [cid for cid in stream_conversations(s.updates[first:delivered])
                   if s.inbox_at(delivered).get(cid) != want.get(cid)]
    assert rolled_back
    assert view.counts == s.counts_at(first + 50)
    for update in s.updates[delivered:]:
        assert view.apply(update) == Applied(update)
    assert_shows(view, s, s.last)


def test_pages_must_follow_each_other() -> None:
    s = stream()
    view = s.view()
    first = s.snapshot(10, limit=2)
    assert first.next_after is not None
    view.load_snapshot(first)
    with pytest.raises(ValueError, match="does not follow"):
        view.load_snapshot(s.snapshot(10, after="zzz", limit=2), after="zzz")
    # A first page again starts over.
    assert view.load_snapshot(s.snapshot(10)).complete
    assert_shows(view, s, 10)


def test_category_filter_keeps_only_those_conversations_and_all_counts() -> None:
    s = stream()
    view = s.view(categories=["mine", "resolved"])
    view.load_snapshot(s.snapshot(15, categories=["mine", "resolved"]))
    for update in s.updates[15:]:
        view.apply(update)
    want = {cid: cats for cid, cats in final_inbox(s).items()
            if {"mine", "resolved"} & set(cats)}
    assert dict(view.conversations) == want
    assert view.counts == s.counts_at(s.last)
    assert view.default_tab() == "mine"


def test_another_agents_update_is_a_mistake() -> None:
    s = stream()
    other = s.updates[0].model_copy(update={"agent_id": "someone-else"})
    with pytest.raises(ValueError, match="not this view's agent"):
        s.view().apply(other)


# -- rendering --------------------------------------------------------------------------
def test_render_shows_tabs_with_badge_counts_and_the_primary_tab() -> None:
    s = stream()
    view = s.view()
    view.load_snapshot(s.snapshot(s.last))
    console = Console(record=True, width=120, color_system=None)
    console.print(render_view(view, status="live"))
    text = console.export_text()
    for tab, count in s.counts_at(s.last).items():
        assert f"{tab}  {count}" in text
    for cid in view.in_tab("primary")[:5]:
        marked = f"● {cid}" in text
        assert marked == (cid in view.unread) and (marked or f"  {cid}" in text)
    unread = s.unread_counts_at(s.last)
    assert any(unread.values()), "the stream leaves some conversation unread"
    for tab, count in unread.items():
        shown = f"{tab}  {s.counts_at(s.last)[tab]} ({count} unread)"
        assert (shown in text) == bool(count), shown
    assert f"seq {s.last}" in text and "live" in text
    assert f"inbox of {s.agent_id} in {s.account_id}" in text


def test_render_lists_the_chosen_tab_and_cuts_long_lists() -> None:
    s = stream()
    view = s.view()
    view.load_snapshot(s.snapshot(s.last))
    console = Console(record=True, width=120, color_system=None)
    console.print(render_view(view, "all", max_rows=2))
    text = console.export_text()
    listed = view.in_tab("all")
    assert listed[0] in text and listed[1] in text and listed[2] not in text
    assert f"and {len(listed) - 2} more" in text


# -- Watcher against a double of pika's BlockingConnection ------------------------------
@dataclass
class FakeWorker:
    """A blocking connection and channel in one, with a worker behind them that answers
    snapshot requests at ``at`` (None: never) and publishes ``s``'s updates when told."""

    s: Stream
    at: int | None = 0
    returns: bool = False
    calls: list[str] = field(default_factory=list)
    requests: list[tuple[SnapshotRequest, Any, bool]] = field(default_factory=list)
    pending: deque[Callable[[], None]] = field(default_factory=deque)
    consumers: dict[str, Callable[..., None]] = field(default_factory=dict)
    on_return: Callable[..., None] | None = None
    is_open: bool = True
    is_closed: bool = False

    # connection
    def __call__(self, _params: object) -> FakeWorker:
        self.calls.append("connect")
        return self

    def channel(self) -> FakeWorker:
        return self

    def close(self) -> None:
        self.is_open = False

    def process_data_events(self, time_limit: float = 0) -> None:
        if not self.pending:
            time.sleep(min(time_limit, 0.005))
        while self.pending:
            self.pending.popleft()()

    # channel
    def exchange_declare(self, exchange: str, **_kw: object) -> None:
        self.calls.append(f"exchange_declare {exchange}")

    def queue_declare(self, queue: str, **kw: object) -> Any:
        assert kw == {"exclusive": True, "auto_delete": True}
        self.calls.append("queue_declare")
        return _Ok(_Ok(queue="amq.gen-1"))

    def queue_bind(self, queue: str, exchange: str, routing_key: str) -> None:
        self.calls.append(f"queue_bind {exchange} {routing_key}")

    def basic_consume(self, queue: str, callback: Callable[..., None],
                      auto_ack: bool = False) -> None:
        assert auto_ack
        self.calls.append(f"basic_consume {queue}")
        self.consumers[queue] = callback

    def add_on_return_callback(self, callback: Callable[..., None]) -> None:
        self.on_return = callback

    def basic_publish(self, exchange: str, routing_key: str, body: bytes,
                      properties: Any, mandatory: bool = False) -> None:
        assert (exchange, routing_key) == (REQUESTS_EXCHANGE, SNAPSHOT_ROUTING_KEY)
        # RabbitMQ's rule: the direct reply-to is consumed before it is published with.
        assert DIRECT_REPLY_TO in self.consumers
        self.calls.append("basic_publish")
        request = SnapshotRequest.model_validate_json(body)
        self.requests.append((request, properties, mandatory))
        if self.returns:
            on_return = self.on_return
            assert on_return is not None
            method = _Ok(reply_text="NO_ROUTE")
            self.pending.append(lambda: on_return(self, method, properties, body))
        elif self.at is not None:
            reply = self.s.snapshot(self.at, after=request.after, limit=request.limit)
            answer = _Ok(correlation_id=properties.correlation_id)
            deliver = self.consumers[DIRECT_REPLY_TO]
            self.pending.append(
                lambda: deliver(self, None, answer, reply.model_dump_json().encode()))

    def publish_updates(self, updates: Sequence[CategoryUpdate]) -> None:
        deliver = self.consumers["amq.gen-1"]
        for update in updates:
            body = update.model_dump_json().encode()
            self.pending.append(partial(deliver, self, None, None, body))


class _Ok:
    def __init__(self, *args: Any, **attributes: Any) -> None:
        if args:
            self.method = args[0]
        self.__dict__.update(attributes)


def watcher_for(fake: FakeWorker, **options: Any) -> Watcher:
    return Watcher(SETTINGS, fake.s.account_id, fake.s.agent_id, connect=fake, **options)


def test_watcher_binds_before_it_asks_and_syncs() -> None:
    s = stream()
    fake = FakeWorker(s, at=30)
    with watcher_for(fake) as watcher:
        view = watcher.sync()
    assert fake.calls == [
        "connect", f"exchange_declare {REQUESTS_EXCHANGE}", f"exchange_declare {UPDATES_EXCHANGE}",
        "queue_declare", f"queue_bind {UPDATES_EXCHANGE} {s.account_id}.{s.agent_id}",
        "basic_consume amq.gen-1", f"basic_consume {DIRECT_REPLY_TO}", "basic_publish"]
    request, properties, mandatory = fake.requests[0]
    assert (request.account_id, request.agent_id, request.after) == (s.account_id,
                                                                      s.agent_id, None)
    assert properties.reply_to == DIRECT_REPLY_TO and properties.correlation_id
    assert mandatory
    assert_shows(view, s, 30)
    assert watcher.status == "live" and not fake.is_open


def test_watcher_resyncs_on_a_gap_and_pages() -> None:
    s = stream()
    fake = FakeWorker(s, at=10)
    renders: list[tuple[int, str]] = []
    watcher = watcher_for(fake, page_limit=4, render_interval=0,
                          on_change=lambda view, status: renders.append((view.seq, status)))
    watcher.open()
    watcher.sync()
    first_asks = len(fake.requests)
    assert first_asks > 1 and fake.requests[0][0].after is None
    # Updates 11..20 arrive, 21..25 are lost; the worker has published up to 40.
    fake.publish_updates(s.updates[10:20] + s.updates[25:40])
    fake.at = 40
    watcher.run(stop=lambda: watcher.view.seq >= 40 and watcher.view.synced)
    asks = fake.requests[first_asks:]
    assert asks and asks[0][0].after is None  # a new snapshot from its first page
    assert len({p.correlation_id for _, p, _ in fake.requests}) == len(fake.requests)
    assert all(r.limit == 4 for r, _, _ in fake.requests)
    assert_shows(watcher.view, s, 40)
    assert watcher.snapshots == 2
    assert renders and renders[-1] == (40, "live")
    watcher.close()


def test_watcher_says_when_no_worker_answers() -> None:
    fake = FakeWorker(stream(), at=None)
    with watcher_for(fake, timeout=0.2) as watcher, \
            pytest.raises(WatchError, match=r"no snapshot reply within 0\.2 s"):
        watcher.sync()


def test_watcher_says_when_no_worker_is_bound() -> None:
    fake = FakeWorker(stream(), returns=True)
    with watcher_for(fake) as watcher, pytest.raises(WatchError, match="no worker is bound"):
        watcher.sync()


def test_watcher_refuses_ids_that_cannot_be_routing_keys() -> None:
    with pytest.raises(WatchError, match="account_id"):
        Watcher(SETTINGS, "acc.1", "ag-1")
    with pytest.raises(WatchError, match="categories"):
        Watcher(SETTINGS, "acc-1", "ag-1", categories=["Not A Name"])


def test_cli_watch_reports_bad_input_without_a_broker() -> None:
    result = CliRunner().invoke(main, ["watch", "--account", "a#b", "--agent", "ag-1", "--once"])
    assert result.exit_code == 2
    assert "bad watch request: account_id" in result.output


def test_names_match_the_contract_document() -> None:
    from contracts import asyncapi

    assert (REQUESTS_EXCHANGE, DIRECT_REPLY_TO) == (asyncapi.REQUESTS_EXCHANGE,
                                                    asyncapi.DIRECT_REPLY_TO)


# -- the example in docs/downstream.md ---------------------------------------------------
class _RecordingChannel:
    """Just enough of a pika channel for the docs example: it records its requests."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, Any], str]] = []

    def queue_declare(self, queue: str, **_kw: object) -> Any:
        return _Ok(_Ok(queue="amq.gen-2"))

    def queue_bind(self, *_args: object, **_kw: object) -> None:
        pass

    def basic_consume(self, *_args: object, **_kw: object) -> None:
        pass

    def basic_publish(self, exchange: str, routing_key: str, body: str, mandatory: bool,
                      properties: Any) -> None:
        assert (exchange, routing_key, mandatory) == ("inbox.requests", "snapshot", True)
        self.requests.append((json.loads(body), properties.correlation_id))


def test_docs_example_resyncs_on_a_forced_gap(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.support.harness import REPO

    text = (REPO / "docs" / "downstream.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    example: dict[str, Any] = {"__name__": "downstream_example"}
    exec(compile(code, "docs/downstream.md", "exec"), example)
    s = stream()
    channel = _RecordingChannel()
    inbox = example["Inbox"](channel, s.account_id, s.agent_id)

    answered: set[str] = set()

    def answer(seq: int, limit: int | None = None) -> None:
        request, correlation_id = channel.requests[-1]
        answered.add(correlation_id)
        page = s.snapshot(seq, after=request.get("after"), limit=limit)
        inbox.on_reply(None, None, _Ok(correlation_id=correlation_id),
                       page.model_dump_json().encode())

    def deliver(updates: Sequence[CategoryUpdate]) -> None:
        for update in updates:
            inbox.on_update(None, None, None, update.model_dump_json().encode())

    b = s.last // 2  # mid-stream: a full inbox
    deliver(s.updates[b - 8:b + 12])  # before the snapshot at b: kept
    answer(b)
    assert inbox.seq == b + 12
    # Repeats, then updates b+21..b+25 lost: a gap.
    deliver(s.updates[b + 12:b + 20] + s.updates[b + 14:b + 18] + s.updates[b + 25:b + 40])
    assert inbox.seq is None and len(channel.requests) == 2
    while channel.requests[-1][1] not in answered:  # the resync: small pages, moving seq
        answer(b + 30 + len(channel.requests), limit=3)
    assert len(channel.requests) > 4 and inbox.seq == b + 40
    deliver(s.updates[b + 40:])
    assert inbox.seq == s.last
    assert {c: tuple(cats) for c, cats in inbox.conversations.items()} == final_inbox(s)
    assert inbox.counts == s.counts_at(s.last)
    assert f"seq {s.last}:" in capsys.readouterr().out


def test_a_number_seen_again_under_other_rules_asks_for_a_snapshot() -> None:
    """A worker that crashed between publishing and committing and came back with new
    rule files numbers those updates again: stale by seq, but not the same update."""
    s = stream()
    view = s.view()
    view.load_snapshot(s.snapshot(0))
    for update in s.updates[:10]:
        view.apply(update)
    renumbered = s.updates[9].model_copy(update={"update_id": "f" * 32,
                                                 "rules_version": "other-rules"})
    assert view.apply(renumbered) == Gap(11, 10)
    assert not view.synced
