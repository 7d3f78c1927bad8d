"""Rule files: load (with line numbers), validate, compile to durable-rules, evaluate."""

from worker.rulebook.engine import CompiledRules, load_rules
from worker.rulebook.facts import FACT_NAMES, FACTS, FactSpec

__all__ = ["FACTS", "FACT_NAMES", "CompiledRules", "FactSpec", "load_rules"]
