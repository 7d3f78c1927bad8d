"""Category updates published downstream to ``inbox.categories`` (docs/contract.md)."""

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from contracts.ids import Id


class CategoryUpdate(BaseModel):
    """The categories of one conversation for one agent after one event."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    update_id: str
    account_id: Id
    agent_id: Id
    conversation_id: Id
    # Numbers the updates of one (account, agent): 1, 2, 3 ... no gaps, no reuse.
    seq: int = Field(ge=1)
    categories: list[str]
    added: list[str]
    removed: list[str]
    counts: dict[str, int]
    # Only a conversation in some category is unread (a deleted one never is).
    unread: bool = Field(description=(
        "Whether the conversation is unread for this agent: a visitor message, or a "
        "mention of the agent, came after the agent last read it. False whenever "
        "`categories` is empty."))
    unread_counts: dict[str, int] = Field(description=(
        "Per category, how many of the agent's conversations in it are unread, after the "
        "whole cause (like `counts`); a category not listed has none."))
    cause_event_id: str
    rules_version: str
    occurred_at: datetime

    @property
    def routing_key(self) -> str:
        return f"{self.account_id}.{self.agent_id}"
