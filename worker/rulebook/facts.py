"""The fact vocabulary is the domain's (:mod:`worker.domain.facts`); re-exported for
rule tooling."""

from worker.domain.facts import (
    ATTRIBUTE_PREFIX,
    ATTRIBUTE_TYPES,
    DETAIL_FACTS,
    FACT_NAMES,
    FACTS,
    PRIORITY_RANK,
    TIME_FACTS,
    UNREAD_FACTS,
    WAITING_SECONDS,
    FactSpec,
    FactValue,
    FactVector,
    detail_value,
    test_holds,
)

__all__ = ["ATTRIBUTE_PREFIX", "ATTRIBUTE_TYPES", "DETAIL_FACTS", "FACTS", "FACT_NAMES",
           "PRIORITY_RANK", "TIME_FACTS", "UNREAD_FACTS", "WAITING_SECONDS", "FactSpec",
           "FactValue", "FactVector", "detail_value", "test_holds"]
