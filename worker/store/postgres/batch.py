"""One commit's rows for the PostgreSQL store, as the column arrays its statements take."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import orjson

from worker.cluster.partitions import partition_of
from worker.domain.account import AccountWrite
from worker.domain.state import Conversation
from worker.store import micros
from worker.store.details import details_json
from worker.store.views import views_json


class Batch:
    """One commit's rows, as the column arrays its statements take. The last change of
    each conversation, agent, tombstone and account wins, in write order: two writes of
    one account in a batch may delete a conversation and bring it back, and one
    statement may not touch a row twice."""

    def __init__(self, writes: Sequence[AccountWrite], partitions: int) -> None:
        self.final: dict[tuple[str, str], Conversation | None] = {}
        self.agents: dict[tuple[str, str], tuple[str, str, int]] = {}
        self.tombstones: dict[tuple[str, str], tuple[int, int | None]] = {}
        self.last: dict[str, AccountWrite] = {}
        self.new_events: Counter[str] = Counter()
        self.events: tuple[list[str], list[int], list[str]] = ([], [], [])
        for write in writes:
            account_id = write.account_id
            self.last[account_id] = write
            for conversation in write.conversations:
                self.final[(account_id, conversation.conversation_id)] = conversation
            for conversation_id in write.deleted:
                self.final[(account_id, conversation_id)] = None
            for agent_id, (counts, unread, seq) in write.agents.items():
                self.agents[(account_id, agent_id)] = (
                    _json(counts, orjson.OPT_SORT_KEYS), _json(unread, orjson.OPT_SORT_KEYS),
                    seq)
            accounts, numbers, ids = self.events
            for number, event_id in write.events:
                accounts.append(account_id)
                numbers.append(number)
                ids.append(event_id)
            self.new_events[account_id] += len(write.events)
            for number, conversation_id, last_sequence in write.tombstones:
                self.tombstones[(account_id, conversation_id)] = (number, last_sequence)
        self.partition = {a: partition_of(a, partitions) for a in self.last}

    def rows(self) -> dict[str, list[Any]]:
        """The parameters of the ``write`` statement."""
        put = [c for c in self.final.values() if c is not None]
        deleted = [key for key, c in self.final.items() if c is None]
        return {
            "c_account": [c.account_id for c in put],
            "c_id": [c.conversation_id for c in put],
            "c_status": [c.status for c in put],
            "c_group": [c.group_id for c in put],
            "c_joined": [_joined_json(c.joined) for c in put],
            "c_sequence": [c.last_sequence for c in put],
            "c_categories": [_categories_json(c.categories) for c in put],
            "c_waiting": [None if c.waiting_since is None else c.waiting_since.isoformat()
                          for c in put],
            "c_last_by": [c.last_message_by for c in put],
            "c_due": [None if c.due_at is None else micros(c.due_at) for c in put],
            "c_details": [details_json(c) for c in put],
            "d_account": [a for a, _ in deleted],
            "d_id": [c for _, c in deleted],
            "g_account": [a for a, _ in self.agents],
            "g_id": [g for _, g in self.agents],
            "g_counts": [counts for counts, _, _ in self.agents.values()],
            "g_seq": [seq for _, _, seq in self.agents.values()],
            "g_unread": [unread for _, unread, _ in self.agents.values()],
            "e_account": self.events[0],
            "e_number": self.events[1],
            "e_id": self.events[2],
            "t_account": [a for a, _ in self.tombstones],
            "t_id": [c for _, c in self.tombstones],
            "t_number": [n for n, _ in self.tombstones.values()],
            "t_sequence": [s for _, s in self.tombstones.values()],
            "accounts": list(self.last),
        }

    def accounts(self, events_kept: dict[str, int], tombstones_kept: dict[str, int],
                 ) -> dict[str, list[Any]]:
        """The parameters of the ``finish`` statement: each account's row, with the
        rows it keeps before the trim (what was stored, less the tombstones superseded,
        plus this batch's)."""
        new_tombstones = Counter(a for a, _ in self.tombstones)
        rows = [(*_account_row(w, self.partition[a]),
                 events_kept.get(a, 0) + self.new_events[a],
                 tombstones_kept.get(a, 0) + new_tombstones[a],
                 w.event_window, w.tombstone_window, views_json(w.account.views))
                for a, w in self.last.items()]
        names = ("account", "partition", "plan", "agents", "groups", "last_sequence",
                 "rules_version", "rules_generation", "last_occurred_at", "event_counter",
                 "events_kept", "tombstones_kept", "event_window", "tombstone_window",
                 "views")
        return dict(zip(names, _columns(rows, len(names)), strict=True))


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows to the column arrays unnest() takes."""
    columns: list[list[Any]] = [[] for _ in range(width)]
    for row in rows:
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    return columns


def _json(value: object, option: int = 0) -> str:
    return orjson.dumps(value, option=option).decode()


@lru_cache(maxsize=4096)
def _categories_json(categories: tuple[frozenset[str], ...]) -> str:
    """Few distinct values (one per combination of category sets): encoded once each."""
    return _json([sorted(c) for c in categories])


@lru_cache(maxsize=4096)
def _joined_json(joined: frozenset[str]) -> str:
    return _json(sorted(joined))


def _account_row(write: AccountWrite, partition: int) -> tuple[object, ...]:
    account = write.account
    groups = {g: sorted(m) for g, m in sorted(account.groups.items())}
    last = None if write.last_occurred_at is None else write.last_occurred_at.isoformat()
    return (write.account_id, partition, account.plan, _json(sorted(account.agents)),
            _json(groups), account.last_sequence, write.rules_version,
            write.rules_generation, last, write.event_counter)
