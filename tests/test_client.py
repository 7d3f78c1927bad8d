"""The downstream client without a broker: :class:`InboxKeeper` on real update streams
(``inbox-rules replay`` of a generated stream, through the oracle), and
:class:`InboxMirror` against a double of pika's blocking connection with a worker
behind it (tests/amqp_doubles.py). The client's import isolation, in a fresh
interpreter."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pika.exceptions
import pytest

from contracts.client import (
    Applied,
    Buffered,
    Duplicate,
    Gap,
    InboxKeeper,
    InboxMirror,
    MirrorError,
    NewRules,
    Stale,
)
from contracts.requests import SnapshotReply, SnapshotRequest
from contracts.updates import CategoryUpdate
from tests.amqp_doubles import BlockingWorker
from tests.support.agent_streams import Stream, agent_streams, stream
from tests.support.harness import REPO


# -- what the client imports --------------------------------------------------------------
def test_the_client_imports_no_worker_code_and_no_durable_rules() -> None:
    """In a fresh interpreter: ``import contracts.client`` loads pika, pydantic and the
    contract's models, nothing of the worker and nothing of durable-rules."""
    probe = ("import sys, contracts.client\n"
             "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
             "('worker', 'durable', 'durable_rules_engine', 'rules', 'psycopg', 'yaml'))\n"
             "assert 'pika' in sys.modules and 'pydantic' in sys.modules\n"
             "print(','.join(bad))\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"contracts.client imports {result.stdout.strip()}"


# -- InboxKeeper --------------------------------------------------------------------------
def assert_shows(keeper: InboxKeeper, s: Stream, seq: int) -> None:
    """The keeper, and a picture of it, are exactly the oracle's inbox at ``seq``."""
    picture = keeper.picture()
    assert keeper.seq == picture.seq == seq
    assert dict(keeper.conversations) == dict(picture.conversations) == s.inbox_at(seq)
    assert keeper.counts == dict(picture.counts) == s.counts_at(seq)
    assert keeper.unread == picture.unread == s.unread_at(seq) & set(keeper.conversations)
    assert keeper.unread_counts == dict(picture.unread_counts) == s.unread_counts_at(seq)


def test_snapshot_then_updates_applied_in_seq_order() -> None:
    s = stream()
    keeper = s.keeper()
    start = s.last // 3
    loaded = keeper.load_snapshot(s.snapshot(start))
    assert (loaded.complete, loaded.next_after, loaded.results) == (True, None, ())
    assert keeper.synced and keeper.snapshots == 1
    assert_shows(keeper, s, start)
    for update in s.updates[start:]:
        assert keeper.apply(update) == Applied(update)
    assert_shows(keeper, s, s.last)


def test_a_picture_is_frozen_and_built_again_only_after_a_change() -> None:
    s = stream()
    keeper = s.keeper()
    keeper.load_snapshot(s.snapshot(10))
    before = keeper.picture()
    assert keeper.picture() is before
    keeper.apply(s.updates[10])
    after = keeper.picture()
    assert after is not before and (before.seq, after.seq) == (10, 11)
    assert dict(before.conversations) == s.inbox_at(10)  # the old picture did not move
    with pytest.raises(TypeError):
        before.conversations["c-new"] = frozenset({"all"})  # type: ignore[index]


def test_unknown_agent_starts_empty_at_seq_0() -> None:
    s = stream()
    keeper = s.keeper()
    keeper.load_snapshot(SnapshotReply(account_id=s.account_id, agent_id=s.agent_id, seq=0,
                                       rules_version=s.updates[0].rules_version, counts={},
                                       conversations={}))
    assert (keeper.seq, dict(keeper.conversations), keeper.counts) == (0, {}, {})
    for update in s.updates:
        assert isinstance(keeper.apply(update), Applied)
    assert dict(keeper.conversations) == s.final()


def test_categories_are_whatever_the_worker_names() -> None:
    """No fixed list: a rule's own category and an account's view are kept, counted
    and filtered like the shipped ones."""
    s = stream()
    keeper = s.keeper(categories=["view:vip-waiting"])
    keeper.load_snapshot(s.snapshot(0))
    first = s.updates[0]
    odd = first.model_copy(update={
        "categories": ["all", "overdue", "view:vip-waiting"], "unread": True,
        "counts": {**first.counts, "overdue": 1, "view:vip-waiting": 1},
        "unread_counts": {"view:vip-waiting": 1}})
    assert keeper.apply(odd) == Applied(odd)
    assert keeper.conversations == {first.conversation_id: frozenset(
        {"all", "overdue", "view:vip-waiting"})}
    assert keeper.counts["view:vip-waiting"] == 1 and keeper.counts["overdue"] == 1
    assert keeper.unread == {first.conversation_id}
    plain = s.updates[1].model_copy(update={
        "conversation_id": "c-plain", "categories": ["all", "new"], "unread": True,
        "counts": {**odd.counts, "all": 2, "new": 1}})
    assert keeper.apply(plain) == Applied(plain)  # outside the filter: counted, not kept
    assert set(keeper.conversations) == {first.conversation_id}
    assert keeper.counts["all"] == 2 and keeper.unread == {first.conversation_id}


def test_duplicates_dropped_by_update_id() -> None:
    s = stream()
    keeper = s.keeper()
    keeper.load_snapshot(s.snapshot(0))
    for update in s.updates:
        assert isinstance(keeper.apply(update), Applied)
        # A redelivery: the same update again, at once and once more a little later.
        assert keeper.apply(update) == Duplicate(update.update_id, update.seq)
        if update.seq > 3:
            earlier = s.updates[update.seq - 4]
            assert keeper.apply(earlier) == Duplicate(earlier.update_id, earlier.seq)
    assert_shows(keeper, s, s.last)


def test_duplicate_window_is_bounded_and_older_repeats_are_stale() -> None:
    s = stream()
    keeper = s.keeper(duplicate_window=5)
    keeper.load_snapshot(s.snapshot(0))
    for update in s.updates[:20]:
        keeper.apply(update)
    assert keeper.apply(s.updates[19]) == Duplicate(s.updates[19].update_id, 20)
    # Forgotten by the window, still never applied twice: its seq is behind.
    assert keeper.apply(s.updates[2]) == Stale(3, 20)
    assert_shows(keeper, s, 20)


def test_stale_updates_ignored() -> None:
    s = stream()
    keeper = s.keeper()
    at = s.last // 2
    keeper.load_snapshot(s.snapshot(at))
    for update in s.updates:  # from the start: everything up to the snapshot is old
        result = keeper.apply(update)
        assert result == (Stale(update.seq, at) if update.seq <= at else Applied(update))
    assert_shows(keeper, s, s.last)


def test_forced_gap_detected_then_resync_ends_with_the_right_inbox() -> None:
    """Updates dropped on purpose: the gap is seen, the gapped update is not applied,
    later ones wait, and a snapshot at the oracle's state of that moment brings the
    keeper to the exact final inbox."""
    s = stream()
    keeper = s.keeper()
    start = 10
    keeper.load_snapshot(s.snapshot(start))
    dropped = set(range(start + 6, start + 11))  # seqs 16..20 never arrive
    delivered = [u for u in s.updates[start:] if u.seq not in dropped]
    gap_at = None
    for index, update in enumerate(delivered):
        before = keeper.picture()
        result = keeper.apply(update)
        if update.seq < min(dropped):
            assert result == Applied(update)
            continue
        assert result == Gap(expected=min(dropped), got=max(dropped) + 1)
        after = keeper.picture()
        assert (after.seq, after.conversations, after.counts) == (
            before.seq, before.conversations, before.counts)
        assert not keeper.synced and not after.synced
        gap_at = index
        break
    assert gap_at is not None
    # The resync: what the downstream asks for now. Meanwhile the stream goes on.
    arrived_meanwhile = 7
    resync_seq = max(dropped) + 1 + arrived_meanwhile - 3  # the worker is a bit behind
    for update in delivered[gap_at + 1:gap_at + 1 + arrived_meanwhile]:
        assert keeper.apply(update) == Buffered(update.seq)
    assert keeper.buffered == arrived_meanwhile + 1
    loaded = keeper.load_snapshot(s.snapshot(resync_seq))
    assert loaded.complete and not loaded.resync_needed
    assert [type(r) for r in loaded.results] == [Stale] * 5 + [Applied] * 3
    assert keeper.synced and keeper.snapshots == 2
    for update in delivered[gap_at + 1 + arrived_meanwhile:]:
        assert keeper.apply(update) == Applied(update)
    assert_shows(keeper, s, s.last)


def test_updates_before_the_snapshot_are_buffered_then_applied_in_seq_order() -> None:
    s = stream()
    keeper = s.keeper()
    early = list(s.updates[:40])
    random.Random(3).shuffle(early)  # a redelivery can reorder them
    early += early[:5]  # and repeat some
    for update in early:
        assert keeper.apply(update) == Buffered(update.seq)
    assert dict(keeper.conversations) == {} and not keeper.synced
    loaded = keeper.load_snapshot(s.snapshot(25))
    kinds = Counter(type(r).__name__ for r in loaded.results)
    repeated_new = sum(1 for u in early[:5] if u.seq > 25)  # seen once: duplicates
    assert kinds == {"Stale": 25 + 5 - repeated_new, "Applied": 15,
                     "Duplicate": repeated_new}
    assert_shows(keeper, s, 40)


def test_gap_in_the_buffer_asks_for_another_snapshot() -> None:
    s = stream()
    keeper = s.keeper()
    for update in s.updates[:30]:
        if update.seq != 21:
            keeper.apply(update)
    loaded = keeper.load_snapshot(s.snapshot(12))
    assert loaded.resync_needed and not keeper.synced
    assert loaded.results[-1] == Gap(21, 22)
    assert keeper.seq == 20 and keeper.buffered == 9  # 22..30 kept for after the next one
    assert isinstance(keeper.apply(s.updates[30]), Buffered)
    keeper.load_snapshot(s.snapshot(24))
    assert keeper.synced
    assert_shows(keeper, s, 31)


def test_pages_taken_at_different_seqs_combine_exactly() -> None:
    """Each page covers (after, next_after] at its own seq; an update applies to a
    conversation only above its page's seq; counts come from the newest page."""
    s = stream()
    keeper = s.keeper()
    seqs = iter((20, 26, 33, 33, 41, 45, 52, 60, 60, 70))
    after: str | None = None
    pages = 0
    buffered_up_to = 0
    while True:
        seq = next(seqs)
        # The updates published while the pages were taken reach the queue too.
        for update in s.updates[buffered_up_to:seq]:
            keeper.apply(update)
        buffered_up_to = seq
        loaded = keeper.load_snapshot(s.snapshot(seq, after=after, limit=3), after=after)
        pages += 1
        if loaded.complete:
            break
        assert not keeper.synced and dict(keeper.conversations) == {}
        after = loaded.next_after
    assert pages >= 3
    # Every page but the newest already holds what some later updates did: only the
    # newest page's seq is the inbox's, and the keeper shows exactly that one.
    assert_shows(keeper, s, seq)
    for update in s.updates[seq:]:
        assert keeper.apply(update) == Applied(update)
    assert_shows(keeper, s, s.last)


def test_pages_never_show_older_states_than_their_own() -> None:
    """Before the updates reach the newest page's seq, each page's conversations stay
    at least as new as that page: an older update never rolls them back, nor the
    counts."""
    s = stream()
    keeper = s.keeper()
    first = s.last // 4
    page_seqs = (first, first + 25, first + 50)
    size = -(-len(s.inbox_at(first) | s.inbox_at(first + 25) | s.inbox_at(first + 50)) // 3)
    after: str | None = None
    ranges: list[tuple[str | None, str | None, int]] = []
    for seq in page_seqs:
        reply = s.snapshot(seq, after=after, limit=size if seq != page_seqs[-1] else None)
        ranges.append((after, reply.next_after, seq))
        loaded = keeper.load_snapshot(reply, after=after)
        after = loaded.next_after
    assert loaded.complete and keeper.seq == first
    assert keeper.counts == s.counts_at(first + 50)
    delivered = first + 15  # only these have come out of the queue so far
    for update in s.updates[first:delivered]:
        assert keeper.apply(update) == Applied(update)

    def expected(cid: str) -> frozenset[str] | None:
        for low, high, seq in ranges:
            if (low is None or cid > low) and (high is None or cid <= high):
                return s.inbox_at(max(seq, delivered)).get(cid)
        raise AssertionError(cid)

    every = {u.conversation_id for u in s.updates}
    want = {cid: cats for cid in every if (cats := expected(cid)) is not None}
    assert dict(keeper.conversations) == want
    # Applying every update as it comes would have rolled some conversations back.
    rolled_back = [cid for cid in {u.conversation_id for u in s.updates[first:delivered]}
                   if s.inbox_at(delivered).get(cid) != want.get(cid)]
    assert rolled_back
    assert keeper.counts == s.counts_at(first + 50)
    for update in s.updates[delivered:]:
        assert keeper.apply(update) == Applied(update)
    assert_shows(keeper, s, s.last)


def test_pages_must_follow_each_other() -> None:
    s = stream()
    keeper = s.keeper()
    first = s.snapshot(10, limit=2)
    assert first.next_after is not None
    keeper.load_snapshot(first)
    with pytest.raises(ValueError, match="does not follow"):
        keeper.load_snapshot(s.snapshot(10, after="zzz", limit=2), after="zzz")
    # A first page again starts over.
    assert keeper.load_snapshot(s.snapshot(10)).complete
    assert_shows(keeper, s, 10)


def test_category_filter_keeps_only_those_conversations_and_all_counts() -> None:
    s = stream()
    keeper = s.keeper(categories=["mine", "resolved"])
    keeper.load_snapshot(s.snapshot(15, categories=["mine", "resolved"]))
    for update in s.updates[15:]:
        keeper.apply(update)
    want = {cid: cats for cid, cats in s.final().items() if {"mine", "resolved"} & cats}
    assert dict(keeper.conversations) == want
    assert keeper.counts == s.counts_at(s.last)


def test_another_agents_update_is_a_mistake() -> None:
    s = stream()
    other = s.updates[0].model_copy(update={"agent_id": "someone-else"})
    with pytest.raises(ValueError, match="not this inbox's agent"):
        s.keeper().apply(other)


# -- rules versions -----------------------------------------------------------------------
def under(update: CategoryUpdate, rules_version: str, **changes: Any) -> CategoryUpdate:
    """``update`` as other rules would have decided it (another update_id)."""
    return update.model_copy(update={"rules_version": rules_version,
                                     "update_id": f"{rules_version}-{update.seq}", **changes})


def test_a_new_rules_version_asks_for_a_snapshot_and_waits_for_it() -> None:
    s = stream()
    keeper = s.keeper()
    keeper.load_snapshot(s.snapshot(10))
    old = s.updates[0].rules_version
    renewed = [under(u, "rules-2") for u in s.updates[10:20]]
    assert keeper.apply(renewed[0]) == NewRules("rules-2", old, 11)
    assert not keeper.synced and keeper.seq == 10 and keeper.rules_version == old
    for update in renewed[1:]:
        assert keeper.apply(update) == Buffered(update.seq)
    # The snapshot under the new rules: the kept updates apply after it.
    loaded = keeper.load_snapshot(s.snapshot(14, rules_version="rules-2"))
    assert loaded.complete and not loaded.resync_needed
    assert [type(r) for r in loaded.results] == [Stale] * 4 + [Applied] * 6
    assert keeper.synced and keeper.rules_version == "rules-2"
    assert_shows(keeper, s, 20)


def test_a_snapshot_still_under_the_old_rules_does_not_ask_again() -> None:
    """The worker may answer before the new rules reach the account: the kept update
    of the new version then applies after the snapshot; asking again for it would ask
    for ever if the worker had nothing newer to say."""
    s = stream()
    keeper = s.keeper()
    keeper.load_snapshot(s.snapshot(10))
    renewed = under(s.updates[10], "rules-2")
    assert isinstance(keeper.apply(renewed), NewRules)
    loaded = keeper.load_snapshot(s.snapshot(10))  # still the old rules, still seq 10
    assert loaded.results == (Applied(renewed),) and keeper.synced
    assert keeper.rules_version == "rules-2" and keeper.seq == 11
    # A later change of rules asks again.
    assert isinstance(keeper.apply(under(s.updates[11], "rules-3")), NewRules)


def test_a_number_seen_again_under_other_rules_asks_for_a_snapshot() -> None:
    """A worker that stopped between publishing and storing and came back with new
    rule files numbers those updates again: stale by seq, but not the same update."""
    s = stream()
    keeper = s.keeper()
    keeper.load_snapshot(s.snapshot(0))
    for update in s.updates[:10]:
        keeper.apply(update)
    assert keeper.apply(under(s.updates[9], "other-rules")) == NewRules(
        "other-rules", s.updates[0].rules_version, 10)
    assert not keeper.synced
    # The snapshot covers that number: what was published under the old rules before
    # it (kept meanwhile, in any order) is stale, not a reason to ask again.
    keeper.apply(s.updates[9])
    keeper.apply(under(s.updates[8], "yet-other-rules"))
    loaded = keeper.load_snapshot(s.snapshot(10, rules_version="other-rules"))
    assert loaded.complete and not loaded.resync_needed and keeper.synced
    assert all(isinstance(result, Stale | Duplicate) for result in loaded.results)


# -- InboxMirror on a double of the broker ------------------------------------------------
def answering(streams: dict[str, Stream], at: dict[str, int | None]) -> \
        Callable[[SnapshotRequest], SnapshotReply | None]:
    """A worker answering each agent's snapshot at ``at[agent]`` (None: silent)."""
    def answer(request: SnapshotRequest) -> SnapshotReply | None:
        seq = at[request.agent_id]
        return None if seq is None else streams[request.agent_id].snapshot(
            seq, after=request.after, limit=request.limit, categories=request.categories)
    return answer


def three() -> tuple[dict[str, Stream], str]:
    streams = dict(list(agent_streams().items())[:3])
    assert len(streams) == 3
    return streams, next(iter(streams.values())).account_id


def mirror_on(worker: BlockingWorker, streams: dict[str, Stream], **options: Any,
              ) -> InboxMirror:
    account_id = next(iter(streams.values())).account_id
    return InboxMirror(worker, account_id=account_id, agent_ids=list(streams), **options)


def pump_until(mirror: InboxMirror, condition: Callable[[], bool], timeout: float = 5.0,
               ) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not reached: {mirror.status}"
        mirror.process(0.01)


def test_the_mirror_binds_every_agent_before_it_asks() -> None:
    streams, account_id = three()
    at: dict[str, int | None] = {agent: 20 for agent in streams}
    worker = BlockingWorker(answering(streams, at))
    mirror = mirror_on(worker, streams)
    mirror.start()
    agents = list(streams)
    assert worker.calls == [
        "exchange_declare inbox.requests", "exchange_declare inbox.categories",
        "queue_declare", *(f"queue_bind inbox.categories {account_id}.{a}" for a in agents),
        "basic_consume amq.gen-1", "basic_consume amq.rabbitmq.reply-to",
        "basic_publish", "basic_publish", "basic_publish"]
    assert [r.agent_id for r, _, _ in worker.requests] == agents
    for request, properties, mandatory in worker.requests:
        assert (request.account_id, request.after) == (account_id, None)
        assert properties.reply_to == "amq.rabbitmq.reply-to" and mandatory
    assert len({p.correlation_id for _, p, _ in worker.requests}) == 3
    for agent, s in streams.items():
        assert_shows(mirror.keepers[agent], s, 20)
    assert mirror.status == "live" and mirror.synced
    mirror.close()
    assert worker.calls[-1] == "channel close" and worker.is_open  # the caller's, still


def test_the_mirror_applies_updates_drops_repeats_and_resyncs_on_a_gap() -> None:
    streams, _account = three()
    at: dict[str, int | None] = {agent: 5 for agent in streams}
    worker = BlockingWorker(answering(streams, at))
    changes: list[tuple[str, int | None]] = []
    mirror = mirror_on(worker, streams, page_limit=4,
                       on_change=lambda agent, u: changes.append((agent, u and u.seq)))
    mirror.start()
    first, second, third = streams.values()
    # The first agent: 6..15 twice (a redelivery), 16..20 lost, then 21..30.
    worker.publish_updates(first.updates[5:15] * 2 + first.updates[20:30])
    worker.publish_updates(second.updates[5:25])
    at[first.agent_id] = 30  # where the first agent's resync will find the worker
    pump_until(mirror, lambda: mirror.inbox(first.agent_id).seq == 30 and mirror.synced)
    assert_shows(mirror.keepers[first.agent_id], first, 30)
    assert_shows(mirror.keepers[second.agent_id], second, 25)
    assert_shows(mirror.keepers[third.agent_id], third, 5)
    assert mirror.inbox(first.agent_id).snapshots == 2
    assert mirror.inbox(second.agent_id).snapshots == 1
    asked = [r for r, _, _ in worker.requests if r.agent_id == first.agent_id]
    assert len(asked) > 2 and all(r.limit == 4 for r in asked)  # pages, twice
    assert [seq for agent, seq in changes if agent == first.agent_id] == [
        None, *range(6, 16), None]
    assert [seq for agent, seq in changes if agent == second.agent_id] == [
        None, *range(6, 26)]
    mirror.close()


def test_the_mirror_resyncs_on_new_rules() -> None:
    streams, _account = three()
    s = next(iter(streams.values()))
    at: dict[str, int | None] = {agent: 10 for agent in streams}
    worker = BlockingWorker(answering(streams, at))
    mirror = mirror_on(worker, streams)
    mirror.start()
    worker.publish_updates([under(u, "rules-2") for u in s.updates[10:15]])
    asked = len(worker.requests)
    pump_until(mirror, lambda: len(worker.requests) > asked and mirror.synced)
    assert worker.requests[-1][0].agent_id == s.agent_id
    assert mirror.inbox(s.agent_id).rules_version == "rules-2"
    assert mirror.inbox(s.agent_id).seq == 15 and mirror.inbox(s.agent_id).snapshots == 2
    mirror.close()


def test_the_mirror_asks_again_when_no_reply_comes() -> None:
    streams, _account = three()
    at: dict[str, int | None] = {agent: 3 for agent in streams}
    s = next(iter(streams.values()))
    at[s.agent_id] = None
    worker = BlockingWorker(answering(streams, at))
    mirror = mirror_on(worker, streams, timeout=0.2)
    mirror.start(wait=False)
    pump_until(mirror, lambda: len(worker.requests) >= 5)
    assert "no snapshot reply within 0.2 s" in mirror.status
    assert mirror.status.startswith("loading snapshot")
    at[s.agent_id] = 3  # the worker is back
    pump_until(mirror, lambda: mirror.synced)
    assert mirror.status == "live"
    mirror.close()


@pytest.mark.parametrize("returns", [False, True], ids=["silent", "unbound"])
def test_a_first_start_that_gets_no_answer_fails_and_says_why(returns: bool) -> None:
    streams, _account = three()
    worker = BlockingWorker(answering(streams, dict.fromkeys(streams)), returns=returns)
    mirror = mirror_on(worker, streams, timeout=0.2)
    expected = "no worker is bound to 'inbox.requests'" if returns else \
        r"no snapshot reply within 0\.2 s"
    with pytest.raises(MirrorError, match=expected):
        mirror.start()
    assert worker.calls[-1] == "channel close"


def test_the_mirror_refuses_ids_that_cannot_be_routing_keys() -> None:
    worker = BlockingWorker(lambda _request: None)
    with pytest.raises(ValueError, match="account_id"):
        InboxMirror(worker, account_id="acc.1", agent_ids=["ag-1"])
    with pytest.raises(ValueError, match="agent_id"):
        InboxMirror(worker, account_id="acc-1", agent_ids=["ag-1", "ag#2"])
    with pytest.raises(ValueError, match="at least one"):
        InboxMirror(worker, account_id="acc-1", agent_ids=[])
    with pytest.raises(ValueError, match="neither a category name"):
        InboxMirror(worker, account_id="acc-1", agent_ids=["ag-1"], categories=["Not A Name"])
    with pytest.raises(ValueError, match="neither a category name"):
        InboxMirror(worker, account_id="acc-1", agent_ids=["ag-1"], categories=["view:a.b"])
    with pytest.raises(KeyError, match="not one of the mirror's agents"):
        InboxMirror(worker, account_id="acc-1", agent_ids=["ag-1"]).inbox("ag-2")


@pytest.mark.parametrize("categories", [["mine", "resolved"], ["mine", "view:vip-waiting"]],
                         ids=["rules' names", "with a view"])
def test_a_filter_is_asked_for_when_the_request_can_carry_it(categories: list[str]) -> None:
    """The request carries the filter, the rules' names and views' alike; the mirror
    keeps the same conversations."""
    streams, _account = three()
    at: dict[str, int | None] = {agent: 30 for agent in streams}
    worker = BlockingWorker(answering(streams, at))
    mirror = mirror_on(worker, streams, categories=categories)
    mirror.start()
    s = next(iter(streams.values()))
    worker.publish_updates(s.updates[30:])
    pump_until(mirror, lambda: mirror.inbox(s.agent_id).seq == s.last)
    assert {tuple(r.categories or ()) for r, _, _ in worker.requests} == {tuple(categories)}
    want = {cid: cats for cid, cats in s.final().items() if cats & set(categories)}
    assert want and dict(mirror.inbox(s.agent_id).conversations) == want
    assert dict(mirror.inbox(s.agent_id).counts) == s.counts_at(s.last)
    mirror.close()


def test_reattach_binds_a_new_queue_and_resyncs_every_inbox() -> None:
    streams, _account = three()
    at: dict[str, int | None] = {agent: 8 for agent in streams}
    worker = BlockingWorker(answering(streams, at))
    mirror = mirror_on(worker, streams)
    mirror.start()
    worker.lose = pika.exceptions.StreamLostError("cut")
    with pytest.raises(pika.exceptions.StreamLostError):
        mirror.process(0.01)
    shown = mirror.inbox(next(iter(streams)))
    at.update(dict.fromkeys(streams, 12))
    mirror.reattach(worker(None))  # the caller's new connection
    assert not mirror.synced and mirror.inbox(shown.agent_id).seq == shown.seq == 8
    pump_until(mirror, lambda: mirror.synced)
    for agent, s in streams.items():
        assert_shows(mirror.keepers[agent], s, 12)
    assert mirror.connections == 2 and worker.queues == 2
    mirror.close()


def test_with_a_url_the_mirror_runs_on_its_thread_and_reconnects() -> None:
    streams, account_id = three()
    at: dict[str, int | None] = {agent: 4 for agent in streams}
    worker = BlockingWorker(answering(streams, at))
    threads: set[str] = set()
    mirror = InboxMirror("amqp://guest:secret@127.0.0.1:1/%2F", account_id=account_id,
                         agent_ids=list(streams), connect=worker,
                         on_change=lambda *_: threads.add(threading.current_thread().name))
    with mirror:
        assert mirror.synced and threads == {"inbox-mirror"}
        with pytest.raises(MirrorError, match="thread of its own"):
            mirror.process()
        at.update(dict.fromkeys(streams, 9))
        worker.lose = pika.exceptions.StreamLostError("cut")
        deadline = time.monotonic() + 10
        while not (mirror.connections == 2 and mirror.synced):
            assert time.monotonic() < deadline, mirror.status
            time.sleep(0.01)
        for agent, s in streams.items():
            assert_shows(mirror.keepers[agent], s, 9)
    assert mirror.status == "closed" and not worker.is_open
    assert worker.calls.count("connect") == 2


def test_with_a_url_a_first_connection_that_fails_fails_start() -> None:
    def refuse(_parameters: object) -> Any:
        raise pika.exceptions.AMQPConnectionError("refused")

    mirror = InboxMirror("amqp://guest:secret@127.0.0.1:1/%2F", account_id="acc-1",
                         agent_ids=["ag-1"], connect=refuse)
    with pytest.raises(MirrorError, match=r"cannot connect to amqp://guest:\*\*\*@127\.0\.0"
                                          r"\.1:1/%2F") as failed:
        mirror.start()
    assert "secret" not in str(failed.value)
    assert mirror.status == "closed"

