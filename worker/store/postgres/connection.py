"""One connection of the PostgreSQL store, and the URL as messages show it."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from worker.settings import mask_url

Connection = psycopg.Connection[tuple[Any, ...]]


class Link:
    """One connection, opened on first use and again after it broke. Its lock keeps a
    thread's transaction block whole: psycopg would let another thread's statement
    run inside it."""

    __slots__ = ("_conn", "_connect", "lock")

    def __init__(self, connect: Callable[[], Connection]) -> None:
        self._connect = connect
        self._conn: Connection | None = None
        self.lock = threading.Lock()

    def get(self) -> Connection:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            self._conn = None
            if conn is not None:
                conn.close()
            conn = self._conn = self._connect()
        return conn

    def close(self) -> None:
        with self.lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()


@contextlib.contextmanager
def pipeline(conn: Connection) -> Iterator[None]:
    """Pipeline mode where libpq has it (14+): statements go out without waiting for
    the ones before, and their results come back when one is fetched (one round trip
    for all of them)."""
    if not psycopg.Pipeline.is_supported():
        yield
        return
    with conn.pipeline():
        yield


def describe(url: str) -> str:
    """The URL for messages: password masked, in URL or key=value form."""
    return masked(mask_url(url), url)


_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)


def masked(text: str, url: str) -> str:
    """``text`` without the password of ``url`` (a parameter, or quoted by a message)."""
    text = _PASSWORD.sub(r"\1***", text)
    try:
        password = conninfo_to_dict(url).get("password")
    except psycopg.Error:
        return text
    # A very short one would mask random letters of the message, not a quotation.
    if password and len(str(password)) >= 4:
        text = text.replace(str(password), "***")
    return text
