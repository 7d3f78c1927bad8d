"""``inbox-rules shadow``: what would change if a candidate rule set went live now.

The differences are found the way the worker finds them when new rules go live: each
account adopts the candidate (:meth:`Categoriser.adopt`), which re-evaluates every
conversation for every agent and lists exactly the (agent, conversation) pairs whose
categories change, with their badge count changes. The states come from a replay of
events under the current rules (a category decision depends only on the state, never
on the rules that were live before, so this equals replaying under the candidate) or
from the worker's store, opened read-only; either way they are throwaway copies that
nothing writes back.

The report counts pairs entering and leaving each category, the badge count changes
per agent (largest first), and keeps a few examples per category and direction with
the candidate's explanation (and the current rules', when they are the ones that
categorised the state).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from contracts.requests import CategoryExplanation, ExplainReply
from worker.domain.account import AccountState
from worker.domain.categoriser import Categoriser
from worker.rulebook.engine import CompiledRules
from worker.rulebook.explain import explain_pair
from worker.settings import Settings, mask_url
from worker.tools.explain import render_category

EXAMPLES_PER_CHANGE = 3  # per category and direction (enter, leave)
AGENTS_SHOWN = 10  # badge count changes listed in the text report (all in JSON, to a cap)
AGENTS_IN_JSON = 1000


@dataclass
class Example:
    """One pair whose categories change, explained."""

    account_id: str
    agent_id: str
    conversation_id: str
    category: str
    change: str  # "enter" or "leave"
    before: list[str]
    after: list[str]
    candidate: ExplainReply
    current: ExplainReply | None  # None: the state was categorised by other rules

    def to_json(self) -> dict[str, Any]:
        def only(reply: ExplainReply | None) -> dict[str, Any] | None:
            found = _explanation(reply, self.category)
            return None if found is None else found.model_dump()

        return {"account_id": self.account_id, "agent_id": self.agent_id,
                "conversation_id": self.conversation_id, "category": self.category,
                "change": self.change, "before": self.before, "after": self.after,
                "facts": self.candidate.facts, "candidate": only(self.candidate),
                "current": only(self.current)}


def _explanation(reply: ExplainReply | None, name: str) -> CategoryExplanation | None:
    if reply is None:
        return None
    return next((e for e in reply.explanations if e.name == name), None)


@dataclass
class ShadowReport:
    candidate_version: str
    current_version: str | None
    accounts: int = 0
    pairs: int = 0  # (agent, conversation) pairs compared
    differences: int = 0  # pairs whose categories differ
    entered: Counter[str] = field(default_factory=Counter)
    left: Counter[str] = field(default_factory=Counter)
    # (account, agent) -> category -> change of the badge count
    badges: dict[tuple[str, str], Counter[str]] = field(default_factory=dict)
    examples: list[Example] = field(default_factory=list)
    # The rules each account was categorised under (one version after a replay; a
    # stored state may be mid-rollout): what the differences are differences from.
    categorised: Counter[str] = field(default_factory=Counter)

    def badge_changes(self) -> list[tuple[str, str, dict[str, int]]]:
        """Agents whose badge counts change, the largest total change first."""
        rows = [(account, agent, {c: n for c, n in sorted(counts.items()) if n})
                for (account, agent), counts in self.badges.items()]
        rows = [row for row in rows if row[2]]
        rows.sort(key=lambda r: (-sum(abs(n) for n in r[2].values()), r[0], r[1]))
        return rows

    def to_json(self) -> dict[str, Any]:
        changes = self.badge_changes()
        names = sorted(set(self.entered) | set(self.left))
        return {
            "differences": self.differences, "pairs": self.pairs, "accounts": self.accounts,
            "rules_version": self.current_version, "candidate_version": self.candidate_version,
            "categorised_under": dict(self.categorised),
            "categories": {n: {"enter": self.entered[n], "leave": self.left[n]} for n in names},
            "agents_changed": len(changes),
            "badge_changes": [{"account_id": a, "agent_id": g, "changes": c}
                              for a, g, c in changes[:AGENTS_IN_JSON]],
            "examples": [e.to_json() for e in self.examples],
        }


def shadow(states: Iterable[AccountState], candidate: CompiledRules,
           current: CompiledRules | None = None, *,
           progress: Callable[[int], None] | None = None) -> ShadowReport:
    """Adopt ``candidate`` in each state (they are changed: pass copies or states that
    are thrown away after) and report the differences. ``current``, if given, explains
    the examples' "before" for accounts it categorised."""
    categoriser = Categoriser(candidate)
    report = ShadowReport(candidate.version, current.version if current else None)
    kept: Counter[tuple[str, str]] = Counter()
    for state in states:
        report.accounts += 1
        report.pairs += len(state.account.agents) * len(state.conversations)
        categorised_by = state.rules_version
        report.categorised[categorised_by or "(none)"] += 1
        for update in categoriser.adopt(state):
            after = update.categories
            before = sorted((set(after) - set(update.added)) | set(update.removed))
            report.differences += 1
            report.entered.update(update.added)
            report.left.update(update.removed)
            badges = report.badges.setdefault((state.account_id, update.agent_id), Counter())
            badges.update(update.added)
            badges.subtract(update.removed)
            for change, names in (("enter", update.added), ("leave", update.removed)):
                for name in names:
                    if kept[(name, change)] >= EXAMPLES_PER_CHANGE:
                        continue
                    kept[(name, change)] += 1
                    report.examples.append(_example(
                        state, update.agent_id, update.conversation_id, name, change, before,
                        after, candidate,
                        current if current and categorised_by == current.version else None))
        if progress is not None:
            progress(1)
    return report


