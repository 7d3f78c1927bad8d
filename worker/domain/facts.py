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
    # Time facts (see docs/time.md): computed from the events' occurred_at.
    FactSpec("conversation.waiting_seconds", int,
             "seconds since the conversation began waiting for an agent (created, reopened, "
             "or the first visitor message after the last agent message); 0 while not "
             "waiting"),
    FactSpec("conversation.last_message_by", str, "who wrote the last message",
             ("visitor", "agent", "none")),
)

FACTS: dict[str, FactSpec] = {spec.name: spec for spec in _SPECS}
# Fact vectors are tuples in this order: cheap to build, hash and cache.
FACT_NAMES: tuple[str, ...] = tuple(spec.name for spec in _SPECS)
FactVector = tuple[str | bool | int, ...]
# Facts whose value changes as time passes, with no event: the rules' thresholds on
# them decide when a conversation is looked at again.
TIME_FACTS: tuple[str, ...] = ("conversation.waiting_seconds",)
