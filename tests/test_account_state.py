"""The per-account core: rule adoptions that never reuse an update id, adoptions that
repeat themselves exactly, a journal that undoes a failed event, deleted conversations
that leave the state, bounded memories, and update JSON that is the contract's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from contracts import CategoryUpdate, parse_event
from tests.support.streams import event_stream
from worker.domain.account import AccountState
from worker.domain.categoriser import Categoriser
from worker.domain.inbox import Inbox
from worker.domain.state import Account
from worker.rulebook import CompiledRules, load_rules
from worker.rulebook.engine import default_rules_dir

RULES = load_rules(None)


def _variant(tmp_path: Path) -> CompiledRules:
    """`new` ignores groups: group chats become new for everyone."""
    edited = tmp_path / "variant"
    shutil.copytree(default_rules_dir(), edited)
    text = (edited / "inbox.yaml").read_text()
    (edited / "inbox.yaml").write_text(text.replace(
        "            - predicate: routed_to_agent\n", "            - predicate: open\n"))
    return load_rules(edited)


def _fed(rules: CompiledRules, events: list[dict[str, Any]]) -> Inbox:
    inbox = Inbox(rules)
    for event in events:
        inbox.handle(parse_event(json.dumps(event).encode()))
    return inbox


def test_a_rules_flip_flop_never_reuses_an_update_id_for_other_content(
        tmp_path: Path) -> None:
    """Rolling out B, back to A, then B again: a downstream that drops duplicates by
    update_id must still end with the right categories."""
    variant = _variant(tmp_path)
    events = event_stream(seed=5, count=300)
    inbox = _fed(RULES, events)
    seen: dict[str, bytes] = {}
    downstream: dict[tuple[str, str, str], list[str]] = {}
    for rules in (variant, RULES, variant):
        for update in inbox.adopt_rules(rules):
            body = seen.setdefault(update.update_id, update.body)
            assert body == update.body, "an update id was reused for other content"
            downstream[(update.account_id, update.agent_id, update.conversation_id)] = list(
                update.categories)
    clean = _fed(variant, events)
    for (account_id, agent_id, conversation_id), categories in downstream.items():
        assert sorted(clean.categories_of(account_id, conversation_id, agent_id)) == categories


def test_a_retried_adoption_repeats_the_same_updates_exactly(tmp_path: Path) -> None:
    variant = _variant(tmp_path)
    events = event_stream(seed=6, count=200)
    first = [u.body for u in _fed(RULES, events).adopt_rules(variant)]
    second = [u.body for u in _fed(RULES, events).adopt_rules(variant)]
    assert first and first == second


def test_the_journal_undoes_a_half_applied_event_exactly() -> None:
    events = [parse_event(json.dumps(e).encode()) for e in event_stream(seed=7, count=120)]
    categoriser = Categoriser(RULES)
    account_id = events[0].account_id
    state = AccountState(Account(account_id), rules_version=RULES.version)
    mine = [e for e in events if e.account_id == account_id]
    for event in mine[:-5]:
        categoriser.handle(state, event)
    before = (state.account, dict(state.conversations),
              {a: dict(c) for a, c in state.counts.items()}, dict(state.seqs),
              list(state.recent), list(state.tombstones), state.event_counter)
    state.begin()
    for event in mine[-5:]:
        categoriser.handle(state, event)
    state.rollback()
    after = (state.account, dict(state.conversations),
             {a: dict(c) for a, c in state.counts.items()}, dict(state.seqs),
             list(state.recent), list(state.tombstones), state.event_counter)
    assert after == before


def test_deleted_conversations_leave_the_state_and_stay_deleted() -> None:
    inbox = Inbox(RULES)
    base = {"account_id": "acc-1", "occurred_at": "2026-11-24T10:00:00Z"}
    for n, (kind, data) in enumerate([
            ("account.updated", {"plan": "free", "agents": ["ag-1", "ag-2"]}),
            ("conversation.created", {}), ("conversation.deleted", {}),
            ("message.created", {"author": "visitor"})], start=1):
        event = {**base, "event_id": f"e{n}", "type": kind, "data": data}
        if kind != "account.updated":
            event["conversation_id"] = "c-1"
        inbox.handle(parse_event(json.dumps(event).encode()))
    state = inbox.account("acc-1")
    assert "c-1" not in state.conversations and state.is_deleted("c-1")
    assert inbox.categories_of("acc-1", "c-1", "ag-1") == frozenset()
    assert state.counts_of("ag-1").get("all", 0) == 0


def test_the_duplicate_window_is_per_account_and_bounded() -> None:
    inbox = Inbox(RULES, event_window=10)
    for event in event_stream(seed=8, count=400):
        inbox.handle(parse_event(json.dumps(event).encode()))
    assert all(len(state.recent) <= 10 for state in inbox.accounts.values())


def test_update_json_is_the_contract_model_json() -> None:
    inbox = Inbox(RULES)
    for event in event_stream(seed=9, count=150):
        for update in inbox.handle(parse_event(json.dumps(event).encode())):
            model = CategoryUpdate.model_validate_json(update.body)
            assert json.loads(update.body) == json.loads(model.model_dump_json())
            assert model.update_id == update.update_id and model.seq == update.seq
            assert update.routing_key == model.routing_key


def test_seq_numbers_each_agents_updates_without_gaps() -> None:
    inbox = Inbox(RULES)
    last: dict[tuple[str, str], int] = {}
    for event in event_stream(seed=10, count=300):
        for update in inbox.handle(parse_event(json.dumps(event).encode())):
            key = (update.account_id, update.agent_id)
            assert update.seq == last.get(key, 0) + 1
            last[key] = update.seq


def test_snapshot_pages_and_filters_cover_the_inbox_exactly() -> None:
    from worker.domain.snapshot import snapshot

    inbox = _fed(RULES, event_stream(seed=11, count=300))
    state = max(inbox.accounts.values(), key=lambda s: len(s.conversations))
    agent = sorted(state.account.agents)[0]
    whole = snapshot(state, agent, RULES.categories, RULES.version, limit=10_000)
    assert whole["next_after"] is None and whole["conversations"]
    pages: dict[str, list[str]] = {}
    after = None
    while True:
        page = snapshot(state, agent, RULES.categories, RULES.version, after=after, limit=2)
        assert len(page["conversations"]) <= 2 and page["counts"] == whole["counts"]
        pages.update(page["conversations"])
        after = page["next_after"]
        if after is None:
            break
    assert pages == whole["conversations"]
    resolved = snapshot(state, agent, RULES.categories, RULES.version,
                        categories=["resolved"], limit=10_000)
    assert resolved["conversations"] == {c: cats for c, cats in whole["conversations"].items()
                                         if "resolved" in cats}
    assert sum(1 for cats in whole["conversations"].values() if "all" in cats) == whole[
        "counts"]["all"]


def test_update_ids_follow_their_documented_definition() -> None:
    from worker.domain.updates import update_id_for

    inbox = Inbox(RULES)
    checked = 0
    for event in event_stream(seed=12, count=100):
        for update in inbox.handle(parse_event(json.dumps(event).encode())):
            assert update.update_id == update_id_for(
                RULES.version, update.account_id, update.cause_event_id, update.agent_id,
                update.conversation_id)
            checked += 1
    assert checked