def _example(state: AccountState, agent_id: str, conversation_id: str, category: str,
             change: str, before: list[str], after: list[str], candidate: CompiledRules,
             current: CompiledRules | None) -> Example:
    account_id = state.account_id
    return Example(
        account_id, agent_id, conversation_id, category, change, before, list(after),
        explain_pair(candidate, state, account_id, agent_id, conversation_id),
        None if current is None else explain_pair(current, state, account_id, agent_id,
                                                  conversation_id))


def render(report: ShadowReport, *, current_source: str, candidate_source: str) -> str:
    """The report for a person."""
    under = ", ".join(f"{version} ({count} account(s))" if len(report.categorised) > 1
                      else version for version, count in report.categorised.most_common())
    lines = [f"now: {current_source}, categorised under rules {under or '(no account)'}",
             f"candidate: {candidate_source}, rules {report.candidate_version}",
             f"{report.differences} of {report.pairs} (agent, conversation) pairs in "
             f"{report.accounts} account(s) would change"]
    if not report.differences:
        return "\n".join(lines) + "\n"
    names = sorted(set(report.entered) | set(report.left))
    width = max(len("category"), *(len(n) for n in names))
    lines += ["", f"  {'category':<{width}}  {'enter':>7}  {'leave':>7}"]
    lines += [f"  {n:<{width}}  {report.entered[n]:>7}  {report.left[n]:>7}" for n in names]
    changes = report.badge_changes()
    lines += ["", f"badge counts ({len(changes)} agent(s), largest change first)"]
    for account, agent, counts in changes[:AGENTS_SHOWN]:
        text = "  ".join(f"{c} {n:+d}" for c, n in counts.items())
        lines.append(f"  {account} / {agent}: {text}")
    if len(changes) > AGENTS_SHOWN:
        lines.append(f"  ... and {len(changes) - AGENTS_SHOWN} more")
    lines += ["", "examples"]
    for example in report.examples:
        verb = "enters" if example.change == "enter" else "leaves"
        lines += ["", f"{example.category} {verb} for {example.agent_id} / "
                      f"{example.conversation_id} in {example.account_id}: "
                      f"[{', '.join(example.before)}] -> [{', '.join(example.after)}]"]
        for label, reply in (("candidate", example.candidate), ("now", example.current)):
            found = _explanation(reply, example.category)
            if reply is None or found is None:
                continue
            lines.append(f"  {label}:")
            lines += ["    " + line for line in render_category(found, reply)]
    return "\n".join(lines) + "\n"


class AccountSource(Protocol):
    """A store opened read-only, as ``shadow --store`` reads it."""

    def iter_accounts(self) -> Iterator[AccountState]: ...

    def close(self) -> None: ...


def open_state(where: str, settings: Settings) -> tuple[AccountSource, str]:
    """The worker's stored state, read-only, and how to name it (password masked).

    ``where`` is a SQLite file, or a ``postgresql://`` URL; empty: the worker's own
    settings say (``INBOX_RULES_STORE_URL`` if set, else ``INBOX_RULES_STATE_PATH``).
    Raises :class:`~worker.errors.StoreError` if it cannot be read.
    """
    url = where if where.startswith(("postgresql://", "postgres://")) else (
        None if where else settings.store_url)
    if url:
        from worker.store.postgres import PostgresStore  # psycopg: only when used

        return PostgresStore(url, settings.partitions, read_only=True), mask_url(url)
    from worker.store.sqlite import SqliteStore

    path = Path(where) if where else settings.state_path
    return SqliteStore(path, read_only=True), str(path)
