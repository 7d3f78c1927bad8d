"""The PostgreSQL store: one state shared by several workers, partitioned by account.

The same contract as the SQLite store (:class:`worker.store.StateStore`, the same rows
and the same window pruning), plus ownership. Accounts fall in ``partitions``
partitions (:func:`worker.cluster.partitions.partition_of`); a worker takes one with
:meth:`PostgresStore.acquire`, which raises the partition's epoch and remembers it.
Every commit locks the rows of the partitions it touches (``SELECT ... FOR UPDATE``)
and writes only if each epoch is still the one this store acquired: a worker that hung
and woke up after another took its partitions is fenced off
(:class:`worker.errors.StoreFencedError`) having written nothing. Advisory locks cannot
do this: they belong to a session, and a hung worker's session may still be alive.

Connections are autocommit, with explicit ``transaction()`` blocks: in psycopg's
default mode the first statement opens an implicit transaction that lasts until the
next commit, and a ``transaction()`` inside it is only a savepoint, so the row lock a
commit took would outlive the commit and stall every takeover. Each thread that uses
the store gets a connection of its own, opened on first use and again once it broke:
the reader (loads, on the ioloop), the writer (commits, on the commit thread) and the
control connection (acquire, release, membership, on the coordinator's thread). The
epochs are remembered per instance: acquire and release on the instance that commits.
A session that stays idle inside a transaction (a worker hung mid-commit, holding
partition rows) is ended by the server after ``idle_in_transaction_timeout`` seconds,
so a takeover waits at most that long.

The URL goes to libpq as it is: TLS is asked for there, for example
``postgresql://user:pw@db.example/inbox?sslmode=verify-full&sslrootcert=/etc/ca.pem``.
Errors name the URL with its password masked.

The schema lives in a PostgreSQL schema of its own (``inbox_rules`` by default), is
versioned by ``schema_migrations`` and migrated at open under a transaction-scoped
advisory lock, so workers starting together migrate once; a newer schema is refused.

The package, one job a module: :mod:`.store` (``PostgresStore``: loads, commits and
their fence, due crossings, accounts behind, rules in force), :mod:`.membership`
(partition epochs: acquire, release, owned; members: heartbeats, live members, leave),
:mod:`.rules` (rule versions: keep, deploy, set live, history), :mod:`.base` (the
connections and the open), :mod:`.connection` (one connection, URL masking),
:mod:`.schema` (the DDL and its migrations), :mod:`.queries` (the SQL text) and
:mod:`.batch` (one commit's rows as column arrays).
"""

from __future__ import annotations

from worker.store.postgres.schema import DEFAULT_SCHEMA, MIGRATIONS, SCHEMA_VERSION
from worker.store.postgres.store import PostgresStore

__all__ = ["DEFAULT_SCHEMA", "MIGRATIONS", "SCHEMA_VERSION", "PostgresStore"]
