"""JSON Schema of every contract, generated from the models and checked in.

``python -m contracts.schema`` rewrites the files; a test fails when they are stale.
:data:`CONTRACTS` is also what ``contracts.asyncapi`` builds its message payloads from,
so the AsyncAPI document and these files can never describe different messages.

``rule-file.schema.json`` beside them is no message: it is made from the rule language
by ``python -m worker.rulebook.schema`` (this package never imports the worker).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import DEFAULT_REF_TEMPLATE

from contracts.events import Event
from contracts.requests import (
    ExplainReply,
    ExplainRequest,
    SnapshotReply,
    SnapshotRequest,
    ViewsCheckReply,
    ViewsCheckRequest,
)
from contracts.updates import CategoryUpdate

SCHEMA_DIR = Path(__file__).parent / "schema"


@dataclass(frozen=True)
class Contract:
    """One message body: the file its schema goes to, its title, and its model."""

    file: str
    name: str  # its name among the AsyncAPI document's component schemas
    title: str
    adapter: TypeAdapter[Any]

    def schema(self, ref_template: str = DEFAULT_REF_TEMPLATE) -> dict[str, Any]:
        """The model's JSON Schema with the contract's title; ``ref_template`` says where
        nested definitions are referenced (``#/$defs/...`` in a standalone file)."""
        schema: dict[str, Any] = _closed_maps(self.adapter.json_schema(ref_template=ref_template))
        schema["title"] = self.title
        return schema


def _closed_maps(node: Any) -> Any:
    """A map keyed by ids (``dict[Id, ...]``) comes out of pydantic as
    ``patternProperties`` alone, which lets any other key through with any value; the
    models refuse such a key, so the schema says so too (``additionalProperties``)."""
    if isinstance(node, list):
        return [_closed_maps(item) for item in node]
    if not isinstance(node, dict):
        return node
    closed = {key: _closed_maps(value) for key, value in node.items()}
    if "patternProperties" in closed and "additionalProperties" not in closed:
        closed["additionalProperties"] = False
    return closed


CONTRACTS: tuple[Contract, ...] = (
    Contract("event.schema.json", "Event", "Conversation event (chat.events)",
             TypeAdapter(Event)),
    Contract("category-update.schema.json", "CategoryUpdate",
             "Category update (inbox.categories)", TypeAdapter(CategoryUpdate)),
    Contract("snapshot-request.schema.json", "SnapshotRequest",
             "Snapshot request (inbox.requests, routing key snapshot)",
             TypeAdapter(SnapshotRequest)),
    Contract("snapshot-reply.schema.json", "SnapshotReply",
             "Snapshot reply (to the request's reply_to)", TypeAdapter(SnapshotReply)),
    Contract("explain-request.schema.json", "ExplainRequest",
             "Explain request (inbox.requests, routing key explain)",
             TypeAdapter(ExplainRequest)),
    Contract("explain-reply.schema.json", "ExplainReply",
             "Explain reply (to the request's reply_to)", TypeAdapter(ExplainReply)),
    Contract("views-check-request.schema.json", "ViewsCheckRequest",
             "Views check request (inbox.requests, routing key views.check)",
             TypeAdapter(ViewsCheckRequest)),
    Contract("views-check-reply.schema.json", "ViewsCheckReply",
             "Views check reply (to the request's reply_to)", TypeAdapter(ViewsCheckReply)),
)


def schemas() -> dict[str, dict[str, Any]]:
    return {contract.file: contract.schema() for contract in CONTRACTS}


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main() -> int:
    SCHEMA_DIR.mkdir(exist_ok=True)
    for name, schema in schemas().items():
        (SCHEMA_DIR / name).write_text(render(schema), encoding="utf-8")
        print(f"wrote {SCHEMA_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
