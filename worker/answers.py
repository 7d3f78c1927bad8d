"""Answers to requests (snapshot, explain, views.check): read only, from the account's
state as the events before the request left it, under the rules in force for it."""

from __future__ import annotations

import orjson

from contracts.requests import (
    MAX_PREVIEW_CONVERSATIONS,
    Request,
    SnapshotRequest,
    ViewPreview,
    ViewsCheckReply,
    ViewsCheckRequest,
)
from worker.accounts import AccountCache
from worker.domain.categoriser import Categoriser
from worker.domain.snapshot import snapshot
from worker.domain.viewing import preview
from worker.rulebook.engine import CompiledRules
from worker.rulebook.explain import explain_pair


class UnanswerableError(Exception):
    """A request this worker cannot answer: it is dead-lettered with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def answer(request: Request, categoriser: Categoriser, cache: AccountCache) -> bytes:
    """The reply's body. Raises :class:`worker.errors.StoreError` when the account
    cannot be read (the batch is retried) and :class:`UnanswerableError`."""
    rules = categoriser.rules
    if isinstance(request, ViewsCheckRequest):
        return views_check(request, categoriser, cache).model_dump_json().encode()
    state = cache.get(request.account_id, rules.version)
    if isinstance(request, SnapshotRequest):
        names = categoriser.views.category_names(state.account.views, request.agent_id)
        return orjson.dumps(snapshot(
            state, request.agent_id, names, rules.version, categories=request.categories,
            after=request.after, limit=request.limit))
    if not isinstance(rules, CompiledRules):
        # Rules that are not rule files (tests' doubles) have no conditions to explain.
        raise UnanswerableError("explain requests need rule files to explain")
    return explain_pair(rules, state, request.account_id, request.agent_id,
                        request.conversation_id).model_dump_json().encode()


def views_check(request: ViewsCheckRequest, categoriser: Categoriser,
                cache: AccountCache) -> ViewsCheckReply:
    """Every problem of candidate views; valid ones previewed in ``account_id``."""
    rules = categoriser.rules
    personal = request.agent_id is not None
    body: dict[str, object] = {"views": request.views}
    if personal:
        body["agent_id"] = request.agent_id
    text, problems = rules.check_views(body, personal)
    if problems or request.account_id is None:
        return ViewsCheckReply(problems=problems)
    state = cache.get(request.account_id, rules.version)
    agents = ([request.agent_id] if request.agent_id is not None
              else sorted(state.account.agents))
    found = (preview(state, rules.compile_views(text), agents, MAX_PREVIEW_CONVERSATIONS)
             if text else {})
    return ViewsCheckReply(problems=[], preview={
        view: {agent: ViewPreview(count=count, conversations=ids)
               for agent, (count, ids) in per_agent.items()}
        for view, per_agent in found.items()})
