"""The embedded default store: one SQLite file in WAL mode, state kept per account.

Opening reads nothing but the schema (start-up does not grow with the stored state);
an account is read when an event for it arrives (:meth:`SqliteStore.load_account`),
and each batch writes exactly what it changed (:class:`AccountWrite`) in one
transaction. The per-account memories (recent event ids, tombstones of deleted
conversations) are pruned to their windows as they are written, so the file is
bounded by the settings too, not by how many events ever passed.

The schema is versioned by ``schema_migrations``; migrations run at open, each in its
own transaction, and a file written by a newer schema is refused rather than misread.

The package, one job a module: :mod:`.store` (``SqliteStore``: loads, commits, due
crossings, accounts behind, rules in force), :mod:`.rules` (rule versions: keep, deploy,
set live, history), :mod:`.base` (the connections and the open), :mod:`.connection`
(transactions), :mod:`.schema` (the tables and their migrations) and :mod:`.rows` (rows
as the tables hold them).
"""

from __future__ import annotations

from worker.store.sqlite.schema import MIGRATIONS, SCHEMA_VERSION
from worker.store.sqlite.store import SqliteStore

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SqliteStore"]
