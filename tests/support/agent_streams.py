"""Real update streams of single agents, for the downstream client's tests without a
broker: the updates ``inbox-rules replay`` publishes for a generated stream (through
the oracle), per agent, and the snapshot replies the worker would give at any ``seq``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from contracts.client import InboxKeeper
from contracts.requests import SnapshotReply
from contracts.updates import CategoryUpdate
from tests.support.oracle import replay
from tests.support.streams import event_stream

Inbox = dict[str, frozenset[str]]


@dataclass(frozen=True)
class Stream:
    account_id: str
    agent_id: str
    updates: tuple[CategoryUpdate, ...]  # seq 1, 2, 3 ... in publish order

    def keeper(self, **options: Any) -> InboxKeeper:
        return InboxKeeper(self.account_id, self.agent_id, **options)

    def upto(self, seq: int) -> tuple[CategoryUpdate, ...]:
        return self.updates[:seq]

    def inbox_at(self, seq: int) -> Inbox:
        """The oracle's inbox after the updates up to ``seq``: the last categories per
        conversation, the empty ones left out (what the contract's snapshot lists)."""
        last: dict[str, list[str]] = {}
        for update in self.upto(seq):
            last[update.conversation_id] = update.categories
        return {cid: frozenset(cats) for cid, cats in last.items() if cats}

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
                 categories: Sequence[str] | None = None,
                 rules_version: str | None = None) -> SnapshotReply:
        """The worker's reply at ``seq`` (a page of it with ``after``/``limit``), built
        from the oracle's updates as SnapshotReply documents it."""
        inbox = sorted(self.inbox_at(seq).items())
        if categories:
            inbox = [(cid, cats) for cid, cats in inbox if cats & set(categories)]
        if after is not None:
            inbox = [(cid, cats) for cid, cats in inbox if cid > after]
        more = limit is not None and len(inbox) > limit
        page = inbox[:limit] if limit is not None else inbox
        return SnapshotReply(
            account_id=self.account_id, agent_id=self.agent_id, seq=seq,
            rules_version=rules_version or self.updates[0].rules_version,
            counts=self.counts_at(seq), unread_counts=self.unread_counts_at(seq),
            conversations={cid: sorted(cats) for cid, cats in page},
            unread=sorted(cid for cid, _ in page if cid in self.unread_at(seq)),
            next_after=page[-1][0] if more else None)

    @property
    def last(self) -> int:
        return len(self.updates)

    def final(self) -> Inbox:
        return self.inbox_at(self.last)


@cache
def agent_streams(seed: int = 5, count: int = 400) -> dict[str, Stream]:
    """Every agent of the busiest account of a generated stream (joins, transfers,
    resolves, deletes, re-sent events), busiest first, their updates from
    ``inbox-rules replay``."""
    updates = replay(event_stream(seed=seed, count=count, accounts=1))
    per_agent = Counter((u["account_id"], u["agent_id"]) for u in updates).most_common()
    streams = {}
    for (account_id, agent_id), _ in per_agent:
        mine = tuple(CategoryUpdate.model_validate(u) for u in updates
                     if (u["account_id"], u["agent_id"]) == (account_id, agent_id))
        assert [u.seq for u in mine] == list(range(1, len(mine) + 1))
        streams[agent_id] = Stream(account_id, agent_id, mine)
    return streams


def stream() -> Stream:
    """The busiest agent: many updates over many conversations."""
    busiest = next(iter(agent_streams().values()))
    assert busiest.last > 60 and len({u.conversation_id for u in busiest.updates}) > 8
    return busiest
