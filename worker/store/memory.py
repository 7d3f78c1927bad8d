"""A store in memory, with the same contract as the durable ones: for tests of the
driver (a commit can be made to fail on demand) and for tools that need no durability."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from worker.domain.account import AccountState, AccountWrite
from worker.domain.state import Account, Conversation
from worker.errors import StoreConflictError, StoreError
from worker.store import (
    UNSET,
    RuleDeployment,
    Unset,
    new_control_token,
    no_such_version,
    not_expected,
)


@dataclass
class _Stored:
    account: Account
    rules_version: str | None = None
    rules_generation: int = 0
    last_occurred_at: datetime | None = None
    event_counter: int = 0
    conversations: dict[str, Conversation] = field(default_factory=dict)
    # agent -> (counts, unread counts, seq)
    agents: dict[str, tuple[dict[str, int], dict[str, int], int]] = field(default_factory=dict)
    events: list[tuple[int, str]] = field(default_factory=list)
    tombstones: list[tuple[int, str, int | None]] = field(default_factory=list)


class MemoryStore:
    """Committed state as plain values; ``fail_commits`` makes the next commits fail."""

    def __init__(self) -> None:
        self.accounts: dict[str, _Stored] = {}
        self.generation = 0
        self._base = 0
        self.fail_commits = 0
        self.commits = 0
        # Rule versions (RuleStore): version -> files, and the deployments in order.
        self.rule_versions: dict[str, dict[str, bytes]] = {}
        self.deployments: list[RuleDeployment] = []
        self.control_token = new_control_token()
        self.in_force: dict[int, str] = {}

    def load_account(self, account_id: str, *, event_window: int,
                     tombstone_window: int) -> AccountState | None:
        stored = self.accounts.get(account_id)
        if stored is None:
            return None
        state = AccountState(stored.account, rules_version=stored.rules_version,
                             event_window=event_window, tombstone_window=tombstone_window)
        state.rules_generation = stored.rules_generation
        state.last_occurred_at = stored.last_occurred_at
        state.event_counter = stored.event_counter
        state.conversations = dict(stored.conversations)
        for agent, (counts, unread, seq) in stored.agents.items():
            state.counts[agent] = dict(counts)
            if unread:  # as the durable stores load them: empty is none
                state.unread_counts[agent] = dict(unread)
            state.seqs[agent] = seq
        state.recent = OrderedDict((e, n) for n, e in stored.events[-event_window:])
        state.tombstones = OrderedDict()
        for number, conversation_id, sequence in stored.tombstones[-tombstone_window:]:
            state.tombstones.pop(conversation_id, None)
            state.tombstones[conversation_id] = (number, sequence)
        return state

    def commit(self, writes: Sequence[AccountWrite],
               rules_in_force: Mapping[int, str] | None = None) -> None:
        if self.fail_commits:
            self.fail_commits -= 1
            raise StoreError("state store: database is locked")
        if self.generation != self._base:
            raise StoreConflictError("state store was written by another worker")
        for write in writes:
            stored = self.accounts.setdefault(write.account_id, _Stored(write.account))
            stored.account = write.account
            stored.rules_version = write.rules_version
            stored.rules_generation = write.rules_generation
            stored.last_occurred_at = write.last_occurred_at
            stored.event_counter = write.event_counter
            for conversation in write.conversations:
                stored.conversations[conversation.conversation_id] = conversation
            for conversation_id in write.deleted:
                stored.conversations.pop(conversation_id, None)
            for agent, (counts, unread, seq) in write.agents.items():
                stored.agents[agent] = (dict(counts), dict(unread), seq)
            stored.events = (stored.events + list(write.events))[-write.event_window:]
            stored.tombstones = (stored.tombstones
                                 + list(write.tombstones))[-write.tombstone_window:]
        self.in_force.update(rules_in_force or {})
        self.generation += 1
        self._base = self.generation
        self.commits += 1

    def rules_in_force(self, partition: int, default: str) -> str:
        return self.in_force.setdefault(partition, default)

    def keep_rules(self, version: str, files: Mapping[str, bytes], source: str) -> None:
        self.rule_versions.setdefault(version, dict(files))

    def accounts_behind(self, rules_version: str, after: str, limit: int,
                        partition: int | None = None) -> list[str]:
        return sorted(a for a, s in self.accounts.items()
                      if a > after and s.rules_version != rules_version)[:limit]

    def due_accounts(self, now: datetime, limit: int) -> list[str]:
        due = sorted((min(c.due_at for c in s.conversations.values() if c.due_at is not None), a)
                     for a, s in self.accounts.items()
                     if any(c.due_at is not None and c.due_at <= now
                            for c in s.conversations.values()))
        return [a for _, a in due][:limit]

    def next_due(self) -> datetime | None:
        return min((c.due_at for s in self.accounts.values() for c in s.conversations.values()
                    if c.due_at is not None), default=None)

    def changed_elsewhere(self) -> bool:
        return self.generation != self._base

    def deploy_rules(self, version: str, files: Mapping[str, bytes], source: str,
                     summary: str, *, expect_live: str | Unset | None = UNSET,
                     ) -> RuleDeployment:
        self._expect(expect_live)
        self.rule_versions.setdefault(version, dict(files))
        return self._go_live(version, "deploy", source, summary)

    def set_live(self, version: str, source: str, summary: str, *,
                 expect_live: str | Unset | None = UNSET) -> RuleDeployment:
        self._expect(expect_live)
        if version not in self.rule_versions:
            raise no_such_version("(memory)", version)
        return self._go_live(version, "rollback", source, summary)

    def _expect(self, expect_live: str | Unset | None) -> None:
        live = self.live_version()
        if not isinstance(expect_live, Unset) and live != expect_live:
            raise not_expected("(memory)", expect_live, live)

    def _go_live(self, version: str, action: str, source: str, summary: str,
                 ) -> RuleDeployment:
        deployment = RuleDeployment(len(self.deployments) + 1, version, datetime.now(UTC),
                                    action, source, summary)
        self.deployments.append(deployment)
        return deployment

    def live_version(self) -> str | None:
        return self.deployments[-1].version if self.deployments else None

    def live_rules(self) -> tuple[str, dict[str, bytes]] | None:
        version = self.live_version()
        return None if version is None else (version, dict(self.rule_versions[version]))

    def rule_files(self, version: str) -> dict[str, bytes] | None:
        files = self.rule_versions.get(version)
        return None if files is None else dict(files)

    def rule_history(self) -> list[RuleDeployment]:
        return list(self.deployments)

    def resync(self) -> None:
        self._base = self.generation

    def close(self) -> None:
        return None
