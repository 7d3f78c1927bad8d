"""What a clean run publishes for a stream, and verdicts on what downstream received.

The expected updates come from the product's own offline replay, called through its
command-line contract (docs/reference/cli.md: ``inbox-rules replay -``, events on stdin,
updates on stdout, one JSON object a line) in process with click's CliRunner, so the
oracle does not depend on how the worker is built inside.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from click.testing import CliRunner

from tests.support.streams import encode
from worker.cli import main
from worker.settings import Settings

if TYPE_CHECKING:
    from tests.support.harness import Received
    from worker.domain.account import AccountState

DEFAULTS = Settings.model_fields

Key = tuple[str, str, str]  # (account, agent, conversation)
Final = tuple[dict[Key, list[str]], dict[tuple[str, str], dict[str, int]]]


def replay(events: Iterable[dict[str, Any]], rules_dir: Path | None = None,
           until: str | None = None) -> list[dict[str, Any]]:
    """The updates a clean run publishes for ``events``, in publish order, as JSON
    objects: ``inbox-rules replay -`` (with ``--rules rules_dir``, ``--until until``)."""
    args = ["replay", "-"] if rules_dir is None else ["replay", "-", "--rules", str(rules_dir)]
    if until is not None:
        args += ["--until", until]
    stdin = b"".join(body + b"\n" for body in encode(events))
    result = CliRunner().invoke(main, args, input=stdin, catch_exceptions=False)
    assert result.exit_code == 0, (f"inbox-rules replay exited with {result.exit_code}: "
                                   f"{result.stderr[-2000:]}")
    return [json.loads(line) for line in result.stdout.splitlines()]


def final_view(updates: Iterable[dict[str, Any]]) -> Final:
    """What downstream ends up showing: the last categories per (account, agent,
    conversation) and the last counts per (account, agent)."""
    categories: dict[Key, list[str]] = {}
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for update in updates:
        account, agent = update["account_id"], update["agent_id"]
        categories[(account, agent, update["conversation_id"])] = update["categories"]
        counts[(account, agent)] = update["counts"]
    return categories, counts


def final_unread(updates: Iterable[dict[str, Any]],
                 ) -> tuple[set[Key], dict[tuple[str, str], dict[str, int]]]:
    """What downstream ends up showing of unread: the (account, agent, conversation)
    whose last update said unread, and the last unread counts per (account, agent)."""
    unread: dict[Key, bool] = {}
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for update in updates:
        account, agent = update["account_id"], update["agent_id"]
        unread[(account, agent, update["conversation_id"])] = update["unread"]
        counts[(account, agent)] = update["unread_counts"]
    return {key for key, flag in unread.items() if flag}, counts


@dataclass
class Oracle:
    """What a clean, crash-free run produces for ``events``: the updates in publish
    order, and (computed when asked) the final state of each account, with the
    worker's windows (its defaults unless given)."""

    events: list[dict[str, Any]]
    updates: list[dict[str, Any]]
    dedup_window: int = DEFAULTS["dedup_window"].default
    tombstone_window: int = DEFAULTS["tombstone_window"].default

    @classmethod
    def replay(cls, events: Iterable[dict[str, Any]], **windows: int) -> Oracle:
        events = list(events)
        return cls(events, replay(events), **windows)

    @cached_property
    def accounts(self) -> dict[str, AccountState]:
        return expected_accounts(self.events, self.dedup_window)


@dataclass
class Verdict:
    """Downstream and the state file compared with the oracle. Every list should be
    empty; the numbers are figures."""

    events: int
    expected_updates: int
    received_updates: int
    duplicates: int = 0
    lost_updates: list[str] = field(default_factory=list)
    lost_events: list[str] = field(default_factory=list)
    unexpected_updates: list[str] = field(default_factory=list)
    wrong_bodies: list[str] = field(default_factory=list)
    conflicting_duplicates: list[str] = field(default_factory=list)
    bad_message_ids: list[str] = field(default_factory=list)
    wrong_final_categories: list[str] = field(default_factory=list)
    wrong_final_counts: list[str] = field(default_factory=list)
    wrong_final_unread: list[str] = field(default_factory=list)  # flags and unread counts
    state_differences: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        out = []
        for name in ("lost_updates", "lost_events", "unexpected_updates", "wrong_bodies",
                     "conflicting_duplicates", "bad_message_ids", "wrong_final_categories",
                     "wrong_final_counts", "wrong_final_unread", "state_differences"):
            items = getattr(self, name)
            if items:
                out.append(f"{name}: {len(items)}, e.g. {items[:3]}")
        return out

    def assert_clean(self) -> None:
        problems = self.problems()
        assert not problems, "differs from the offline replay:\n" + "\n".join(problems)


