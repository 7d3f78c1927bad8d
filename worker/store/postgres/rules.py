"""Rule versions in the PostgreSQL store (:class:`worker.store.RuleStore`): each version's
files kept, deployments and rollbacks in order, the live version the newest's."""

from __future__ import annotations

from collections.abc import Mapping

import psycopg

from worker.store import (
    UNSET,
    RuleDeployment,
    Unset,
    decode_rule_files,
    encode_rule_files,
    no_such_version,
    not_expected,
)
from worker.store.postgres.base import PostgresBase


class RuleVersions(PostgresBase):
    """Rule versions: kept, deployed, set live, read back."""

    def keep_rules(self, version: str, files: Mapping[str, bytes], source: str) -> None:
        try:
            with self._writer.lock:
                self._writer.get().execute(self._q["rules_keep"],
                                           (version, source, encode_rule_files(files)))
        except psycopg.Error as exc:
            raise self._error(f"cannot keep rules version {version}", exc) from exc

    def deploy_rules(self, version: str, files: Mapping[str, bytes], source: str,
                     summary: str, *, expect_live: str | Unset | None = UNSET,
                     ) -> RuleDeployment:
        """On the control connection, in one transaction under the deployments' lock;
        no partition is touched (nothing is fenced, no account changes)."""
        return self._deploy(version, files, source, summary, "deploy", expect_live)

    def set_live(self, version: str, source: str, summary: str, *,
                 expect_live: str | Unset | None = UNSET) -> RuleDeployment:
        return self._deploy(version, None, source, summary, "rollback", expect_live)

    def _deploy(self, version: str, files: Mapping[str, bytes] | None, source: str,
                summary: str, action: str, expect_live: str | Unset | None,
                ) -> RuleDeployment:
        q = self._q
        try:
            with self._control.lock:
                conn = self._control.get()
                with conn.transaction():
                    conn.execute(q["rules_lock"])
                    row = conn.execute(q["rules_live"]).fetchone()
                    live = None if row is None else str(row[0])
                    if not isinstance(expect_live, Unset) and live != expect_live:
                        raise not_expected(self._where, expect_live, live)
                    if files is not None:
                        conn.execute(q["rules_keep"],
                                     (version, source, encode_rule_files(files)))
                    elif conn.execute(q["rules_known"], (version,)).fetchone() is None:
                        raise no_such_version(self._where, version)
                    done = conn.execute(q["rules_go_live"],
                                        (version, action, source, summary)).fetchone()
        except psycopg.Error as exc:
            raise self._error(f"cannot {action} rules version {version}", exc) from exc
        assert done is not None
        return RuleDeployment(int(done[0]), version, done[1], action, source, summary)

    def live_version(self) -> str | None:
        """One indexed row on the reader's connection (the worker polls it on its
        ioloop, like its account loads)."""
        try:
            with self._reader.lock:
                row = self._reader.get().execute(self._q["rules_live"]).fetchone()
        except psycopg.Error as exc:
            raise self._error("cannot read the live rules version", exc) from exc
        return None if row is None else str(row[0])

    def live_rules(self) -> tuple[str, dict[str, bytes]] | None:
        try:
            with self._reader.lock:
                row = self._reader.get().execute(self._q["rules_live_files"]).fetchone()
            return None if row is None else (str(row[0]), decode_rule_files(row[1]))
        except (psycopg.Error, ValueError) as exc:
            raise self._error("cannot read the live rules", exc) from exc

    def rule_files(self, version: str) -> dict[str, bytes] | None:
        try:
            with self._reader.lock:
                row = self._reader.get().execute(self._q["rules_files"],
                                                 (version,)).fetchone()
            return None if row is None else decode_rule_files(row[0])
        except (psycopg.Error, ValueError) as exc:
            raise self._error(f"cannot read rules version {version}", exc) from exc

    def rule_history(self) -> list[RuleDeployment]:
        try:
            with self._reader.lock:
                rows = self._reader.get().execute(self._q["rules_history"]).fetchall()
        except psycopg.Error as exc:
            raise self._error("cannot read the rules history", exc) from exc
        return [RuleDeployment(int(number), str(version), at, str(action), str(source),
                               str(summary))
                for number, version, at, action, source, summary in rows]
