"""What the domain needs from a rule set, stated as a Protocol: the rule compiler
(:mod:`worker.rulebook`) provides it, the domain never imports the compiler."""

from __future__ import annotations

from typing import Protocol

from worker.domain.facts import FactVector


class Rules(Protocol):
    """A compiled, live rule set."""

    @property
    def version(self) -> str:
        """Identifies the rule files (published in every update)."""

    @property
    def categories(self) -> tuple[str, ...]:
        """Every published category, in the order of the badge counts."""

    def evaluate(self, facts: FactVector) -> frozenset[str]:
        """The categories that hold for one (agent, conversation) fact vector."""
