"""The fact vocabulary is the domain's (:mod:`worker.domain.facts`); re-exported for
rule tooling."""

from worker.domain.facts import FACT_NAMES, FACTS, TIME_FACTS, FactSpec, FactVector

__all__ = ["FACTS", "FACT_NAMES", "TIME_FACTS", "FactSpec", "FactVector"]
