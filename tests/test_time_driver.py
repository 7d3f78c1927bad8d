"""Time crossings in the worker without a broker (docs/time.md): the driver looks for due
crossings by its clock (a fake one here, with timers that honour their delays) and sends
the accounts due a tick through their queue; the crossings are made when the tick comes
back, in the account's order, through the same pipeline as events (published,
confirmed, committed); only the active consumer ticks. Snoozed conversations wake at
their ``until`` the same way, under any rules."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contracts import parse_event
from tests.test_driver import RecordingLink
from worker.control import CONTROL_HEADER, CONTROL_KIND_HEADER, TICK_TYPE
from worker.domain.account import AccountState
from worker.domain.inbox import Inbox
from worker.driver import Driver
from worker.driver.time import TICK_INTERVAL
from worker.errors import StoreError
from worker.link import Delivery, Link
from worker.rulebook import CompiledRules, load_rules
from worker.rulebook.engine import default_rules_dir
from worker.settings import Settings
from worker.store.memory import MemoryStore

DEFAULT = load_rules(None)
SLA = load_rules(default_rules_dir() / "examples" / "sla")
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


class ClockLink(RecordingLink):
    """A recording link whose timers run when a fake clock reaches them, and whose input
    queue is a queue: what the driver publishes to it (ticks) comes back in order, behind
    what the test delivers."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0  # seconds after T0
        self.pending: list[list[Any]] = []  # [due, order, callback]
        self._order = itertools.count()
        self.tags = itertools.count(1)
        self.looped = 0  # published messages looked at for the input queue
        self.echo = True
        self.confirming = True  # False: the broker never confirms (nothing commits)

    def deliver(self, body: bytes, routing_key: str = "", headers: dict[str, Any] | None = None,
                ) -> None:
        self.driver.on_delivery(Delivery(next(self.tags), routing_key, body,
                                         headers=headers or {}, queue="inbox-rules.events"))

    def ticks(self) -> list[Any]:
        return [m for m in self.published if m.headers and CONTROL_HEADER in m.headers]

    def call_later(self, delay: float, callback: Callable[[], None]) -> object:
        handle = [self.now + delay, next(self._order), callback]
        self.pending.append(handle)
        return handle

    def cancel_timer(self, handle: object) -> None:
        self.pending = [h for h in self.pending if h is not handle]

    def wall(self) -> datetime:
        return T0 + timedelta(seconds=self.now)

    def advance(self, seconds: float = 0.0) -> None:
        """Run every timer due by now + ``seconds``, in time order, confirming what is
        published as it goes (the broker confirms at once)."""
        until = self.now + seconds
        for _ in range(100_000):
            self.confirm_all()
            due = [h for h in self.pending if h[0] <= until]
            if not due:
                self.now = until
                return
            handle = min(due, key=lambda h: (h[0], h[1]))
            self.pending.remove(handle)
            self.now = max(self.now, handle[0])
            handle[2]()
        raise AssertionError("timers keep firing at one instant")

    def confirm_all(self) -> None:
        confirmed = 0
        while confirmed < len(self.published):
            confirmed = len(self.published)
            if self.confirming:
                self.driver.on_confirm(confirmed, multiple=True, ok=True)
            while self.echo and self.looped < len(self.published):
                message = self.published[self.looped]
                self.looped += 1
                if (message.exchange, message.routing_key) == ("", "inbox-rules.events"):
                    self.deliver(message.body, message.routing_key, message.headers)

    driver: Driver


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.looks = 0
        self.unreadable: set[str] = set()  # fail the next load of these, once

    def due_accounts(self, now: datetime, limit: int) -> list[str]:
        self.looks += 1
        return super().due_accounts(now, limit)

    def next_due(self) -> datetime | None:
        self.looks += 1
        return super().next_due()

    def load_account(self, account_id: str, *, event_window: int,
                     tombstone_window: int) -> AccountState | None:
        if account_id in self.unreadable:
            self.unreadable.discard(account_id)
            raise StoreError(f"state store: cannot load {account_id} just now")
        return super().load_account(account_id, event_window=event_window,
                                    tombstone_window=tombstone_window)


