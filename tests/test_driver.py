"""The acknowledgement policy without a broker: a recording link (checked by mypy
against the same :class:`Link` protocol as the real one) and an in-memory store that
fails on demand show what is published, committed and acked, and when."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pika
import pytest

from contracts import parse_event
from tests.support.streams import encode, envelope, event_stream
from worker.amqp.properties import encoded_properties
from worker.control import CONTROL_HEADER
from worker.domain.inbox import Inbox
from worker.driver import Driver, Phase
from worker.driver.time import TimeCrossings
from worker.link import Delivery, Link, Outgoing, Returned
from worker.rulebook import CompiledRules, load_rules
from worker.settings import Settings
from worker.store.memory import MemoryStore

RULES = load_rules(None)


class RecordingLink:
    """Stands in for AmqpLink: publishes get numbers, confirms and timers on demand."""

    def __init__(self) -> None:
        self.published: list[Outgoing] = []
        self.acks: list[tuple[int, bool]] = []
        self.timers: list[Callable[[], None]] = []
        self.consuming = False
        self.queues: list[str] = []
        self.aborts: list[bool] = []
        self.closed = False
        self.up = True
        self._looped = 0
        self._loop_tag = 0

    def start(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    def consume(self, queues: Sequence[str]) -> None:
        self.consuming = True
        self.queues.extend(q for q in queues if q not in self.queues)

    def cancel(self) -> None:
        self.consuming = False  # the test says when the broker's cancel-ok arrives

    def abort(self, stop: bool) -> None:
        self.aborts.append(stop)
        self.consuming = False
        self.queues.clear()
        if stop:
            self.closed = True

    def publish(self, message: Outgoing) -> int | None:
        if not self.up:
            return None
        self.published.append(message)
        return len(self.published)

    def ack(self, tag: int, multiple: bool) -> None:
        self.acks.append((tag, multiple))

    def call_later(self, _delay: float, callback: Callable[[], None]) -> object:
        # The clock never moves here: the looks for time crossings (and snoozes' ends)
        # would only come round again and again. tests/test_time_driver.py runs them on
        # a clock of its own.
        if not isinstance(getattr(callback, "__self__", None), TimeCrossings):
            self.timers.append(callback)
        return callback

    def cancel_timer(self, handle: object) -> None:
        self.timers = [t for t in self.timers if t is not handle]

    def run_timers(self) -> None:
        for _ in range(1000):
            if not self.timers:
                return
            self.timers.pop(0)()
        raise AssertionError("timers keep rescheduling themselves")

    def loop_back(self, driver: Driver) -> bool:
        """The worker's own queue is a queue: the control messages it published to it
        (ticks, adoptions) come back, behind whatever the test delivered. True if one
        did."""
        came = False
        while self._looped < len(self.published):
            message = self.published[self._looped]
            self._looped += 1
            if (message.exchange, message.routing_key) != ("", "inbox-rules.events"):
                continue
            tag = max(driver._evaluated_upto, self._loop_tag,
                      max((d.tag for d in driver._buffer), default=0)) + 1
            self._loop_tag = tag
            driver.on_delivery(Delivery(tag, message.routing_key, message.body,
                                        headers=message.headers or {},
                                        queue="inbox-rules.events"))
            came = True
        return came

    def updates(self, start: int = 0) -> list[dict[str, Any]]:
        return [json.loads(m.body) for m in self.published[start:]
                if m.exchange == "inbox.categories"]

    def dead_letters(self) -> list[Outgoing]:
        return [m for m in self.published if m.exchange.endswith(".exchange")]


def _checked(link: RecordingLink) -> Link:
    return link  # mypy: the double implements the real protocol


def _driver(batch_size: int = 50, depth: int = 3, rules: CompiledRules = RULES,
            ) -> tuple[Driver, RecordingLink, MemoryStore]:
    settings = Settings(batch_size=batch_size, prefetch=batch_size, pipeline_depth=depth,
                        max_batch_delay=0.0)
    store = MemoryStore()
    driver = Driver(settings, rules, store)
    link = RecordingLink()
    driver.attach(_checked(link))
    driver.on_ready()
    return driver, link, store


def _deliver(driver: Driver, bodies: list[bytes], first_tag: int = 1) -> None:
    for tag, body in enumerate(bodies, start=first_tag):
        driver.on_delivery(Delivery(tag, "event", body))


def _warm_up(driver: Driver, link: RecordingLink, bodies: list[bytes], count: int = 4,
             ) -> list[bytes]:
    """Deliver and settle the streams' leading account snapshots (they cause no update,
    so their batches commit at once); the rest of the stream is returned."""
    _deliver(driver, bodies[:count])
    _confirm_all(driver, link)
    assert link.acks[-1] == (count, True)
    link.acks.clear()
    return bodies[count:]


def _confirm_all(driver: Driver, link: RecordingLink) -> None:
    """Confirm whatever is published, until nothing new is published."""
    confirmed = 0
    while confirmed < len(link.published) or link.timers:
        if confirmed < len(link.published):
            confirmed = len(link.published)
            driver.on_confirm(confirmed, multiple=True, ok=True)
            link.loop_back(driver)
        else:
            link.run_timers()


def _replayed(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    inbox = Inbox(RULES)
    return [json.loads(u.body) for e in events
            for u in inbox.handle(parse_event(json.dumps(e).encode()))]


@pytest.fixture(autouse=True)
def generous_evaluation_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests count acks per batch: a loaded machine must not cut batches short."""
    monkeypatch.setattr("worker.driver.core.EVALUATE_BUDGET", 60.0)


