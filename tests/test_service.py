"""The worker's acknowledgement policy without a broker: a fake link records what it
publishes and acks, and a store that fails on demand shows nothing is acked early."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pika
import pytest

from contracts import CategoryUpdate
from tests.broker.streams import encode, event_stream, replay
from worker.amqp import AmqpLink, Delivery, Outgoing
from worker.domain.inbox import Inbox
from worker.domain.state import Changes, State
from worker.errors import StoreError
from worker.rulebook import load_rules
from worker.service import Worker
from worker.settings import Settings
from worker.store import SqliteStore


class FakeLink:
    """Stands in for AmqpLink: publishes get sequence numbers, timers run on demand."""

    def __init__(self) -> None:
        self.published: list[Outgoing] = []
        self.acks: list[tuple[int, bool]] = []
        self.timers: list[Callable[[], None]] = []
        self.consuming = False
        self.closed = False

    def publish(self, message: Outgoing) -> int:
        self.published.append(message)
        return len(self.published)

    def ack(self, tag: int, multiple: bool) -> None:
        self.acks.append((tag, multiple))

    def consume(self) -> None:
        self.consuming = True

    def cancel(self) -> None:
        self.consuming = False  # the test says when the broker's cancel-ok arrives

    def close(self) -> None:
        self.closed = True

    def call_later(self, _delay: float, callback: Callable[[], None]) -> object:
        self.timers.append(callback)
        return callback

    def cancel_timer(self, handle: object) -> None:
        self.timers = [t for t in self.timers if t is not handle]

    def run_timers(self) -> None:
        while self.timers:
            self.timers.pop(0)()

    def updates(self, start: int = 0) -> list[dict[str, Any]]:
        return [CategoryUpdate.model_validate_json(m.body).model_dump(mode="json")
                for m in self.published[start:] if m.exchange == "inbox.categories"]


class FlakyStore(SqliteStore):
    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path)
        self.failures = failures

    def commit(self, changes: Changes, state: State) -> None:
        if self.failures:
            self.failures -= 1
            raise StoreError("state store: database is locked")
        super().commit(changes, state)


def _worker(tmp_path: Path, failures: int = 0) -> tuple[Worker, FakeLink, FlakyStore]:
    settings = Settings(state_path=tmp_path / "s.sqlite3", batch_size=50, prefetch=50)
    store = FlakyStore(settings.state_path, failures)
    worker = Worker(settings, load_rules(None), store)
    worker.ioloop.close()  # the fake link never runs it
    link = FakeLink()
    worker.link = cast(AmqpLink, link)
    worker.on_ready()
    return worker, link, store


def _deliver(worker: Worker, bodies: list[bytes], first_tag: int = 1) -> None:
    for tag, body in enumerate(bodies, start=first_tag):
        worker.on_delivery(Delivery(tag, "event", pika.BasicProperties(), body))


@pytest.fixture(autouse=True)
def generous_evaluation_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests count acks per batch: a loaded CI machine must not cut batches short.

    The one test about cutting batches short sets its own budget.
    """
    monkeypatch.setattr("worker.service.EVALUATE_BUDGET", 60.0)


@pytest.fixture
def events() -> list[dict[str, Any]]:
    return event_stream(seed=11, count=50)


def test_ack_only_after_confirms_and_commit(tmp_path: Path,
                                            events: list[dict[str, Any]]) -> None:
    worker, link, store = _worker(tmp_path)
    _deliver(worker, encode(events))
    assert link.published and link.acks == [], "published, not yet confirmed: no ack"
    worker.on_confirm(len(link.published), multiple=True, ok=True)
    assert link.acks == [(50, True)]
    assert link.updates() == replay(events)
    assert not store.changed_elsewhere()


def test_a_failed_commit_acks_nothing_and_retries_the_same_batch(
        tmp_path: Path, events: list[dict[str, Any]]) -> None:
    worker, link, store = _worker(tmp_path, failures=1)
    _deliver(worker, encode(events))
    first = len(link.published)
    worker.on_confirm(first, multiple=True, ok=True)
    assert link.acks == [] and worker.stats.failed_batches == 1
    link.run_timers()  # the backoff elapses: the batch runs again from the stored state
    worker.on_confirm(len(link.published), multiple=True, ok=True)
    assert link.acks == [(50, True)]
    assert link.updates(first) == replay(events), "the same updates, published again"
    reloaded = Inbox(load_rules(None), store.load(1000))
    assert len(reloaded.state.seen) == len({e["event_id"] for e in events})


def test_a_lost_link_before_the_confirms_republishes_on_redelivery(
        tmp_path: Path, events: list[dict[str, Any]]) -> None:
    worker, link, _store = _worker(tmp_path)
    _deliver(worker, encode(events))
    first = len(link.published)
    worker.on_lost()  # the confirms never come; the broker will redeliver
    worker.on_ready()
    _deliver(worker, encode(events))
    worker.on_confirm(len(link.published), multiple=True, ok=True)
    assert link.acks == [(50, True)]
    assert link.updates(first) == replay(events), "memory was reloaded: nothing deduped away"


def test_a_refused_publish_is_retried(tmp_path: Path, events: list[dict[str, Any]]) -> None:
    worker, link, _store = _worker(tmp_path)
    _deliver(worker, encode(events))
    worker.on_confirm(1, multiple=False, ok=False)
    worker.on_confirm(len(link.published), multiple=True, ok=True)
    assert link.acks == []
    link.run_timers()
    worker.on_confirm(len(link.published), multiple=True, ok=True)
    assert link.acks == [(50, True)]


