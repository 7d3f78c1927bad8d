"""The SQLite store's rows: accounts and conversations as its tables hold them."""

from __future__ import annotations

from functools import lru_cache

import orjson

from worker.domain.account import AccountWrite
from worker.domain.state import Conversation
from worker.store import micros
from worker.store.details import details_json


def json_text(value: object, option: int = 0) -> str:
    # orjson: the same JSON as the json module's compact form, several times faster
    # (the rows of every batch are encoded on the worker's only thread).
    return orjson.dumps(value, option=option).decode()


def account_row(write: AccountWrite) -> tuple[object, ...]:
    account = write.account
    groups = {g: sorted(m) for g, m in sorted(account.groups.items())}
    last = None if write.last_occurred_at is None else write.last_occurred_at.isoformat()
    return (write.account_id, account.plan, json_text(sorted(account.agents)),
            json_text(groups), account.last_sequence, write.rules_version,
            write.rules_generation, last, write.event_counter)


@lru_cache(maxsize=4096)
def _categories_json(categories: tuple[frozenset[str], ...]) -> str:
    """Few distinct values (one per combination of category sets): encoded once each."""
    return json_text([sorted(c) for c in categories])


@lru_cache(maxsize=4096)
def _joined_json(joined: frozenset[str]) -> str:
    """Who joined: a handful of distinct sets per account (nobody, one agent ...)."""
    return json_text(sorted(joined))


def conversation_row(conversation: Conversation) -> tuple[object, ...]:
    waiting, due = conversation.waiting_since, conversation.due_at
    return (conversation.account_id, conversation.conversation_id, conversation.status,
            conversation.group_id, _joined_json(conversation.joined),
            conversation.last_sequence, _categories_json(conversation.categories),
            None if waiting is None else waiting.isoformat(), conversation.last_message_by,
            None if due is None else micros(due), details_json(conversation))