def test_ack_only_after_confirms_and_commit() -> None:
    events = event_stream(seed=11, count=50)
    inbox = Inbox(RULES)
    first_with_updates = next(tag for tag, e in enumerate(events, start=1)
                              if inbox.handle(parse_event(json.dumps(e).encode())))
    driver, link, store = _driver()
    _deliver(driver, encode(events))
    assert link.published
    # Events that caused no update need no confirm; nothing after them is acked.
    assert all(tag < first_with_updates for tag, _ in link.acks), link.acks
    commits = store.commits
    _confirm_all(driver, link)
    assert store.commits > commits
    assert link.acks[-1] == (50, True)
    assert link.updates() == _replayed(events)


def test_the_next_batch_is_evaluated_and_published_while_one_waits() -> None:
    events = event_stream(seed=12, count=60)
    driver, link, store = _driver(batch_size=20)
    bodies = _warm_up(driver, link, encode(events))
    commits = store.commits
    _deliver(driver, bodies[:1], first_tag=5)  # the pipeline is empty: a batch starts
    first = len(link.published)
    assert first, "batch 1 published"
    _deliver(driver, bodies[1:40], first_tag=6)
    link.run_timers()  # a partial batch waits at most max_batch_delay
    assert len(link.published) > first, "batch 2 published before batch 1 is confirmed"
    assert link.acks == [] and store.commits == commits
    driver.on_confirm(first, multiple=True, ok=True)
    assert link.acks == [(5, True)], "batch 1 acked alone, after its own commit"
    _deliver(driver, bodies[40:], first_tag=45)
    _confirm_all(driver, link)
    assert [tag for tag, _ in link.acks] == sorted(tag for tag, _ in link.acks)
    assert link.acks[-1] == (60, True)
    assert link.updates() == _replayed(events)


def test_a_failed_commit_acks_nothing_and_the_retry_repeats_the_same_updates() -> None:
    events = event_stream(seed=13, count=40)
    driver, link, store = _driver(batch_size=40)
    bodies = _warm_up(driver, link, encode(events))
    stored = {a: len(s.conversations) for a, s in store.accounts.items()}
    store.fail_commits = 1
    _deliver(driver, bodies, first_tag=5)
    first_round = link.updates()
    assert first_round
    driver.on_confirm(len(link.published), multiple=True, ok=True)
    assert link.acks == [], "commit failed: nothing acked"
    assert {a: len(s.conversations) for a, s in store.accounts.items()} == stored, (
        "nothing of the batch is stored")
    _confirm_all(driver, link)  # runs the backoff timer: the batch again
    assert link.acks == [(40, True)]
    second_round = link.updates(len(first_round))
    assert second_round[:len(first_round)] == first_round, (
        "same update ids and bodies on the retry")
    assert second_round == _replayed(events)
    assert driver.stats.failed_batches == 1 and driver.stats.acked == 40


def test_a_refused_publish_retries_every_unfinished_batch() -> None:
    events = event_stream(seed=14, count=40)
    driver, link, store = _driver(batch_size=20)
    bodies = _warm_up(driver, link, encode(events))
    commits = store.commits
    _deliver(driver, bodies, first_tag=5)
    published = len(link.published)
    driver.on_confirm(1, multiple=False, ok=False)
    assert link.acks == [] and store.commits == commits
    _confirm_all(driver, link)
    assert link.acks[-1] == (40, True)
    assert link.updates(published) == _replayed(events)


def test_an_unroutable_dead_letter_is_not_acked() -> None:
    driver, link, store = _driver(batch_size=5)
    good = encode(event_stream(seed=15, count=4))
    _deliver(driver, [b"{not json", *good])
    assert len(link.dead_letters()) == 1
    driver.on_returned(Returned("chat.events.dlq.exchange", "event", None, "NO_ROUTE"))
    driver.on_confirm(len(link.published), multiple=True, ok=True)
    assert link.acks == [], "the dead letter reached no queue: the message is not handled"
    assert store.commits == 0
    _confirm_all(driver, link)  # retried; this time it routes
    assert link.acks == [(5, True)]
    assert len(link.dead_letters()) == 2


def _router(batch_size: int = 50, partitions: int = 4,
            ) -> tuple[Driver, RecordingLink, MemoryStore]:
    """A driver of the several-workers mode (it routes what the intake queues bring)."""
    settings = Settings(batch_size=batch_size, prefetch=batch_size, max_batch_delay=0.0,
                        store_url="postgresql://unused", partitions=partitions)
    store = MemoryStore()
    driver = Driver(settings, RULES, store)
    link = RecordingLink()
    driver.attach(_checked(link))
    driver.on_ready()
    return driver, link, store


