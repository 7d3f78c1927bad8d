"""Rule versions in the SQLite store (:class:`worker.store.RuleStore`): each version's
files kept, deployments and rollbacks in order, the live version the newest's."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from contextlib import closing
from datetime import UTC, datetime

from worker.store import (
    UNSET,
    RuleDeployment,
    Unset,
    decode_rule_files,
    encode_rule_files,
    no_such_version,
    not_expected,
)
from worker.store.sqlite.base import SqliteBase


class SqliteRules(SqliteBase):
    """Rule versions: kept, deployed, set live, read back."""

    def keep_rules(self, version: str, files: Mapping[str, bytes], source: str) -> None:
        try:
            with closing(self._side_connection()) as db, self._transaction(db=db):
                db.execute("INSERT OR IGNORE INTO rule_versions VALUES (?, ?, ?, ?)",
                           (version, datetime.now(UTC).isoformat(), source,
                            encode_rule_files(files)))
        except sqlite3.Error as exc:
            raise self._error(f"cannot keep rules version {version}", exc) from exc

    def deploy_rules(self, version: str, files: Mapping[str, bytes], source: str,
                     summary: str, *, expect_live: str | Unset | None = UNSET,
                     ) -> RuleDeployment:
        """Written on the writer connection, in a write transaction of its own: a
        worker's commit and a deploy from the command line serialise on the file's
        lock, and the generation is left alone (no account changed)."""
        return self._deploy(version, files, source, summary, "deploy", expect_live)

    def set_live(self, version: str, source: str, summary: str, *,
                 expect_live: str | Unset | None = UNSET) -> RuleDeployment:
        return self._deploy(version, None, source, summary, "rollback", expect_live)

    def _deploy(self, version: str, files: Mapping[str, bytes] | None, source: str,
                summary: str, action: str, expect_live: str | Unset | None,
                ) -> RuleDeployment:
        now = datetime.now(UTC)
        try:
            with self._transaction():
                db = self._db
                live = _live(db)
                if not isinstance(expect_live, Unset) and live != expect_live:
                    raise not_expected(str(self.path), expect_live, live)
                if files is not None:
                    db.execute("INSERT OR IGNORE INTO rule_versions VALUES (?, ?, ?, ?)",
                               (version, now.isoformat(), source, encode_rule_files(files)))
                elif db.execute("SELECT 1 FROM rule_versions WHERE version = ?",
                                (version,)).fetchone() is None:
                    raise no_such_version(str(self.path), version)
                cursor = db.execute(
                    "INSERT INTO rule_deployments (version, deployed_at, action, source,"
                    " summary) VALUES (?, ?, ?, ?, ?)",
                    (version, now.isoformat(), action, source, summary))
                number = int(cursor.lastrowid or 0)
        except sqlite3.Error as exc:
            raise self._error(f"cannot {action} rules version {version}", exc) from exc
        return RuleDeployment(number, version, now, action, source, summary)

    def live_version(self) -> str | None:
        try:
            return _live(self._reader)
        except sqlite3.Error as exc:
            raise self._error("cannot read the live rules version", exc) from exc

    def live_rules(self) -> tuple[str, dict[str, bytes]] | None:
        try:
            row = self._reader.execute(
                "SELECT v.version, v.files FROM rule_versions v WHERE v.version ="
                " (SELECT version FROM rule_deployments ORDER BY number DESC LIMIT 1)"
            ).fetchone()
            return None if row is None else (row[0], decode_rule_files(row[1]))
        except (sqlite3.Error, ValueError) as exc:
            raise self._error("cannot read the live rules", exc) from exc

    def rule_files(self, version: str) -> dict[str, bytes] | None:
        try:
            row = self._reader.execute("SELECT files FROM rule_versions WHERE version = ?",
                                       (version,)).fetchone()
            return None if row is None else decode_rule_files(row[0])
        except (sqlite3.Error, ValueError) as exc:
            raise self._error(f"cannot read rules version {version}", exc) from exc

    def rule_history(self) -> list[RuleDeployment]:
        try:
            rows = self._reader.execute(
                "SELECT number, version, deployed_at, action, source, summary"
                " FROM rule_deployments ORDER BY number").fetchall()
        except sqlite3.Error as exc:
            raise self._error("cannot read the rules history", exc) from exc
        return [RuleDeployment(number, version, datetime.fromisoformat(at), action, source,
                               summary)
                for number, version, at, action, source, summary in rows]


def _live(db: sqlite3.Connection) -> str | None:
    """The live rules version: the newest deployment's (the primary key's last row)."""
    row = db.execute(
        "SELECT version FROM rule_deployments ORDER BY number DESC LIMIT 1").fetchone()
    return None if row is None else str(row[0])
