"""The fact vocabulary: everything a rule condition may test.

A fact vector describes one agent's relation to one conversation. The Python side
computes these values from state and knows nothing of what they mean for categories;
the rule files give them meaning.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class FactSpec:
    name: str
    kind: type  # bool, int or str
    doc: str
    choices: tuple[str, ...] = ()


_SPECS = (
    FactSpec("conversation.status", str, "open, resolved or deleted",
             ("open", "resolved", "deleted")),
    FactSpec("conversation.has_group", bool, "the conversation is routed to a group"),
    FactSpec("conversation.joined_count", int, "how many agents have joined it"),
    FactSpec("agent.joined", bool, "this agent has joined the conversation"),
    FactSpec("agent.in_group", bool,
             "this agent is a member of the conversation's group (per the account snapshot)"),
    FactSpec("account.plan", str, "the account's plan", ("free", "standard", "pro")),
    FactSpec("account.agent_count", int, "how many agents the account has"),
    FactSpec("account.group_count", int, "how many groups the account has"),
)

FACTS: dict[str, FactSpec] = {spec.name: spec for spec in _SPECS}
# Fact vectors are tuples in this order: cheap to build, hash and cache.
FACT_NAMES: tuple[str, ...] = tuple(spec.name for spec in _SPECS)
FactVector = tuple[str | bool | int, ...]