def _routed(link: RecordingLink, start: int = 0) -> list[Outgoing]:
    return [m for m in link.published[start:] if m.exchange == "inbox-rules.events.partitions"]


def test_an_unroutable_routed_event_is_not_acked() -> None:
    """An operator deleted a partition queue: the router's copy came back (basic.return)
    and acking the event would lose it; it is routed again after a backoff."""
    driver, link, store = _router(batch_size=5)
    bodies = encode(event_stream(seed=15, count=5))
    for tag, body in enumerate(bodies, start=1):
        driver.on_delivery(Delivery(tag, "event", body, queue="inbox-rules.events"))
    link.run_timers()  # the partial batch behind the first one
    first = _routed(link)
    assert len(first) == 5
    driver.on_returned(Returned("inbox-rules.events.partitions", first[2].routing_key, None,
                                "NO_ROUTE"))
    driver.on_confirm(len(link.published), multiple=True, ok=True)
    assert link.acks == [], "a routed event reached no queue: it is not handled"
    assert driver.problem is not None and "inbox-rules.events.partition." in driver.problem
    published = len(link.published)
    _confirm_all(driver, link)  # retried; this time it routes
    assert link.acks == [(5, True)]
    assert [(m.routing_key, m.body) for m in _routed(link, published)] == [
        (m.routing_key, m.body) for m in first]
    assert store.commits == 1 and driver.stats.failed_batches == 1


def test_a_lost_link_drops_the_batches_and_the_memory_they_touched() -> None:
    events = event_stream(seed=16, count=30)
    bodies = encode(events)
    driver, link, store = _driver(batch_size=30)
    rest = _warm_up(driver, link, bodies)
    commits = store.commits
    _deliver(driver, rest, first_tag=5)
    link.up = False
    driver.on_lost()
    assert driver.phase is Phase.OFFLINE and store.commits == commits
    link.up = True
    start = len(link.published)
    driver.on_ready()
    _deliver(driver, rest, first_tag=5)  # the broker redelivers
    _confirm_all(driver, link)
    assert link.updates(start) == _replayed(events), "memory equals the last commit"


def test_a_poison_event_is_dead_lettered_and_undone_exactly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    events = event_stream(seed=17, count=40)
    poison_id = events[20]["event_id"]
    driver, link, _ = _driver(batch_size=40)
    original = driver.categoriser.handle

    def handle(state: Any, event: Any) -> Any:
        if event.event_id == poison_id:
            original(state, event)  # changes the account half-way, then fails
            raise RuntimeError("boom")
        return original(state, event)

    monkeypatch.setattr(driver.categoriser, "handle", handle)
    _deliver(driver, encode(events))
    _confirm_all(driver, link)
    [dead] = link.dead_letters()
    assert dead.headers is not None and "worker error: RuntimeError: boom" in dead.headers[
        "x-error"]
    assert link.acks[-1] == (40, True)
    without = [e for e in events if e["event_id"] != poison_id]
    assert link.updates() == _replayed(without), "the poison event left no trace"


def test_views_the_rules_refuse_are_dead_lettered_with_the_path_of_each_problem() -> None:
    """In a stream with views, a views event naming a category the rules do not have
    (and one of 21 personal views) is bad input: dead-lettered with its problems, and
    the views in force, the sequence and the agents stay as they were."""
    events = event_stream(seed=19, count=60, views=0.1)
    account = events[30]["account_id"]
    bad = [envelope("account.views_updated", account, {"views": [
               {"view_id": "ok", "when": {"category": "new"}},
               {"view_id": "v", "when": {"all": [{"category": "urgent"}]}}]},
               event_id="bad-1", occurred_at=events[30]["occurred_at"], sequence=10**6),
           envelope("agent.views_updated", account, {"agent_id": "ag-new", "views": [
               {"view_id": f"v{i}", "when": {"category": "all"}} for i in range(21)]},
               event_id="bad-2", occurred_at=events[30]["occurred_at"], sequence=10**6)]
    driver, link, _ = _driver(batch_size=100)
    _deliver(driver, encode([*events[:31], *bad, *events[31:]]))
    _confirm_all(driver, link)
    reasons = [m.headers["x-error"] for m in link.dead_letters() if m.headers]
    assert reasons == [
        "account.views_updated: views[1].when.all[0].category: unknown category 'urgent' "
        "(the rules' categories: all, new, mine, primary, resolved)",
        "agent.views_updated: views: 21 views: at most 20 personal views per agent"]
    assert link.updates() == _replayed(events)


def test_stop_finishes_the_batches_out_then_hands_the_rest_back_in_order() -> None:
    events = event_stream(seed=18, count=30)
    driver, link, _ = _driver(batch_size=10)
    rest = _warm_up(driver, link, encode(events))
    _deliver(driver, rest, first_tag=5)
    out = len(link.published)
    driver.stop()
    assert link.aborts == [], "batches are out: they finish first"
    _confirm_all(driver, link)
    assert link.aborts == [True] and link.closed and driver.phase is Phase.STOPPED
    acked = link.acks[-1][0]
    assert 5 <= acked < 30, "the batches out were acked; the rest was never started"
    assert len(link.published) >= out
    assert all(json.loads(m.body)["cause_event_id"] in {e["event_id"] for e in events[:acked]}
               for m in link.published if m.exchange == "inbox.categories")


