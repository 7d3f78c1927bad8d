"""``/metrics``, ``/healthz`` and ``/readyz`` over HTTP, beside the pika ioloop.

The server is the standard library's ``ThreadingHTTPServer`` in a daemon thread: no
new dependency, no event loop to share with pika, and a stuck scrape cannot stall
the worker (each request has its own thread and a socket timeout). The handler only
reads :class:`HealthState` and renders :class:`Metrics`, both safe to use from
another thread; it never touches the broker link or the store.

- ``/healthz`` is liveness: 200 while the driver's loop keeps stamping
  :meth:`HealthState.loop_turned`; 503 once the last stamp is older than
  ``stale_after`` (a loop blocked in a callback also stops answering heartbeats, so
  restarting the process is the cure).
- ``/readyz`` is readiness: 200 only while connected, not blocked by a broker alarm,
  consuming and able to commit (and live); 503 with a one-line plain-text reason
  otherwise. A worker that is reconnecting, waiting out a store outage or held by the
  broker's memory or disk alarm is alive but not ready.
"""

from __future__ import annotations

import errno
import logging
import socketserver
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import urlsplit

from worker.errors import SettingsError
from worker.observability.metrics import Metrics

if TYPE_CHECKING:
    from worker.settings import Settings

log = logging.getLogger(__name__)

# Seconds without a loop stamp before /healthz says 503. The driver's callbacks are
# bounded (a quarter second of evaluation, a chunk of publishes); a loop silent for
# a minute has also missed two AMQP heartbeats at the default 30 s.
DEFAULT_STALE_AFTER = 60.0
# A client that connects and sends nothing holds a thread this long at most.
REQUEST_TIMEOUT = 10.0


