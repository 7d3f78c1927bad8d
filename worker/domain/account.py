"""One account's working state: the unit that is loaded, changed, committed and evicted.

Everything an event can touch lives in its account (the account snapshot, its
conversations, badge counts, per-agent update numbering, recent event ids), so a
worker needs in memory only the accounts it is handling, and a batch's durable change
is a list of :class:`AccountWrite`, one per account it touched.

Changes are tracked for the store, and journalled while an event is applied: an event
that raises half-way is undone exactly (a poison event costs nothing else).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from heapq import heapify, heappop, heappush
from typing import Any

from worker.domain.state import Account, Conversation

# Defaults for the per-account memories; the worker passes its settings.
DEFAULT_EVENT_WINDOW = 10_000
DEFAULT_TOMBSTONE_WINDOW = 10_000


@dataclass(frozen=True, slots=True)
class AccountWrite:
    """What one batch changed in one account: exactly what a store writes."""

    account_id: str
    account: Account
    rules_version: str | None
    rules_generation: int
    last_occurred_at: datetime | None
    event_counter: int
    conversations: tuple[Conversation, ...]
    deleted: tuple[str, ...]
    # Agents whose badge counts and update numbering changed:
    # agent -> (counts, unread counts, seq).
    agents: dict[str, tuple[dict[str, int], dict[str, int], int]]
    # (number, event id): numbers grow per account; the store keeps the newest window.
    events: tuple[tuple[int, str], ...]
    # (number, conversation id, its last applied sequence)
    tombstones: tuple[tuple[int, str, int | None], ...]
    event_window: int
    tombstone_window: int


class AccountState:
    """The mutable state of one account. Only this class changes it, so every change
    is tracked for the store and journalled for a rollback."""

    __slots__ = (
        "_account_dirty",
        "_agents_touched",
        "_changed_conversations",
        "_due",
        "_journal",
        "_new_events",
        "_new_tombstones",
        "_tracked",
        "account",
        "conversations",
        "counts",
        "event_counter",
        "event_window",
        "last_occurred_at",
        "recent",
        "rules_generation",
        "rules_version",
        "seqs",
        "tombstone_window",
        "tombstones",
        "unread_counts",
    )

    def __init__(self, account: Account, *, rules_version: str | None = None,
                 event_window: int = DEFAULT_EVENT_WINDOW,
                 tombstone_window: int = DEFAULT_TOMBSTONE_WINDOW,
                 tracked: bool = True) -> None:
        self.account = account
        # Untracked (offline replay, rule tests: nothing is stored): changes are not
        # recorded for the store at all, rather than recorded and dropped per event.
        self._tracked = tracked
        self.conversations: dict[str, Conversation] = {}
        self.counts: dict[str, dict[str, int]] = {}
        # Per agent and category: how many of its conversations in it are unread.
        self.unread_counts: dict[str, dict[str, int]] = {}
        # Last update number published per agent (SPEC "seq"): 1, 2, 3 ... per agent.
        self.seqs: dict[str, int] = {}
        self.recent: OrderedDict[str, int] = OrderedDict()  # event id -> number
        # Deleted conversations leave the state; their ids are remembered (bounded) so
        # a late event cannot bring them back.
        # conversation id -> (number, last applied sequence): stale events stay stale.
        self.tombstones: OrderedDict[str, tuple[int, int | None]] = OrderedDict()
        self.event_counter = 0
        self.event_window = event_window
        self.tombstone_window = tombstone_window
        self.rules_version = rules_version
        self.rules_generation = 0
        self.last_occurred_at: datetime | None = None
        self._changed_conversations: set[str] = set()
        self._agents_touched: set[str] = set()
        self._account_dirty = False
        self._new_events: list[tuple[int, str]] = []
        self._new_tombstones: list[tuple[int, str, int | None]] = []
        # Undo steps (a bound method and its arguments: cheaper than a closure per
        # change), run in reverse by rollback(); None while not journalling.
        self._journal: list[tuple[Any, ...]] | None = None
        # (due_at, conversation id) of conversations with a time crossing ahead, a heap
        # built on first use (never, under rules without time facts). An entry whose
        # conversation moved on (other due_at, or gone) is stale and skipped.
        self._due: list[tuple[datetime, str]] | None = None

    @property
    def account_id(self) -> str:
        return self.account.account_id

    # -- reads -------------------------------------------------------------
    def has_seen(self, event_id: str) -> bool:
        return event_id in self.recent

    def is_deleted(self, conversation_id: str) -> bool:
        return conversation_id in self.tombstones

    def counts_of(self, agent_id: str) -> dict[str, int]:
        return self.counts.get(agent_id, {})

    def unread_counts_of(self, agent_id: str) -> dict[str, int]:
        return self.unread_counts.get(agent_id, {})

    def next_due(self) -> datetime | None:
        """The earliest instant at which one of the account's conversations crosses a
        time threshold (None: none will, until an event comes)."""
        heap = self._due
        if heap is None:
            heap = self._due = [(c.due_at, c.conversation_id)
                                for c in self.conversations.values() if c.due_at is not None]
            heapify(heap)
        conversations = self.conversations
        while heap:
            due, conversation_id = heap[0]
            conversation = conversations.get(conversation_id)
            if conversation is not None and conversation.due_at == due:
                return due
            heappop(heap)
        return None

    def take_due(self, instant: datetime) -> list[Conversation]:
        """The conversations due at ``instant`` (the :meth:`next_due`), by id, taken off
        the index: the caller evaluates them again and puts them back."""
        due: dict[str, Conversation] = {}
        heap = self._due
        conversations = self.conversations
        while heap and heap[0][0] == instant:
            _, conversation_id = heappop(heap)
            conversation = conversations.get(conversation_id)
            if conversation is not None and conversation.due_at == instant:
                due[conversation_id] = conversation
        return [due[c] for c in sorted(due)]

    # -- writes ------------------------------------------------------------
    def set_account(self, account: Account) -> None:
        if self._journal is not None:
            old = self.account
            self._journal.append((setattr, self, "account", old))
        self.account = account
        self._account_dirty = True

    def put_conversation(self, conversation: Conversation) -> None:
        conversation_id = conversation.conversation_id
        if self._journal is not None:
            self._journal.append((self._restore_conversation, conversation_id,
                                  self.conversations.get(conversation_id)))
        self.conversations[conversation_id] = conversation
        if self._tracked:
            self._changed_conversations.add(conversation_id)
        if self._due is not None and conversation.due_at is not None:
            heappush(self._due, (conversation.due_at, conversation_id))

    def delete_conversation(self, conversation_id: str, last_sequence: int | None) -> None:
        """Forget a deleted conversation (it is in no category) and keep a tombstone with
        its last sequence; a later, newer event for it moves the tombstone up."""
        previous = self.tombstones.get(conversation_id)
        if self._journal is not None:
            self._journal.append((self._restore_conversation, conversation_id,
                                  self.conversations.get(conversation_id)))
            self._journal.append((self._untombstone, conversation_id, previous))
        if conversation_id in self.conversations:
            del self.conversations[conversation_id]
            if self._tracked:
                self._changed_conversations.add(conversation_id)
        self.event_counter += 1
        self.tombstones.pop(conversation_id, None)
        self.tombstones[conversation_id] = (self.event_counter, last_sequence)
        if self._tracked:
            self._new_tombstones.append((self.event_counter, conversation_id, last_sequence))
        while len(self.tombstones) > self.tombstone_window:
            self.tombstones.popitem(last=False)

    def add_counts(self, agent_id: str, added: Iterable[str], removed: Iterable[str]) -> None:
        self.add_to(self.counts, agent_id, added, removed)

    def add_unread_counts(self, agent_id: str, added: Iterable[str],
                          removed: Iterable[str]) -> None:
        self.add_to(self.unread_counts, agent_id, added, removed)

    def add_to(self, table: dict[str, dict[str, int]], agent_id: str, added: Iterable[str],
               removed: Iterable[str]) -> None:
        """Count ``added`` in and ``removed`` out for an agent, in :attr:`counts` or
        :attr:`unread_counts` (``table``)."""
        counts = table.get(agent_id)
        if self._journal is not None:
            saved = None if counts is None else dict(counts)
            self._journal.append((self._restore_counts, table, agent_id, saved))
        if counts is None:
            counts = table[agent_id] = {}
        for category in removed:
            counts[category] = counts.get(category, 0) - 1
        for category in added:
            counts[category] = counts.get(category, 0) + 1
        if self._tracked:
            self._agents_touched.add(agent_id)

    def next_seq(self, agent_id: str) -> int:
        seq = self.seqs.get(agent_id, 0) + 1
        if self._journal is not None:
            old = seq - 1
            self._journal.append((self._restore_seq, agent_id, old))
        self.seqs[agent_id] = seq
        if self._tracked:
            self._agents_touched.add(agent_id)
        return seq

    def remember(self, event_id: str, occurred_at: datetime) -> None:
        """Record an applied event id (the oldest fall out past the window)."""
        if self._journal is not None:
            last, counter = self.last_occurred_at, self.event_counter
            self._journal.append((self._unremember, self.recent, event_id, self._new_events))
            self._journal.append((self._restore_clock, last, counter))
        number = self.event_counter = self.event_counter + 1
        recent = self.recent
        recent[event_id] = number
        if self._tracked:
            self._new_events.append((number, event_id))
        while len(recent) > self.event_window:
            recent.popitem(last=False)
        clock = self.last_occurred_at
        if clock is None or occurred_at > clock:
            self.last_occurred_at = occurred_at

    def advance_clock(self, moment: datetime) -> None:
        """Time reached ``moment`` (a crossing): the account's clock never goes back, so
        an event that occurred earlier is evaluated at this moment, not before it."""
        if self.last_occurred_at is not None and moment <= self.last_occurred_at:
            return
        if self._journal is not None:
            last, counter = self.last_occurred_at, self.event_counter
            self._journal.append((self._restore_clock, last, counter))
        self.last_occurred_at = moment
        self._account_dirty = True

    def set_rules(self, version: str, generation: int) -> None:
        if self._journal is not None:
            old = (self.rules_version, self.rules_generation)
            self._journal.append((self._restore_rules, *old))
        self.rules_version, self.rules_generation = version, generation
        self._account_dirty = True

    # -- journal -----------------------------------------------------------
    def begin(self) -> None:
        """Start journalling: :meth:`rollback` undoes everything until :meth:`release`."""
        self._journal = []

    def release(self) -> None:
        self._journal = None

    def rollback(self) -> None:
        journal, self._journal = self._journal or [], None
        for undo, *arguments in reversed(journal):
            undo(*arguments)
        self._due = None  # entries taken since begin() may be due again: rebuilt on use

    def _restore_conversation(self, conversation_id: str, old: Conversation | None) -> None:
        if old is None:
            self.conversations.pop(conversation_id, None)
        else:
            self.conversations[conversation_id] = old

    @staticmethod
    def _restore_counts(table: dict[str, dict[str, int]], agent_id: str,
                        saved: dict[str, int] | None) -> None:
        if saved is None:
            table.pop(agent_id, None)
        else:
            table[agent_id] = saved

    def _restore_seq(self, agent_id: str, old: int) -> None:
        if old:
            self.seqs[agent_id] = old
        else:
            self.seqs.pop(agent_id, None)

    def _restore_clock(self, last: datetime | None, counter: int) -> None:
        self.last_occurred_at, self.event_counter = last, counter

    def _restore_rules(self, version: str | None, generation: int) -> None:
        self.rules_version, self.rules_generation = version, generation

    def _untombstone(self, conversation_id: str,
                     previous: tuple[int, int | None] | None) -> None:
        self.tombstones.pop(conversation_id, None)
        if previous is not None:
            self.tombstones[conversation_id] = previous
        if self._new_tombstones and self._new_tombstones[-1][1] == conversation_id:
            self._new_tombstones.pop()

    @staticmethod
    def _unremember(memory: OrderedDict[str, int], key: str,
                    added: list[tuple[int, str]]) -> None:
        memory.pop(key, None)
        if added and added[-1][1] == key:
            added.pop()

    # -- the store's view --------------------------------------------------
    @property
    def dirty(self) -> bool:
        return bool(self._account_dirty or self._changed_conversations or self._agents_touched
                    or self._new_events or self._new_tombstones)

    def take_write(self) -> AccountWrite:
        """Everything changed since the last call, as values (later changes to this
        state do not alter it): a batch's commit may run while the next is evaluated."""
        changed = sorted(self._changed_conversations)
        conversations = tuple(self.conversations[c] for c in changed if c in self.conversations)
        deleted = tuple(c for c in changed if c not in self.conversations)
        write = AccountWrite(
            account_id=self.account_id, account=self.account,
            rules_version=self.rules_version, rules_generation=self.rules_generation,
            last_occurred_at=self.last_occurred_at, event_counter=self.event_counter,
            conversations=conversations, deleted=deleted,
            agents={a: (dict(self.counts.get(a, {})), dict(self.unread_counts.get(a, {})),
                        self.seqs.get(a, 0))
                    for a in sorted(self._agents_touched)},
            events=tuple(self._new_events), tombstones=tuple(self._new_tombstones),
            event_window=self.event_window, tombstone_window=self.tombstone_window)
        self._changed_conversations = set()
        self._agents_touched = set()
        self._account_dirty = False
        self._new_events = []
        self._new_tombstones = []
        return write