def test_new_rules_reach_every_stored_account_in_paced_sweeps(tmp_path: Any) -> None:
    import shutil

    from worker.rulebook.engine import default_rules_dir

    events = event_stream(seed=19, count=200, accounts=6)
    driver, link, store = _driver(batch_size=50)
    _deliver(driver, encode(events))
    _confirm_all(driver, link)
    edited = tmp_path / "rules"
    shutil.copytree(default_rules_dir(), edited)
    text = (edited / "inbox.yaml").read_text()
    (edited / "inbox.yaml").write_text(text.replace(
        "{fact: account.group_count, greater_than: 0}",
        "{fact: account.group_count, greater_than: 99}"))
    variant = load_rules(edited)
    start = len(link.published)
    driver.adopt(variant)
    _confirm_all(driver, link)
    assert store.accounts_behind(variant.version, "", 100) == []
    assert driver.stats.swept_accounts == len({e["account_id"] for e in events})
    # Downstream's final view equals a clean run under the new rules.
    final: dict[tuple[str, str, str], list[str]] = {}
    for update in link.updates():
        final[(update["account_id"], update["agent_id"], update["conversation_id"])] = update[
            "categories"]
    clean: dict[tuple[str, str, str], list[str]] = {}
    inbox = Inbox(variant)
    for event in events:
        for produced in inbox.handle(parse_event(json.dumps(event).encode())):
            clean[(produced.account_id, produced.agent_id, produced.conversation_id)] = list(
                produced.categories)
    assert {k: v for k, v in final.items() if v} == {k: v for k, v in clean.items() if v}
    assert all(u["cause_event_id"].startswith("rules:") for u in link.updates(start))


def test_heavy_batches_are_cut_short_to_keep_the_ioloop_responsive(
        monkeypatch: pytest.MonkeyPatch) -> None:
    events = event_stream(seed=20, count=3)
    driver, link, _ = _driver()
    monkeypatch.setattr(driver.step, "budget", -1.0)  # every event is "heavy"
    _deliver(driver, encode(events))
    _confirm_all(driver, link)
    assert link.acks == [(1, True), (2, True), (3, True)], "one event per batch"
    assert link.updates() == _replayed(events)


def test_a_bad_message_with_huge_headers_is_dead_lettered_without_them() -> None:
    driver, link, _ = _driver()
    driver.on_delivery(Delivery(1, "event", b"{not json", headers={"trace": "x" * 100_000}))
    _confirm_all(driver, link)
    assert link.acks == [(1, True)]
    [dead] = link.published
    assert dead.body == b"{not json" and dead.headers is not None
    assert dead.headers["x-error"].startswith("invalid JSON")
    assert "trace" not in dead.headers
    assert dead.headers["x-original-headers-dropped"] == "1 header(s), too large"


# The content header of a publish must fit pika's and RabbitMQ's default frame_max:
# frame overhead 8 bytes, class/weight/body size/flags 14, then the properties.
FRAME_MAX = 131_072
# Headers that fill an incoming frame yet count far fewer repr characters than the
# 64 Ki the guard allowed: 43,671 euro signs are 131,013 bytes of UTF-8; 20,000 small
# integers (1-byte fields as received) are encoded again as 5-byte ones.
FULL_FRAME_HEADERS = [{"trace": "\u20ac" * 43_671}, {"hops": [0] * 20_000}]


def _fits_a_frame(message: Outgoing) -> bool:
    return 8 + 14 + len(encoded_properties(message)) <= FRAME_MAX


@pytest.mark.parametrize("headers", FULL_FRAME_HEADERS, ids=["euro", "small-ints"])
def test_a_bad_message_whose_headers_fill_a_frame_is_dead_lettered_without_them(
        headers: dict[str, Any]) -> None:
    """Measured in repr characters, such headers were copied: the dead letter with
    x-error added did not fit a frame, the broker closed the connection (FRAME_ERROR),
    and the worker met the same message again on every reconnect."""
    driver, link, _ = _driver()
    driver.on_delivery(Delivery(1, "event", b"{not json", headers=headers))
    _confirm_all(driver, link)
    assert link.acks == [(1, True)]
    [dead] = link.published
    assert dead.headers is not None and dead.headers["x-error"].startswith("invalid JSON")
    assert dead.headers["x-original-headers-dropped"] == "1 header(s), too large"
    assert set(dead.headers) == {"x-error", "x-original-headers-dropped"}
    assert _fits_a_frame(dead)


