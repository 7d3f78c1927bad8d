"""The SQLite state store: what is committed is what loads, the dedup window stays
bounded, and failures surface as StoreError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contracts import parse_event
from tests.broker.streams import encode, event_stream
from worker.domain.inbox import Inbox
from worker.domain.state import State
from worker.errors import StoreConflictError, StoreError
from worker.rulebook import load_rules
from worker.store import SqliteStore


def _snapshot(state: State) -> tuple[object, ...]:
    return (state.accounts, state.conversations, state.counts, list(state.seen),
            state.rules_version)


def _run(store: SqliteStore, state: State, bodies: list[bytes], batch: int) -> Inbox:
    inbox = Inbox(load_rules(None), state)
    for start in range(0, len(bodies), batch):
        for body in bodies[start:start + batch]:
            inbox.handle(parse_event(body))
        store.commit(state.take_changes(), state)
    return inbox


def test_what_is_committed_in_batches_is_what_loads(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.sqlite3")
    state = store.load(dedup_window=100)
    _run(store, state, encode(event_stream(seed=7, count=600)), batch=37)
    store.close()
    loaded = SqliteStore(tmp_path / "state.sqlite3").load(dedup_window=100)
    assert _snapshot(loaded) == _snapshot(state)
    assert len(loaded.seen) == 100, "the dedup window is bounded on disk too"


def test_a_smaller_window_forgets_the_oldest_at_the_next_commit(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.sqlite3")
    state = store.load(dedup_window=50)
    _run(store, state, encode(event_stream(seed=8, count=80)), batch=80)
    smaller = store.load(dedup_window=10)
    assert list(smaller.seen) == list(state.seen)[-10:]
    store.commit(smaller.take_changes(), smaller)
    assert list(store.load(dedup_window=50).seen) == list(state.seen)[-10:]


def test_a_second_writer_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    first, second = SqliteStore(path), SqliteStore(path)
    state_a, state_b = first.load(100), second.load(100)
    bodies = encode(event_stream(seed=9, count=20))
    _run(first, state_a, bodies[:10], batch=10)
    assert second.changed_elsewhere() and not first.changed_elsewhere()
    Inbox(load_rules(None), state_b).handle(parse_event(bodies[10]))
    with pytest.raises(StoreConflictError):
        second.commit(state_b.take_changes(), state_b)
    assert _snapshot(second.load(100)) == _snapshot(state_a)


def test_an_unwritable_place_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="state store"):
        SqliteStore(tmp_path / "missing-dir" / "state.sqlite3")


def test_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    SqliteStore(path).close()
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (json.dumps(99),))
    with pytest.raises(StoreError, match="schema version 99"):
        SqliteStore(path)
