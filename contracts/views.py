"""The views events' bodies (docs/contract.md, "Views")."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, WithJsonSchema

from contracts.ids import Id, contract

# Views (docs/contract.md, "Views"): each VIEW is checked by the worker against the
# live rule set (its facts, categories and predicates), every problem with its path,
# so the contract takes any JSON object here and its schema says what one holds.
MAX_VIEW_NAME = 128
_VIEW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": ("A view: a condition in the rule files' language, published as the "
                    "category view:<view_id>."),
    "required": ["view_id", "when"],
    "properties": {
        "view_id": {"type": "string", "pattern": r"^[A-Za-z0-9_:\-]{1,128}$",
                    "description": "An id: published as the category view:<view_id>."},
        "name": {"type": "string", "maxLength": MAX_VIEW_NAME,
                 "description": "What the inbox shows (not used by the worker)."},
        "when": {"type": "object",
                 "description": ("A condition: fact tests, all/any/not, and the rule set's "
                                 "categories and predicates ({category: new}).")},
    },
}
View = Annotated[dict[str, Any], WithJsonSchema(_VIEW_SCHEMA)]


@contract
class SharedViewsData:
    views: list[View] = Field(description=(
        "The account's full set of shared views (at most 50): every agent's."))


@contract
class PersonalViewsData:
    agent_id: Id
    views: list[View] = Field(description=(
        "The agent's full set of personal views (at most 20): only this agent's."))
