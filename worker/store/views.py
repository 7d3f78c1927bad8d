"""The views in force as both stores keep them: one nullable ``views`` column of the
account's row, NULL for an account without views (most of them), else a JSON object
``{"shared": TEXT, "personal": {agent: TEXT}}`` whose texts are each set's canonical
JSON, kept as text so that the loaded value is exactly the one written."""

from __future__ import annotations

import orjson

from worker.domain.views import NO_VIEWS, AccountViews, account_views


def views_json(views: AccountViews) -> str | None:
    if views is NO_VIEWS:
        return None
    return orjson.dumps({"shared": views.shared, "personal": dict(views.personal)}).decode()


def views_of(text: str | None) -> AccountViews:
    """Raises ValueError for a value this version did not write."""
    if text is None:
        return NO_VIEWS
    fields = orjson.loads(text)
    shared = fields.get("shared") if isinstance(fields, dict) else None
    personal = fields.get("personal") if isinstance(fields, dict) else None
    if (not isinstance(shared, str) or not isinstance(personal, dict)
            or not all(isinstance(v, str) for v in personal.values())):
        raise ValueError(f"account views {text[:200]!r} are not an object of shared and "
                         "personal views")
    return account_views(shared, personal)
