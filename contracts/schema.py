"""JSON Schema of both contracts, generated from the models and checked in.

``python -m contracts.schema`` rewrites the files; a test fails when they are stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from contracts.events import Event
from contracts.updates import CategoryUpdate

SCHEMA_DIR = Path(__file__).parent / "schema"


def schemas() -> dict[str, dict[str, Any]]:
    event: dict[str, Any] = TypeAdapter(Event).json_schema()
    event["title"] = "Conversation event (chat.events)"
    update = CategoryUpdate.model_json_schema()
    update["title"] = "Category update (inbox.categories)"
    return {"event.schema.json": event, "category-update.schema.json": update}


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
