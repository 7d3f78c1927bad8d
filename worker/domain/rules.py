"""What the domain needs from a rule set, stated as a Protocol: the rule compiler
(:mod:`worker.rulebook`) provides it, the domain never imports the compiler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from worker.domain.facts import FactVector
from worker.domain.state import Conversation
from worker.domain.views import ViewSet


class Rules(Protocol):
    """A compiled, live rule set."""

    @property
    def version(self) -> str:
        """Identifies the rule files (published in every update)."""

    @property
    def categories(self) -> tuple[str, ...]:
        """Every published category, in the order of the badge counts."""

    @property
    def thresholds(self) -> Mapping[str, tuple[int, ...]]:
        """Per time fact (:data:`~worker.domain.facts.TIME_FACTS`) the rules test, the
        values at which a test on it may change truth, ascending (none: time plays no
        part, and costs nothing)."""

    @property
    def tested_facts(self) -> frozenset[str]:
        """Every fact a category's condition tests: the others cannot change a category,
        so the evaluation cache need not tell their values apart."""

    @property
    def attributes(self) -> Mapping[str, str]:
        """The declared custom attributes: key -> type (string, integer, number, boolean)."""

    def detail_results(self, conversation: Conversation) -> tuple[bool, ...]:
        """The results of the rules' tests of channel, labels and attributes for one
        conversation (in the order the engine is given them after the scalar facts;
        empty under rules that make none)."""

    def evaluate(self, facts: FactVector) -> frozenset[str]:
        """The categories that hold for one (agent, conversation) fact vector."""

    def check_views(self, body: object, personal: bool) -> tuple[str, list[str]]:
        """A views event's body (``{"views": [...]}``, with ``agent_id`` when
        ``personal``) checked against these rules: the views as they are kept in force
        (canonical JSON; ``""``: none), or every problem (``views[2].when.fact: ...``)."""

    def compile_views(self, text: str) -> ViewSet:
        """A set of views in force (:meth:`check_views`'s text) under these rules."""
