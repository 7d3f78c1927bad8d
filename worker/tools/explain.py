"""``inbox-rules explain``: why one agent sees one conversation in the categories it does.

Offline, the events are replayed exactly as ``inbox-rules replay`` does (the same
:class:`~worker.domain.inbox.Inbox`), then the pair is explained from the final state;
live, the running worker answers an ``explain`` request from its state. Either way the
answer is an :class:`~contracts.requests.ExplainReply`, drawn for a person by
:func:`render` (or printed as JSON by the command).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from contracts.requests import CategoryExplanation, ExplainReply
from worker.domain.account import AccountState
from worker.domain.inbox import Inbox
from worker.rulebook.engine import CompiledRules
from worker.rulebook.explain import explain_pair
from worker.tools.replay import BadLine, replay_lines


@dataclass
class Explained:
    """An offline explanation: the reply, why nothing was decided (if so), bad lines."""

    reply: ExplainReply
    undecided: str | None = None
    bad: list[BadLine] = field(default_factory=list)


def explain_events(rules: CompiledRules, lines: Iterable[bytes], account_id: str,
                   agent_id: str, conversation_id: str,
                   progress: Callable[[int], None] | None = None) -> Explained:
    """Replay ``lines`` under ``rules``, then explain (agent, conversation)."""
    inbox = Inbox(rules)
    bad = [item for item in replay_lines(inbox, lines, progress=progress)
           if isinstance(item, BadLine)]
    state = inbox.accounts.get(account_id)
    reply = explain_pair(rules, state, account_id, agent_id, conversation_id)
    return Explained(reply, None if reply.facts else undecided(state, agent_id,
                                                               conversation_id), bad)


def undecided(state: AccountState | None, agent_id: str, conversation_id: str) -> str:
    """Why the worker decides nothing for the pair, as precisely as the state says."""
    if state is None:
        return "no event names this account"
    if conversation_id in state.tombstones:
        return f"conversation {conversation_id} was deleted: it is in no category"
    if conversation_id not in state.conversations:
        return f"no event names conversation {conversation_id} in this account"
    known = ", ".join(sorted(state.account.agents)) or "none"
    return f"{agent_id} is not an agent of the account (its agents: {known})"


LIVE_UNDECIDED = ("the worker decides nothing for this pair: the account or the "
                  "conversation is unknown or deleted, or the agent is not one of the "
                  "account's")


def render(reply: ExplainReply, undecided: str | None = None, source: str | None = None,
           ) -> str:
    """The reply for a person: the facts, then each category with its deciding
    conditions as an indented tree (``+`` held, ``-`` did not), ``file:line`` first.

    A reference already explained above is not expanded again: a category referenced
    by another is explained in its own section, a predicate the first time it appears
    in a section.
    """
    rules = f"rules {reply.rules_version}" + (f" ({source})" if source else "")
    lines = [f"{reply.agent_id} / {reply.conversation_id} in {reply.account_id}, {rules}"]
    if not reply.facts:
        lines.append(f"no facts: {undecided or LIVE_UNDECIDED}")
        lines.append("categories: none")
        return "\n".join(lines) + "\n"
    lines.append("")
    lines.append("facts")
    width = max(len(name) for name in reply.facts)
    lines.extend(f"  {name:<{width}}  {_value(value)}" for name, value in reply.facts.items())
    lines.append("")
    lines.append(f"categories: {', '.join(reply.categories) or 'none'}")
    for category in reply.explanations:
        lines.append("")
        lines.extend(render_category(category, reply))
    return "\n".join(lines) + "\n"


def render_category(category: CategoryExplanation, reply: ExplainReply) -> list[str]:
    """One category's verdict and its deciding conditions, a line each (see
    :func:`render`)."""
    verdict = "holds" if category.holds else "does not hold"
    out = [f"{category.name}: {verdict}"]
    shown: set[str] = set()
    skip_deeper_than: int | None = None
    for condition in category.conditions:
        if skip_deeper_than is not None:
            if condition.depth > skip_deeper_than:
                continue
            skip_deeper_than = None
        text = condition.condition
        kind, _, name = text.partition(" ")
        note = ""
        if kind == "category" and name != category.name:
            note = f"  (see {name})"
            skip_deeper_than = condition.depth
        elif kind == "predicate" and text in shown:
            note = "  (as above)"
            skip_deeper_than = condition.depth
        elif kind == "predicate":
            shown.add(text)
        elif kind in reply.facts:
            note = f"  (is {_value(reply.facts[kind])})"
        mark = "+" if condition.holds else "-"
        where = (_short(condition.file) if condition.line is None
                 else f"{_short(condition.file)}:{condition.line}")
        out.append(f"  {'  ' * condition.depth}{mark} {where}  {text}{note}")
    return out


def _value(value: object) -> str:
    """A fact's value as a rule file would write it (an absent one: "absent")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "absent"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def _short(file: str) -> str:
    """A rule file relative to the working directory when it is under it."""
    try:
        return os.path.relpath(file) if Path(file).resolve().is_relative_to(Path.cwd()) \
            else file
    except ValueError:  # another drive (Windows)
        return file