@pytest.mark.parametrize("headers", FULL_FRAME_HEADERS, ids=["euro", "small-ints"])
def test_a_good_event_whose_headers_fill_a_frame_is_routed_without_them(
        headers: dict[str, Any]) -> None:
    """The router's copy adds its own headers: it goes without the original's, and the
    event is still routed (never dead-lettered for its headers alone)."""
    driver, link, _ = _router()
    [body] = encode(event_stream(seed=31, count=1))
    driver.on_delivery(Delivery(1, "account.updated", body, headers=headers,
                                queue="inbox-rules.events"))
    driver.on_delivery(_request(2, {"account_id": "acc-1", "agent_id": "ag-1"})._replace(
        headers=headers))
    _confirm_all(driver, link)
    assert link.acks[-1] == (2, True) and not link.dead_letters()
    event, request = _routed(link)
    assert event.body == body and event.headers == {
        "x-original-headers-dropped": "1 header(s), too large",
        "x-inbox-routing-key": "account.updated", CONTROL_HEADER: driver.step.token}
    assert request.headers == {"x-original-headers-dropped": "1 header(s), too large",
                               "x-inbox-request": "snapshot", "x-inbox-routing-key": "snapshot",
                               CONTROL_HEADER: driver.step.token}
    assert _fits_a_frame(event) and _fits_a_frame(request)


def test_headers_that_fit_are_copied_and_ones_pika_cannot_encode_are_dropped() -> None:
    driver, link, _ = _router()
    [body] = encode(event_stream(seed=32, count=1))
    driver.on_delivery(Delivery(1, "account.updated", body, queue="inbox-rules.events",
                                headers={"trace": "\u20ac" * 10_000, "hop": 3}))
    driver.on_delivery(Delivery(2, "account.updated", body, queue="inbox-rules.events",
                                headers={"huge": 2 ** 64}))
    _confirm_all(driver, link)
    kept, unencodable = _routed(link)
    assert kept.headers == {"trace": "\u20ac" * 10_000, "hop": 3,
                            "x-inbox-routing-key": "account.updated",
                            CONTROL_HEADER: driver.step.token}
    assert unencodable.headers is not None
    assert unencodable.headers["x-original-headers-dropped"].startswith(
        "1 header(s), not encodable")
    assert link.acks[-1] == (2, True)


@pytest.mark.parametrize("header", ["k" * 256, b"raw", 7])
def test_a_routing_key_header_no_routing_key_can_carry_is_not_used(header: object) -> None:
    """The router names a partition message's own routing key in a header; the same
    header from anywhere else must not make the dead letter unpublishable (AMQP carries
    at most 255 bytes of routing key: publishing more stopped the worker), and without
    the fleet's token it is upstream's, not the router's: not used either."""
    driver, link, _ = _driver()
    token = driver.step.token
    original = pika.BasicProperties(content_type="application/json", message_id="m-1")
    driver.on_delivery(Delivery(1, "conversation.created", b"{not json",
                                headers={"x-inbox-routing-key": header,
                                         CONTROL_HEADER: token}, properties=original))
    driver.on_delivery(Delivery(2, "conversation.created", b"{not json",
                                headers={"x-inbox-routing-key": "conversation.assigned",
                                         CONTROL_HEADER: token},
                                properties=original))
    driver.on_delivery(Delivery(3, "conversation.created", b"{not json",
                                headers={"x-inbox-routing-key": "conversation.assigned"},
                                properties=original))
    _confirm_all(driver, link)
    assert link.acks[-1] == (3, True)
    dead = link.dead_letters()
    assert [m.routing_key for m in dead] == ["conversation.created", "conversation.assigned",
                                             "conversation.created"]
    assert not any(CONTROL_HEADER in (m.headers or {}) for m in dead), "the token stays inside"
    # The original's properties still travel with it.
    assert {(m.content_type, m.message_id) for m in dead} == {("application/json", "m-1")}