def _driver(rules: CompiledRules = SLA, lag: float = 1.0, store: CountingStore | None = None,
            now: float = 0.0) -> tuple[Driver, ClockLink, CountingStore]:
    settings = Settings(batch_size=50, prefetch=50, max_batch_delay=0.0, time_lag=lag)
    store = store or CountingStore()
    driver = Driver(settings, rules, store)
    link = ClockLink()
    link.now = now
    link.driver = driver
    checked: Link = link
    driver.attach(checked)
    driver.wall_clock = link.wall
    driver.on_ready()
    return driver, link, store


def _event(number: int, kind: str, seconds: float, conversation: str | None = None,
           **data: Any) -> dict[str, Any]:
    event = {"event_id": f"e-{number}", "type": kind, "account_id": "acc-1",
             "occurred_at": (T0 + timedelta(seconds=seconds)).isoformat(), "data": data}
    if conversation is not None:
        event["conversation_id"] = conversation
    return event


EVENTS = [_event(1, "account.updated", 0, plan="free", agents=["ag-1", "ag-2"], groups={}),
          _event(2, "conversation.created", 0, "c-1", group_id=None),
          _event(3, "conversation.created", 100, "c-2", group_id=None)]


def _deliver(link: ClockLink, events: list[dict[str, Any]]) -> None:
    for event in events:
        link.deliver(json.dumps(event).encode(), event["type"])


def _replayed(events: list[dict[str, Any]], until: float | None = None,
              rules: CompiledRules = SLA) -> list[dict[str, Any]]:
    inbox = Inbox(rules)
    updates = [u for e in events for u in inbox.handle(parse_event(json.dumps(e).encode()))]
    if until is not None:
        updates += inbox.cross_until(T0 + timedelta(seconds=until))
    return [json.loads(u.body) for u in updates]


@pytest.fixture(autouse=True)
def generous_evaluation_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("worker.driver.core.EVALUATE_BUDGET", 60.0)


def test_rules_without_time_facts_tick_only_for_snoozes_and_wake_them_live() -> None:
    """Under rules that test no time fact nothing is ever due but a snooze's end: an
    hour of waiting sends no tick, and a snooze until +10 minutes wakes at +10 minutes
    (plus the lag) by the worker's clock, exactly as replay --until wakes it."""
    _, link, store = _driver(DEFAULT)
    _deliver(link, EVENTS)
    link.advance(3600)
    assert not link.ticks()
    assert link.updates() == _replayed(EVENTS, rules=DEFAULT)
    snooze = [_event(4, "conversation.snoozed", 3600, "c-1",
                     until=(T0 + timedelta(seconds=4200)).isoformat())]
    _deliver(link, snooze)
    link.advance(590)  # +4190: not yet
    assert not link.ticks()
    link.advance(12)  # +4202: past the wake by more than the lag
    assert len(link.ticks()) == 1
    woken = [u for u in link.updates() if u["cause_event_id"].startswith("time:")]
    assert {(u["agent_id"], u["cause_event_id"]) for u in woken} == {
        ("ag-1", "time:2026-11-24T11:10:00Z"), ("ag-2", "time:2026-11-24T11:10:00Z")}
    assert all(u["categories"] == ["all", "new", "primary"] for u in woken)
    assert link.updates() == _replayed([*EVENTS, *snooze], until=4300, rules=DEFAULT)
    assert store.due_accounts(T0 + timedelta(days=1), 10) == []


def test_the_active_worker_makes_each_crossing_once_its_clock_is_past_it_by_the_lag() -> None:
    driver, link, store = _driver(lag=1.0)
    _deliver(link, EVENTS[:2])
    link.advance(0)
    events_only = len(link.updates())
    link.advance(300.9)
    assert len(link.updates()) == events_only, "not before the instant plus the lag"
    _deliver(link, EVENTS[2:])  # c-2 at +100 (the clock went on)
    link.advance(0.2)  # now +301.1
    crossing = link.updates(events_only + 2)
    assert [(u["agent_id"], u["cause_event_id"], u["occurred_at"]) for u in crossing] == [
        ("ag-1", "time:2026-11-24T10:05:00Z", "2026-11-24T10:05:00Z"),
        ("ag-2", "time:2026-11-24T10:05:00Z", "2026-11-24T10:05:00Z")]
    assert driver.stats.crossed_accounts == 1
    link.advance(200)  # c-2's crossing at +400
    assert link.updates() == _replayed(EVENTS, until=401)
    assert store.due_accounts(T0 + timedelta(days=1), 10) == []
    assert link.acks[-1] == (next(link.tags) - 1, True), "every event and tick acknowledged"