class HealthState:
    """What the driver knows about itself, read by the HTTP thread.

    The driver calls :meth:`loop_turned` from a periodic ioloop callback (say every
    second) and :meth:`update` on every change of link or store; both are cheap. All
    access goes through one lock, so a reader never sees half an update.
    """

    def __init__(self, stale_after: float = DEFAULT_STALE_AFTER, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.stale_after = stale_after
        # Start-up (state load, rule compile) counts as a turn: a slow start within
        # stale_after is healthy, one longer than that is not.
        self._loop_turned_at = self._clock()
        self._connected = False
        self._consuming = False
        self._can_commit = True
        self._reason: str | None = None
        self._broker_blocked: str | None = None

    def loop_turned(self) -> None:
        """Stamp "the loop turned" with the monotonic clock."""
        now = self._clock()
        with self._lock:
            self._loop_turned_at = now

    def update(self, *, connected: bool | None = None, consuming: bool | None = None,
               can_commit: bool | None = None, reason: str | None = None,
               broker_blocked: str | None = None) -> None:
        """Change the given fields only. ``reason`` explains the latest trouble (e.g.
        the store error); it is reported while not ready and cleared by ``reason=""``.
        ``broker_blocked`` is the broker's reason while it blocks the connection (its
        memory or disk alarm: nothing gets published), cleared by ``""``."""
        with self._lock:
            if broker_blocked is not None:
                self._broker_blocked = broker_blocked or None
            if connected is not None:
                self._connected = connected
            if consuming is not None:
                self._consuming = consuming
            if can_commit is not None:
                self._can_commit = can_commit
            if reason is not None:
                self._reason = reason or None

    @property
    def loop_turned_at(self) -> float:
        with self._lock:
            return self._loop_turned_at

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._connected

    @property
    def consuming(self) -> bool:
        with self._lock:
            return self._consuming

    @property
    def can_commit(self) -> bool:
        with self._lock:
            return self._can_commit

    @property
    def broker_blocked(self) -> str | None:
        with self._lock:
            return self._broker_blocked

    @property
    def reason(self) -> str | None:
        with self._lock:
            return self._reason

    def liveness(self) -> tuple[bool, str]:
        """(alive, why): alive while the loop stamped within ``stale_after``."""
        now = self._clock()
        with self._lock:
            age = now - self._loop_turned_at
        if age > self.stale_after:
            return False, f"loop has not turned for {age:.0f} s (limit {self.stale_after:g} s)"
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        """(ready, why): connected and not blocked, consuming, able to commit, and
        alive."""
        alive, why = self.liveness()
        if not alive:
            return False, why
        with self._lock:
            connected, consuming = self._connected, self._consuming
            can_commit, reason = self._can_commit, self._reason
            blocked = self._broker_blocked
        if not connected:
            return False, reason or "not connected to the broker"
        if blocked is not None:
            return False, (f"the broker blocks publishing ({blocked}): a broker memory or "
                           "disk alarm; updates wait until it clears")
        if not can_commit:
            return False, reason or "cannot commit to the state store"
        if not consuming:
            return False, reason or "not consuming"
        return True, "ok"


class _Handler(BaseHTTPRequestHandler):
    """GET on three paths; anything else is 404 (unknown path) or 405 (other method)."""

    server_version = "inbox-rules"
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT
    # Set on the per-server subclass made by serve_http.
    metrics: ClassVar[Metrics]
    health: ClassVar[HealthState]

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            body, content_type = self.metrics.render_for(self.headers.get("Accept"))
            self._send(HTTPStatus.OK, body, content_type)
        elif path == "/healthz":
            self._send_check(*self.health.liveness())
        elif path == "/readyz":
            self._send_check(*self.health.readiness())
        else:
            self._send_text(HTTPStatus.NOT_FOUND, "not found: try /metrics, /healthz, /readyz")

    def _refuse(self) -> None:
        self._send_text(HTTPStatus.METHOD_NOT_ALLOWED, "only GET", allow="GET")

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse  # noqa: N815

    def _send_check(self, ok: bool, why: str) -> None:
        self._send_text(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, why)

    def _send_text(self, status: HTTPStatus, text: str, allow: str | None = None) -> None:
        self._send(status, (text + "\n").encode(), "text/plain; charset=utf-8", allow)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str,
              allow: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if allow is not None:
            self.send_header("Allow", allow)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        # Prometheus scrapes and health probes come every few seconds: DEBUG, not stderr.
        log.debug("%s - " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    # Request threads must never keep the process alive past the worker's exit.
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # socketserver prints the traceback to stderr; it belongs in the log (masked).
        log.exception("HTTP request from %s failed", client_address)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN (a reverse DNS lookup that
        # can take seconds in a container); nothing here uses the name.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class HttpServer:
    """A running server: ``.host``, ``.port`` (the bound one, useful with port 0),
    ``.close()``. Also a context manager."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.host = str(server.server_address[0])
        self.port = int(server.server_address[1])

    def close(self) -> None:
        """Stop serving, close the socket, wait for the thread (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> HttpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_http(port: int, metrics: Metrics, health: HealthState,
               host: str = "0.0.0.0") -> HttpServer:  # noqa: S104 - a container's port
    """Serve the three paths on ``host:port`` from a daemon thread and return at once.

    ``port=0`` binds a free port (read it from ``.port``); "0 turns HTTP off" is the
    setting's meaning, applied by :func:`start_http`. ``health`` is exported in
    ``/metrics`` too (``inbox_rules_healthy{check=...}``). Raises ``OSError`` if the
    port cannot be bound: the caller decides whether that stops the worker.
    """
    metrics.export_health(health)
    handler = type("Handler", (_Handler,), {"metrics": metrics, "health": health})
    server = _Server((host, port), handler)
    # The poll interval bounds how long close() waits; five idle wakeups a second cost
    # nothing measurable.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="inbox-rules-http", daemon=True)
    thread.start()
    bound = HttpServer(server, thread)
    log.info("serving /metrics, /healthz, /readyz on http://%s:%d", bound.host, bound.port)
    return bound


def start_http(settings: Settings, metrics: Metrics, health: HealthState) -> HttpServer | None:
    """What the driver calls: the server per ``settings.http_host``/``http_port``, or
    None when ``http_port`` is 0 (HTTP turned off). A port that cannot be bound is a
    :class:`SettingsError` naming the variable: the operator's to fix, not a crash."""
    if settings.http_port == 0:
        return None
    try:
        return serve_http(settings.http_port, metrics, health, host=settings.http_host)
    except OSError as exc:
        from worker.settings import env_name

        port = f"{env_name('http_port')}={settings.http_port}"
        if exc.errno == errno.EADDRINUSE:
            raise SettingsError(f"{port}: port already in use (choose another, or 0 to "
                                "turn HTTP off)") from exc
        raise SettingsError(f"{port}, {env_name('http_host')}={settings.http_host}: cannot "
                            f"listen: {exc.strerror or exc} (choose another, or 0 to turn "
                            "HTTP off)") from exc