def test_sighup_reload_keeps_the_rules_when_the_new_files_do_not_validate(
        tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    import shutil

    from worker.rulebook.engine import default_rules_dir
    from worker.service import Worker

    broken = tmp_path / "broken"
    shutil.copytree(default_rules_dir(), broken)
    text = (broken / "inbox.yaml").read_text()
    (broken / "inbox.yaml").write_text(text.replace("equals: pro}", "equals: platinum}"))
    worker = Worker(Settings(rules_dir=broken), RULES, MemoryStore())
    try:
        assert worker.reload_rules() is False
        assert worker.rules.version == RULES.version
        assert "inbox.yaml:" in caplog.text and "platinum" in caplog.text
    finally:
        worker.ioloop.close()


class HeldCommitter:
    """Holds each commit until the test lets it run, as a slow fsync would."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.held: list[tuple[Any, Any]] = []

    def submit(self, writes: Any, on_done: Any, rules_in_force: Any = None) -> None:
        self.held.append((writes, on_done))

    def release(self) -> None:
        while self.held:
            writes, on_done = self.held.pop(0)
            self.store.commit(writes)
            on_done(None)

    def close(self) -> None:
        return None


def test_a_commit_still_running_when_the_link_drops_is_waited_for() -> None:
    """The store changes under the cache when that commit lands: nothing may be loaded
    before it does, or memory would fall behind the store."""
    events = event_stream(seed=21, count=30)
    bodies = encode(events)
    settings = Settings(batch_size=30, prefetch=30, pipeline_depth=3, max_batch_delay=0.0)
    store = MemoryStore()
    committer = HeldCommitter(store)
    driver = Driver(settings, RULES, store, committer=committer)
    link = RecordingLink()
    driver.attach(_checked(link))
    driver.on_ready()
    _deliver(driver, bodies[:1])
    driver.on_confirm(len(link.published), multiple=True, ok=True)
    assert len(committer.held) == 1, "the first batch's commit is running"
    _deliver(driver, bodies[1:], first_tag=2)
    link.up = False
    driver.on_lost()
    link.up = True
    driver.on_ready()
    published = len(link.published)
    _deliver(driver, bodies)  # the broker redelivers everything unacked
    assert len(link.published) == published, "nothing evaluated while the commit runs"
    committer.release()
    _confirm_all(driver, link)
    committer.release()
    _confirm_all(driver, link)
    assert link.acks[-1] == (30, True)
    final: dict[tuple[str, str, str], dict[str, Any]] = {}
    seen: dict[str, bytes] = {}
    for message in link.published:
        if message.exchange == "inbox.categories":
            assert seen.setdefault(message.message_id or "", message.body) == message.body
            update = json.loads(message.body)
            final[(update["account_id"], update["agent_id"], update["conversation_id"])] = update
    expected = {(u["account_id"], u["agent_id"], u["conversation_id"]): u
                for u in _replayed(events)}
    assert final == expected


def test_batches_confirmed_together_share_one_commit_and_one_ack() -> None:
    events = event_stream(seed=22, count=64)
    driver, link, store = _driver(batch_size=20)
    bodies = _warm_up(driver, link, encode(events))
    commits = store.commits
    _deliver(driver, bodies[:1], first_tag=5)  # batch 1 starts at once
    _deliver(driver, bodies[1:], first_tag=6)
    link.run_timers()  # the rest form batches behind it
    assert link.acks == [] and store.commits == commits
    driver.on_confirm(len(link.published), multiple=True, ok=True)
    assert store.commits == commits + 1, "one transaction for every confirmed batch"
    assert link.acks == [(45, True)], "one ack for the whole group (3 batches in flight)"
    _confirm_all(driver, link)
    assert link.acks[-1] == (64, True)
    assert link.updates() == _replayed(events)


def _request(tag: int, body: dict[str, Any] | bytes, reply_to: str | None = "replies",
             kind: str = "snapshot") -> Delivery:
    from types import SimpleNamespace

    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Delivery(tag, kind, raw, properties=SimpleNamespace(reply_to=reply_to,
                                                              correlation_id=f"c-{tag}"),
                    queue="inbox-rules.requests")


@pytest.mark.parametrize("views", [0.0, 0.1])
def test_a_snapshot_request_is_answered_from_the_state_its_events_left(views: float) -> None:
    """Its conversations, seq and counts are those the agent's updates left (with
    views: the counts of the agent's views too, as its updates give them)."""
    from contracts.requests import SnapshotReply

    events = event_stream(seed=23, count=80, views=views)
    driver, link, _ = _driver(batch_size=100)
    _deliver(driver, encode(events))
    updates = _replayed(events)
    account_id, agent_id = updates[-1]["account_id"], updates[-1]["agent_id"]
    driver.on_delivery(_request(81, {"account_id": account_id, "agent_id": agent_id}))
    driver.on_delivery(_request(82, {"account_id": account_id, "agent_id": "ag-nobody"}))
    _confirm_all(driver, link)
    replies = [m for m in link.published if m.exchange == ""]
    assert [(m.routing_key, m.correlation_id, m.persistent) for m in replies] == [
        ("replies", "c-81", False), ("replies", "c-82", False)]
    reply = SnapshotReply.model_validate_json(replies[0].body)
    mine = [u for u in updates if (u["account_id"], u["agent_id"]) == (account_id, agent_id)]
    inbox: dict[str, list[str]] = {}
    for update in mine:
        inbox[update["conversation_id"]] = update["categories"]
    assert reply.seq == mine[-1]["seq"] == len(mine)
    assert reply.conversations == {c: cats for c, cats in sorted(inbox.items()) if cats}
    assert reply.counts == mine[-1]["counts"] and reply.next_after is None
    unknown = SnapshotReply.model_validate_json(replies[1].body)
    assert (unknown.seq, unknown.conversations) == (0, {})
    assert link.acks[-1] == (82, True)


def test_bad_requests_are_dead_lettered_with_the_reason() -> None:
    driver, link, _ = _driver()
    driver.on_delivery(_request(1, b"{not json"))
    driver.on_delivery(_request(2, {"account_id": "acc.1", "agent_id": "ag-1"}))
    driver.on_delivery(_request(3, {"account_id": "acc-1", "agent_id": "ag-1"}, reply_to=None))
    _confirm_all(driver, link)
    reasons = [m.headers["x-error"] for m in link.dead_letters() if m.headers]
    assert len(reasons) == 3
    assert reasons[0].startswith("bad snapshot request: invalid JSON")
    assert "account_id" in reasons[1]
    assert "no reply_to" in reasons[2]
    assert not [m for m in link.published if m.exchange == ""]
    assert link.acks[-1] == (3, True)


@pytest.mark.parametrize(("kind", "target"), [("snapshot", "worker.answers.snapshot"),
                                              ("explain", "worker.answers.explain_pair")])
def test_a_request_the_worker_fails_on_is_dead_lettered_and_the_stream_goes_on(
        kind: str, target: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A bug answering a request must not escape the batch: out of the ioloop it would
    stall the connection, and the request would do it again on every redelivery."""
    def broken(*_args: object, **_kwargs: object) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(target, broken)
    driver, link, _ = _driver()
    asked = {"account_id": "acc-1", "agent_id": "ag-1", "conversation_id": "c-1"}
    driver.on_delivery(_request(1, asked, kind=kind))
    [body] = encode(event_stream(seed=33, count=1))
    driver.on_delivery(Delivery(2, "account.updated", body))
    _confirm_all(driver, link)
    [dead] = link.dead_letters()
    assert dead.headers is not None
    assert dead.headers["x-error"] == "worker error: RuntimeError: boom"
    assert link.acks[-1] == (2, True) and driver.stats.commits >= 1
    failed = [r for r in caplog.records if "request for account acc-1 failed" in r.message]
    assert failed and failed[0].exc_info is not None, "logged with its traceback"


OWN_QUEUES = ["inbox-rules.events", "inbox-rules.requests", "chat.events.dlq"]


def test_a_request_whose_reply_to_names_a_queue_of_the_worker_is_dead_lettered() -> None:
    """A reply sent there would be read back as an event, a request or a dead letter."""
    driver, link, _ = _driver()
    asked = {"account_id": "acc-1", "agent_id": "ag-1"}
    for tag, queue in enumerate(OWN_QUEUES, start=1):
        driver.on_delivery(_request(tag, asked, reply_to=queue))
    driver.on_delivery(_request(4, asked, reply_to="replies"))
    _confirm_all(driver, link)
    reasons = [m.headers["x-error"] for m in link.dead_letters() if m.headers]
    assert reasons == [f"bad snapshot request: reply_to names one of the worker's own "
                       f"queues ({queue})" for queue in OWN_QUEUES]
    assert [m.routing_key for m in link.published if m.exchange == ""] == ["replies"]
    assert link.acks[-1] == (4, True)


def test_the_router_and_the_owner_refuse_a_reply_to_naming_a_queue_of_the_worker() -> None:
    driver, link, _ = _router(partitions=4)
    asked = {"account_id": "acc-1", "agent_id": "ag-1"}
    refused = [*OWN_QUEUES, "inbox-rules.events.partition.3"]
    for tag, queue in enumerate(refused, start=1):
        driver.on_delivery(_request(tag, asked, reply_to=queue))
    driver.on_delivery(_request(5, asked, reply_to="replies"))
    # What reached a partition queue without the router's check (the owner's path).
    owned = _request(6, asked, reply_to="inbox-rules.events.partition.0")._replace(
        queue="inbox-rules.events.partition.1", routing_key="snapshot",
        headers={"x-inbox-request": "snapshot", "x-inbox-routing-key": "snapshot",
                 CONTROL_HEADER: driver.step.token})
    driver.on_delivery(owned)
    _confirm_all(driver, link)
    reasons = [m.headers["x-error"] for m in link.dead_letters() if m.headers]
    assert reasons == [f"bad snapshot request: reply_to names one of the worker's own "
                       f"queues ({queue})"
                       for queue in [*refused, "inbox-rules.events.partition.0"]]
    assert [m.reply_to for m in _routed(link)] == ["replies"]
    assert link.acks[-1] == (6, True)


def test_a_batch_retried_after_a_rules_change_keeps_the_rules_it_was_published_under(
        tmp_path: Any) -> None:
    import shutil

    from worker.rulebook.engine import default_rules_dir

    edited = tmp_path / "rules"
    shutil.copytree(default_rules_dir(), edited)
    text = (edited / "inbox.yaml").read_text()
    (edited / "inbox.yaml").write_text(text.replace(
        "            - predicate: routed_to_agent\n", "            - predicate: open\n"))
    variant = load_rules(edited)
    events = event_stream(seed=24, count=60)
    driver, link, store = _driver(batch_size=60)
    bodies = _warm_up(driver, link, encode(events))
    store.fail_commits = 1
    _deliver(driver, bodies, first_tag=5)
    first_round = {m.message_id: m.body for m in link.published
                   if m.exchange == "inbox.categories"}
    driver.adopt(variant)  # SIGHUP while the batch is out
    driver.on_confirm(len(link.published), multiple=True, ok=True)  # its commit fails
    _confirm_all(driver, link)
    assert link.acks[-1] == (61, True), "the events, then the adoption behind them"
    again = [m for m in link.published if m.exchange == "inbox.categories"]
    retried = [m for m in again if m.message_id in first_round]
    assert retried and all(first_round[m.message_id] == m.body for m in retried), (
        "the retry republished the same updates, not the same ids with other content")
    # Every event came before the adoption in the queue: all under the old rules; the
    # adoption's own updates, and only they, under the new ones.
    versions = {(json.loads(m.body)["cause_event_id"].startswith("rules:"),
                 json.loads(m.body)["rules_version"]) for m in again}
    assert (False, RULES.version) in versions
    assert versions <= {(False, RULES.version), (True, variant.version)}
    assert driver.rules.version == variant.version
    assert store.in_force == {0: variant.version}, "the adoption is committed"


def test_partitions_assigned_but_never_taken_are_given_back_when_withdrawn() -> None:
    """Found by tests/broker/test_several_workers.py: a partition assigned while the
    driver was offline (or handing over) and withdrawn before it consumed it was never
    named by a later handover, so the coordinator held its epoch for ever."""
    driver = Driver(Settings(max_batch_delay=0.0), RULES, MemoryStore())
    link = RecordingLink()
    driver.attach(_checked(link))
    released: list[frozenset[int]] = []
    driver.ownership.on_released = released.append
    driver.assign(frozenset({1, 2}))  # offline: taken once the link is up
    driver.assign(frozenset({2, 3}))
    assert released == [frozenset({1})]
    driver.on_ready()
    assert driver.partitions == {2, 3}
    driver.assign(frozenset({3}))  # a consumed one comes back through the handover
    assert released == [frozenset({1}), frozenset({2})] and link.aborts == [False]


def test_upstreams_internal_looking_headers_are_stripped_by_the_router_and_ignored_after() -> None:
    """An event that carries headers the workers use among themselves: the router passes
    it on without them (only its own, under the fleet's token), and a partition queue's
    message whose internal headers lack the token is the event it is, not a request."""
    driver, link, store = _router()
    events = event_stream(seed=33, count=6, accounts=1)
    forged = {"x-inbox-request": "snapshot", CONTROL_HEADER: "guess",
              "x-inbox-control": "inbox-rules.tick", "trace": "t-1"}
    driver.on_delivery(Delivery(1, events[0]["type"], encode(events)[0], headers=forged,
                                queue="inbox-rules.events"))
    _confirm_all(driver, link)
    [routed] = _routed(link)
    assert routed.headers == {"trace": "t-1", "x-inbox-routing-key": events[0]["type"],
                              CONTROL_HEADER: store.control_token}
    owner, owned, _ = _router()
    owner.assign(frozenset({0, 1, 2, 3}))
    for tag, body in enumerate(encode(events), start=1):
        owner.on_delivery(Delivery(tag, "snapshot", body, queue="inbox-rules.events.partition.1",
                                   headers={"x-inbox-request": "snapshot",
                                            "x-inbox-routing-key": "snapshot"}))
    _confirm_all(owner, owned)
    assert not owned.dead_letters() and owned.acks[-1] == (len(events), True)
    assert owned.updates() == _replayed(events)


def test_events_published_before_new_rules_are_redone_under_the_old_rules_after_a_crash(
        tmp_path: Any) -> None:
    """A worker published events' updates and then wanted new rules (its adoption is
    queued behind those events); it died before committing. Restarted with the new
    rules, it gets the events back first: they are evaluated under the rules in force
    (kept in the store), so their updates are the ones already published, seq for seq;
    the adoption follows, in the queue's order."""
    import shutil

    from worker.rule_versions import keep_directory
    from worker.rulebook.engine import default_rules_dir

    edited = tmp_path / "rules"
    shutil.copytree(default_rules_dir(), edited)
    text = (edited / "inbox.yaml").read_text()
    (edited / "inbox.yaml").write_text(text.replace(
        "            - predicate: routed_to_agent\n", "            - predicate: open\n"))
    store = MemoryStore()
    old, variant = keep_directory(store, None), keep_directory(store, edited)
    settings = Settings(batch_size=40, prefetch=40, max_batch_delay=0.0)
    events = event_stream(seed=25, count=120)
    first = Driver(settings, old, store)
    link = RecordingLink()
    first.attach(_checked(link))
    first.on_ready()
    bodies = encode(events)
    _deliver(first, bodies[:40])
    _confirm_all(first, link)  # committed and acked
    committed = len(link.published)
    _deliver(first, bodies[40:], first_tag=41)  # published, never confirmed: no commit
    first.adopt(variant)
    held = link.published[committed:]
    published = [m for m in held if m.exchange == "inbox.categories"]
    [adoption] = [m for m in held if (m.exchange, m.routing_key) == ("", "inbox-rules.events")]
    assert published and {json.loads(m.body)["rules_version"] for m in published} == {
        old.version}

    second = Driver(settings, variant, store)  # restarted with the new rules
    again = RecordingLink()
    second.attach(_checked(again))
    second.on_ready()
    _deliver(second, bodies[40:], first_tag=1)  # the broker gives back what was held...
    second.on_delivery(Delivery(81, "", adoption.body, headers=adoption.headers or {},
                                queue="inbox-rules.events"))  # ...the adoption last
    _confirm_all(second, again)
    redone = [m for m in again.published if m.exchange == "inbox.categories"]
    assert [(m.message_id, m.body) for m in redone[:len(published)]] == [
        (m.message_id, m.body) for m in published], "the same updates, seq for seq"
    after = [json.loads(m.body) for m in redone[len(published):]]
    adopting = [u["cause_event_id"].startswith(f"rules:{variant.version}:") for u in after]
    assert any(adopting) and adopting == sorted(adopting), "events first, then the adoption"
    assert all(u["rules_version"] == (variant.version if adopted else old.version)
               for u, adopted in zip(after, adopting, strict=True))
    assert store.in_force == {0: variant.version}
    assert store.accounts_behind(variant.version, "", 100) == []