def test_an_event_that_crashes_the_inbox_is_dead_lettered_alone(
        tmp_path: Path, events: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    worker, link, _store = _worker(tmp_path)
    victim = events[10]["event_id"]
    original = Inbox.handle

    def handle(self: Inbox, event: Any) -> list[CategoryUpdate]:
        if event.event_id == victim:
            raise RuntimeError("boom")
        return original(self, event)

    monkeypatch.setattr(Inbox, "handle", handle)
    _deliver(worker, encode(events))
    worker.on_confirm(len(link.published), multiple=True, ok=True)
    assert link.acks == [(50, True)]
    dead = [m for m in link.published if m.exchange == "chat.events.dlq.exchange"]
    assert dead and {json.loads(m.body)["event_id"] for m in dead} == {victim}
    assert dead[0].properties.headers["x-error"] == "worker error: RuntimeError: boom"
    assert link.updates() == replay([e for e in events if e["event_id"] != victim])


def test_sigterm_finishes_the_batch_in_hand_then_closes(
        tmp_path: Path, events: list[dict[str, Any]]) -> None:
    worker, link, _store = _worker(tmp_path)
    _deliver(worker, encode(events[:20]))  # a partial batch, waiting for more
    worker.stop()
    assert not link.closed
    worker.on_cancelled()
    worker.on_confirm(len(link.published), multiple=True, ok=True)
    assert link.acks == [(20, True)] and link.closed


def test_heavy_batches_are_cut_short_to_keep_the_ioloop_responsive(
        tmp_path: Path, events: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("worker.service.EVALUATE_BUDGET", -1.0)  # every event is "heavy"
    worker, link, _store = _worker(tmp_path)
    _deliver(worker, encode(events[:3]))
    worker.stop()
    worker.on_cancelled()
    for _ in range(3):
        worker.on_confirm(len(link.published), multiple=True, ok=True)
    assert link.acks == [(1, True), (2, True), (3, True)]
    assert link.updates() == replay(events[:3])


def _rules_variant(directory: Path, text_change: tuple[str, str] | None) -> Path:
    """A copy of the shipped rules, optionally with one textual edit."""
    source = load_rules(None).source
    directory.mkdir()
    text = (Path(source) / "inbox.yaml").read_text()
    if text_change is not None:
        assert text_change[0] in text
        text = text.replace(*text_change)
    (directory / "inbox.yaml").write_text(text)
    return directory


def test_sighup_reload_keeps_the_rules_when_the_new_files_do_not_validate(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    worker, link, _store = _worker(tmp_path)
    broken = _rules_variant(tmp_path / "broken", ("equals: pro}", "equals: platinum}"))
    worker.settings = worker.settings.model_copy(update={"rules_dir": broken})
    before = worker.rules.version
    assert worker.reload_rules() is False
    assert worker.rules.version == before
    assert "inbox.yaml:" in caplog.text and "platinum" in caplog.text
    assert link.published == []


def test_sighup_reload_recategorises_with_the_new_rules_before_the_next_events(
        tmp_path: Path, events: list[dict[str, Any]]) -> None:
    worker, link, _store = _worker(tmp_path)
    _deliver(worker, encode(events[:25]))
    link.run_timers()  # a partial batch starts when its delay runs out
    worker.on_confirm(len(link.published), multiple=True, ok=True)
    assert link.acks == [(25, True)]
    # `new` ignores groups in the edited rules: group chats become new for everyone.
    edited = _rules_variant(tmp_path / "edited", (
        "            - predicate: routed_to_agent\n", "            - predicate: open\n"))
    worker.settings = worker.settings.model_copy(update={"rules_dir": edited})
    first = len(link.published)
    assert worker.reload_rules() is True
    adopted = link.updates(first)
    worker.on_confirm(len(link.published), multiple=True, ok=True)
    new_version = worker.rules.version
    assert adopted, "the edit changes some inbox of the first 25 events"
    assert {u["cause_event_id"] for u in adopted} == {f"rules:{new_version}"}
    _deliver(worker, encode(events[25:]), first_tag=26)
    link.run_timers()
    worker.on_confirm(len(link.published), multiple=True, ok=True)
    assert link.acks[-1] == (50, True)
    assert worker.inbox.state.rules_version == new_version
    later = link.updates(first)
    assert later and all(u["rules_version"] == new_version for u in later)


def test_a_bad_message_with_huge_headers_is_dead_lettered_without_them(tmp_path: Path) -> None:
    worker, link, _store = _worker(tmp_path)
    huge = pika.BasicProperties(headers={"trace": "x" * 100_000}, content_type="text/plain")
    worker.on_delivery(Delivery(1, "event", huge, b"{not json"))
    link.run_timers()
    worker.on_confirm(len(link.published), multiple=True, ok=True)
    assert link.acks == [(1, True)]
    [dead] = link.published
    assert dead.body == b"{not json"
    assert dead.properties.headers["x-error"].startswith("invalid JSON")
    assert "trace" not in dead.properties.headers
    assert dead.properties.headers["x-original-headers-dropped"] == "1 header(s), too large"
    assert dead.properties.content_type == "text/plain"