def test_idle_waiting_costs_about_one_look_a_second_whatever_is_stored() -> None:
    _, link, store = _driver()
    _deliver(link, EVENTS)
    link.advance(1)
    looks = store.looks
    link.advance(60)  # nothing is due in this minute
    assert 60 <= store.looks - looks <= 2 * 61  # due_accounts + next_due, once a second
    published = len(link.published)
    link.advance(240)  # the crossings at +300 and +400 are near: looked for on time
    assert len(link.published) > published


def test_a_crossing_batch_whose_commit_fails_is_made_again_identically() -> None:
    _, link, store = _driver(lag=0.0)
    _deliver(link, EVENTS[:2])
    link.advance(0)
    before = len(link.updates())
    store.fail_commits = 1
    link.advance(300)
    first = link.updates()[before:]
    assert [u["cause_event_id"] for u in first] == ["time:2026-11-24T10:05:00Z"] * 2
    assert store.due_accounts(T0 + timedelta(seconds=300), 10) == ["acc-1"], "not committed"
    link.advance(60)  # the backoff, then the next look
    again = link.updates()[before + len(first):]
    assert again == first, "the same update ids and bodies"
    assert store.due_accounts(T0 + timedelta(seconds=300), 10) == []
    assert link.updates() == _replayed(EVENTS[:2], until=300) + first


def test_a_worker_that_received_nothing_ticks_until_it_learns_it_is_the_active_one() -> None:
    _, link, store = _driver()
    link.echo = False  # a hot standby: its ticks go to the active consumer
    link.advance(TICK_INTERVAL - 0.5)
    assert not link.ticks(), "the first probe waits: something may come meanwhile"
    link.advance(2 * TICK_INTERVAL + 0.5)
    ticks = link.ticks()
    assert len(ticks) == 3 and {(m.exchange, m.routing_key) for m in ticks} == {
        ("", "inbox-rules.events")}
    assert not ticks[0].persistent and json.loads(ticks[0].body)["accounts"] == []
    assert store.looks == 0, "a hot standby never crosses"
    link.deliver(ticks[0].body, "inbox-rules.events", ticks[0].headers)
    link.advance(0)
    assert link.acks == [(1, True)], "the tick is acknowledged, and nothing else happens"
    link.advance(1.0)  # the next look
    assert store.looks > 0 and not link.dead_letters()
    link.advance(3 * TICK_INTERVAL)
    assert len(link.ticks()) == 3


def test_a_refused_tick_fails_no_batch() -> None:
    driver, link, _ = _driver()
    [send] = [h for h in link.pending if h[2] == driver.time.send_probe]  # the first tick
    link.pending.remove(send)
    send[2]()
    [tick] = link.published
    driver.on_confirm(1, multiple=False, ok=False)
    assert driver.problem is None and driver.stats.failed_batches == 0
    link.looped = 1  # lost
    _deliver(link, EVENTS[:2])
    link.advance(0)
    assert link.acks[-1] == (2, True)
    assert tick.headers is not None


def test_a_tick_without_the_fleets_token_is_an_ordinary_message() -> None:
    """Upstream cannot make a worker cross or skip anything: an event that carries the
    control headers with another value is handled as the event it is, and a bare tick
    body is bad input."""
    _, link, _ = _driver()
    forged = {CONTROL_HEADER: "guess", CONTROL_KIND_HEADER: TICK_TYPE}
    link.deliver(json.dumps(EVENTS[0]).encode(), "account.updated", forged)
    link.deliver(json.dumps(EVENTS[1]).encode(), "conversation.created", forged)
    link.deliver(json.dumps({"until": T0.isoformat(), "accounts": ["acc-1"]}).encode(),
                 "x", forged)
    link.advance(0)
    assert link.updates()[:2] == _replayed(EVENTS[:2])
    [dead] = link.dead_letters()
    assert dead.headers is not None and CONTROL_HEADER not in dead.headers


