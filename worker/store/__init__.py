"""Where the worker's state survives restarts: the protocol every store implements.

State is kept per account: a store loads one account when an event for it arrives
(start-up reads nothing but the schema) and writes, once per batch and in one
transaction, exactly what the batch changed (:class:`AccountWrite`, one per account).

Implementations: :mod:`worker.store.sqlite` (the embedded default) and
:mod:`worker.store.memory` (tests and tools).
"""

from __future__ import annotations

import json
import secrets
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from functools import lru_cache
from typing import Any, Protocol

import orjson

from worker.domain.account import AccountState, AccountWrite
from worker.domain.state import Account, Conversation
from worker.errors import StoreConflictError, StoreError
from worker.store.details import NO_DETAILS, details_of
from worker.store.views import views_of


class StateStore(Protocol):
    """Durable per-account state."""

    #: A random value shared by every worker of this store: control messages and the
    #: router's headers count only with it (worker.control). Made once, kept forever.
    control_token: str

    def load_account(self, account_id: str, *, event_window: int,
                     tombstone_window: int) -> AccountState | None:
        """The account as of the last commit, or None if it was never stored. Raises
        :class:`worker.errors.StoreError` if the store cannot be read."""

    def commit(self, writes: Sequence[AccountWrite],
               rules_in_force: Mapping[int, str] | None = None) -> None:
        """Write every account change of one batch in one transaction, or raise
        :class:`worker.errors.StoreError` having written nothing
        (:class:`worker.errors.StoreConflictError` when another worker wrote first).
        ``rules_in_force``: partitions whose queue adopted a rules version in the batch
        (worker.control), recorded in the same transaction."""

    def rules_in_force(self, partition: int, default: str) -> str:
        """The rules version a partition's messages are evaluated under, as committed;
        a partition never recorded records ``default`` (and says so) first."""

    def keep_rules(self, version: str, files: Mapping[str, bytes], source: str) -> None:
        """Keep a rules version's files (once; no deployment): whichever worker meets a
        partition in force under it can load it, in this process or another."""

    def rule_files(self, version: str) -> dict[str, bytes] | None:
        """A kept version's rule files, None if it was never kept."""

    def accounts_behind(self, rules_version: str, after: str, limit: int,
                        partition: int | None = None) -> list[str]:
        """Up to ``limit`` stored accounts, in id order after ``after``, whose categories
        were computed under other rules than ``rules_version`` (the rules sweep); with
        ``partition``, of that partition only."""

    def due_accounts(self, now: datetime, limit: int) -> list[str]:
        """Up to ``limit`` stored accounts with a time crossing due at or before ``now``,
        the earliest due first (from an index by due time: no scan)."""

    def next_due(self) -> datetime | None:
        """The earliest time crossing due in the stored accounts (None: none is)."""

    def changed_elsewhere(self) -> bool:
        """True if another worker committed since our last :meth:`resync` or commit."""

    def resync(self) -> None:
        """Our cached accounts were dropped: take the store as it is now as our base."""

    def close(self) -> None:
        """Release the store."""



_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def rules_in_force_key(partition: int) -> str:
    """The ``meta`` row (both stores) naming the rules a partition's queue adopted last."""
    return f"rules_in_force:{partition}"


def new_control_token() -> str:
    return secrets.token_hex(16)


def micros(moment: datetime) -> int:
    """A due time as stored: whole microseconds since the epoch (exact, ordered)."""
    return (moment - _EPOCH) // _MICROSECOND


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


class Unset(Enum):
    """The type of :data:`UNSET`: "no expectation", where None means "no version"."""

    UNSET = "unset"


UNSET = Unset.UNSET


@dataclass(frozen=True)
class RuleDeployment:
    """One change of the live rules (``inbox-rules rules history`` lists them): the
    ``number``-th, making ``version`` live by ``action`` (``deploy`` or ``rollback``),
    when (``at``, the store's clock), from where (``source``: who, on which host, from
    which directory) and what changed against the version live before (``summary``)."""

    number: int
    version: str
    at: datetime
    action: str
    source: str
    summary: str


class RuleStore(Protocol):
    """Rule versions kept beside the state, so that every worker of a fleet runs the
    same rules: ``inbox-rules rules deploy`` and ``rollback`` write here, workers poll
    :meth:`live_version` and adopt what it names. Rule files are kept as data (name ->
    YAML text) and go through the same validator as a directory when loaded.

    The live version is the one the newest deployment names; deployments are
    numbered 1, 2, 3 ... and never rewritten (the history)."""

    def deploy_rules(self, version: str, files: Mapping[str, bytes], source: str,
                     summary: str, *, expect_live: str | Unset | None = UNSET,
                     ) -> RuleDeployment:
        """Keep ``files`` as ``version`` (if not kept already) and make it live, in one
        transaction. With ``expect_live``, refuse (:class:`worker.errors.StoreConflictError`,
        nothing written) unless that is the live version (None: none is) when it runs:
        the summary was computed against it."""

    def set_live(self, version: str, source: str, summary: str, *,
                 expect_live: str | Unset | None = UNSET) -> RuleDeployment:
        """Make a kept version live again (a rollback); :class:`worker.errors.StoreError`
        if it was never deployed. ``expect_live`` as in :meth:`deploy_rules`."""

    def live_version(self) -> str | None:
        """The live version, None if none was ever deployed (one small read: workers
        poll it)."""

    def live_rules(self) -> tuple[str, dict[str, bytes]] | None:
        """The live version and its rule files."""

    def rule_files(self, version: str) -> dict[str, bytes] | None:
        """A kept version's rule files, None if it was never deployed."""

    def rule_history(self) -> list[RuleDeployment]:
        """Every deployment and rollback, oldest first."""