def judge(oracle: Oracle, received: Sequence[Received], events: int,
          state_path: Path | None = None) -> Verdict:
    """Compare what downstream received (in arrival order) with the oracle, and with
    ``state_path`` the worker's committed state too."""
    verdict = Verdict(events, len(oracle.updates), len(received))
    expected = {u["update_id"]: u for u in oracle.updates}
    first_body: dict[str, bytes] = {}
    bodies: list[dict[str, Any]] = []
    for message in received:
        update = json.loads(message.body)
        uid = update["update_id"]
        bodies.append(update)
        if message.properties.message_id != uid:
            verdict.bad_message_ids.append(f"{uid} has message_id {message.properties.message_id}")
        if uid in first_body:
            verdict.duplicates += 1
            if first_body[uid] != message.body:
                verdict.conflicting_duplicates.append(uid)
            continue
        first_body[uid] = message.body
        if uid not in expected:
            verdict.unexpected_updates.append(f"{uid} caused by {update['cause_event_id']}")
        elif update != expected[uid]:
            verdict.wrong_bodies.append(f"{uid}: {update} != {expected[uid]}")
    lost = [u for u in oracle.updates if u["update_id"] not in first_body]
    verdict.lost_updates = [f"{u['update_id']} caused by {u['cause_event_id']}" for u in lost]
    verdict.lost_events = sorted({u["cause_event_id"] for u in lost})

    want, want_counts = final_view(oracle.updates)
    got, got_counts = final_view(bodies)
    for key in sorted(set(want) | set(got)):
        # Never non-empty for the oracle and never seen downstream: nothing to show.
        if want.get(key, []) != got.get(key, []):
            verdict.wrong_final_categories.append(
                f"{key}: downstream {got.get(key)}, replay {want.get(key)}")
    verdict.wrong_final_counts = _differences(want_counts, got_counts)
    want_unread, want_unread_counts = final_unread(oracle.updates)
    got_unread, got_unread_counts = final_unread(bodies)
    verdict.wrong_final_unread = [
        f"{key}: unread downstream {key in got_unread}, replay {key in want_unread}"
        for key in sorted(want_unread ^ got_unread)] + _differences(
            want_unread_counts, got_unread_counts, "unread counts ")
    if state_path is not None:
        verdict.state_differences, never_committed = compare_committed(oracle, state_path)
        verdict.lost_events = sorted(set(verdict.lost_events) | never_committed)
    return verdict


def _differences(want: dict[tuple[str, str], dict[str, int]],
                 got: dict[tuple[str, str], dict[str, int]], what: str = "") -> list[str]:
    """The (account, agent) whose last counts differ."""
    return [f"{what}{agent}: downstream {got.get(agent)}, replay {want.get(agent)}"
            for agent in sorted(set(want) | set(got)) if want.get(agent) != got.get(agent)]


# -- the committed state ----------------------------------------------------------------
# The only place here that knows the worker's state model and its store (no command
# shows the committed state): imported when a test compares state, so the rest of the
# oracle never depends on them.
def expected_accounts(events: Iterable[dict[str, Any]], event_window: int,
                      ) -> dict[str, AccountState]:
    """The per-account state a clean run of ``events`` ends with."""
    from contracts import parse_event
    from worker.domain.inbox import Inbox
    from worker.rulebook import load_rules

    inbox = Inbox(load_rules(None), event_window=event_window)
    for body in encode(events):
        inbox.handle(parse_event(body))
    return inbox.accounts


def committed_accounts(state_path: Path, account_ids: Iterable[str], *, event_window: int,
                       tombstone_window: int) -> dict[str, AccountState | None]:
    """What the worker committed to ``state_path`` for each account (None: nothing)."""
    from worker.store.sqlite import SqliteStore

    store = SqliteStore(state_path)
    try:
        return {account_id: store.load_account(account_id, event_window=event_window,
                                               tombstone_window=tombstone_window)
                for account_id in account_ids}
    finally:
        store.close()


def _comparable(state: AccountState) -> dict[str, object]:
    return {"account": state.account, "conversations": state.conversations,
            "counts": {agent: {name: n for name, n in counts.items() if n}
                       for agent, counts in state.counts.items()},
            # Agents with nothing unread left out (a store need not keep them).
            "unread counts": {agent: {name: n for name, n in counts.items() if n}
                              for agent, counts in state.unread_counts.items()
                              if any(counts.values())},
            "seqs": state.seqs, "remembered event ids": list(state.recent),
            "tombstones": list(state.tombstones)}


def compare_committed(oracle: Oracle, state_path: Path) -> tuple[list[str], set[str]]:
    """Where the worker's committed state differs from the oracle's final state, and the
    event ids the oracle applied that the worker never committed."""
    got = committed_accounts(state_path, oracle.accounts, event_window=oracle.dedup_window,
                             tombstone_window=oracle.tombstone_window)
    differences: list[str] = []
    never_committed: set[str] = set()
    for account_id, want in sorted(oracle.accounts.items()):
        committed = got[account_id]
        if committed is None:
            differences.append(f"account {account_id}: never committed")
            never_committed.update(want.recent)
            continue
        never_committed.update(set(want.recent) - set(committed.recent))
        mine, theirs = _comparable(committed), _comparable(want)
        differences += [f"{account_id} {name}: worker {mine[name]!r}, replay {theirs[name]!r}"
                        for name in theirs if mine[name] != theirs[name]]
    return differences, never_committed