def test_a_new_owner_continues_the_order_the_previous_one_published() -> None:
    """The previous owner published events' and a tick's updates and died before its
    commit; the new owner starts from the committed state, its clock already past later
    crossings. It gets the unacknowledged messages back first, in order, and publishes
    exactly what was published before (same ids, same bodies, same seq), then goes on."""
    _first, link, store = _driver(lag=0.0)
    _deliver(link, EVENTS[:2])
    link.advance(0)
    committed = len(link.updates())
    held = len(link.published)
    link.confirming = False  # nothing more is committed: it dies before that
    link.advance(300)  # the crossing at +300, published
    _deliver(link, EVENTS[2:])  # c-2 (+100), published after the crossing
    link.advance(0)
    published = link.updates(committed)
    assert [u["cause_event_id"] for u in published] == ["time:2026-11-24T10:05:00Z"] * 2 + [
        "e-3"] * 2
    unacked = [m for m in link.published[held:]
               if (m.exchange, m.routing_key) == ("", "inbox-rules.events")]

    _second, link2, _ = _driver(lag=0.0, store=store, now=500.0)
    link2.echo = True
    # The broker gives back what the first owner held, ahead of the new owner's ticks.
    link2.looped = len(link2.published)
    for message in unacked:
        link2.deliver(message.body, message.routing_key, message.headers)
    link2.deliver(json.dumps(EVENTS[2]).encode(), "conversation.created")
    link2.advance(0)
    again = link2.updates()
    assert again[:len(published)] == published, "the same updates, in the same order"
    link2.advance(2)
    everything = link.updates()[:committed] + link2.updates()
    for agent in ("ag-1", "ag-2"):
        seqs = [u["seq"] for u in everything if u["agent_id"] == agent]
        assert seqs == list(range(1, len(seqs) + 1)), "seq 1..n, no gap and no reuse"
    assert [u["cause_event_id"] for u in everything[-2:]] == ["time:2026-11-24T10:06:40Z"] * 2


def test_new_rules_with_time_facts_bring_their_crossings_and_without_them_end_them() -> None:
    driver, link, _ = _driver(DEFAULT)
    _deliver(link, EVENTS[:2])
    link.advance(10)
    assert not link.ticks()
    driver.adopt(SLA)
    link.advance(400)
    assert any(u["cause_event_id"] == "time:2026-11-24T10:05:00Z" for u in link.updates())
    driver.adopt(DEFAULT)
    link.advance(1)
    ticks = len(link.ticks())
    link.advance(600)
    assert len(link.ticks()) == ticks, "nothing is due under rules without time facts"


def test_a_tick_whose_account_cannot_be_loaded_is_retried_whole() -> None:
    """A tick names two accounts; the second cannot be loaded at first. Nothing of the
    tick may be applied before that: retried, it crosses both, and both crossings are
    published (applying the first and failing on the second would leave the first
    crossed in memory, its updates never sent)."""
    driver, link, store = _driver(lag=0.0)
    both = [*EVENTS[:2], *[{**e, "event_id": f"{e['event_id']}-2", "account_id": "acc-2"}
                           for e in EVENTS[:2]]]
    _deliver(link, both)
    link.advance(0)
    driver.cache.forget({"acc-2"})  # only the store has it now
    store.unreadable.add("acc-2")
    link.advance(310)
    crossed = {(u["account_id"], u["cause_event_id"]) for u in link.updates()
               if u["cause_event_id"].startswith("time:")}
    assert crossed == {("acc-1", "time:2026-11-24T10:05:00Z"),
                       ("acc-2", "time:2026-11-24T10:05:00Z")}
    assert store.due_accounts(T0 + timedelta(seconds=301), 10) == []