def encode_rule_files(files: Mapping[str, bytes]) -> str:
    """Rule files as stored: one JSON object, name -> text (rule files are UTF-8; a
    file that is not never validates, so never reaches a store)."""
    return json.dumps({name: data.decode("utf-8") for name, data in sorted(files.items())},
                      ensure_ascii=False, sort_keys=True)


def decode_rule_files(text: str) -> dict[str, bytes]:
    """The inverse of :func:`encode_rule_files`: the exact bytes deployed (the version
    is their hash, and the worker checks it)."""
    files = json.loads(text)
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ValueError("stored rule files are not a JSON object of texts")
    return {str(name): value.encode("utf-8") for name, value in files.items()}


def no_such_version(where: str, version: str) -> StoreError:
    return StoreError(f"state store {where}: no deployed rules version {version!r}")


def not_expected(where: str, expected: str | None, live: str | None) -> StoreConflictError:
    return StoreConflictError(
        f"state store {where}: the live rules changed meanwhile (now {live or 'none'}, "
        f"expected {expected or 'none'}); nothing was written, run it again")


@lru_cache(maxsize=4096)
def _categories_of(text: str) -> tuple[frozenset[str], ...]:
    """A ``categories`` column (per relation): few distinct values, each decoded once,
    and the loaded conversations share them as live ones do (under views, sixteen sets
    of half a dozen names are over 10 KB per conversation)."""
    return tuple(frozenset(c) for c in orjson.loads(text))


def state_from_rows(account_id: str, row: Sequence[Any] | None,
                    conversation_rows: Sequence[Sequence[Any]], agents: Sequence[Sequence[Any]],
                    event_rows: Sequence[Sequence[Any]],
                    tombstone_rows: Sequence[Sequence[Any]],
                    event_window: int, tombstone_window: int) -> AccountState | None:
    """One account from a store's rows (both stores select the same columns): the
    account row or None, conversations (their details last, :mod:`worker.store.details`),
    agents (id, counts, unread counts, seq), and the newest event ids and tombstones as
    (number, ...) rows, newest first. None if nothing is stored.

    An agent's unread counts stored empty (``{}``, or NULL) load as none at all:
    :meth:`AccountState.unread_counts_of` reads both alike."""
    if row is None and not (conversation_rows or agents or event_rows or tombstone_rows):
        return None
    if row is None:
        account, rules_version, generation, last, counter = (
            Account(account_id), None, 0, None, 0)
    else:
        (plan, agent_ids, groups, last_sequence, rules_version, generation, last, counter,
         views) = row
        account = Account(account_id, plan, frozenset(orjson.loads(agent_ids)),
                          {g: frozenset(m) for g, m in orjson.loads(groups).items()},
                          last_sequence, views_of(views))
    state = AccountState(account, rules_version=rules_version, event_window=event_window,
                         tombstone_window=tombstone_window)
    # Public attributes, not the mutating methods: a loaded state has nothing to write.
    state.conversations = {
        conversation_id: Conversation(
            account_id, conversation_id, status, group_id, frozenset(orjson.loads(joined)),
            last_sequence, _categories_of(categories),
            None if waiting is None else datetime.fromisoformat(waiting), last_by,
            None if due is None else from_micros(due),
            *(NO_DETAILS if details is None else details_of(details)))
        for (conversation_id, status, group_id, joined, last_sequence, categories, waiting,
             last_by, due, details) in conversation_rows}
    state.counts = {agent_id: orjson.loads(counts) for agent_id, counts, _, _ in agents}
    state.unread_counts = {agent_id: orjson.loads(unread) for agent_id, _, unread, _ in agents
                           if unread is not None and unread != "{}"}
    state.seqs = {agent_id: seq for agent_id, _, _, seq in agents if seq}
    recent: OrderedDict[str, int] = OrderedDict()
    for number, event_id in reversed(event_rows):  # newest first from the query
        recent[event_id] = number
        recent.move_to_end(event_id)
    tombstones: OrderedDict[str, tuple[int, int | None]] = OrderedDict()
    for number, conversation_id, last_sequence in reversed(tombstone_rows):
        tombstones.pop(conversation_id, None)
        tombstones[conversation_id] = (number, last_sequence)
    state.recent = recent
    state.tombstones = tombstones
    state.rules_generation = generation
    state.last_occurred_at = None if last is None else datetime.fromisoformat(last)
    # Never below a stored number, even for an account with no row of its own.
    state.event_counter = max(counter, *recent.values(),
                              *(n for n, _ in tombstones.values()), 0)
    return state
