"""What an operator sees of a running worker: metrics, health, logs, a status line,
progress for long offline work.

Each part stands alone and is tested alone; the driver (``worker/service.py``) owns
the wiring. Nothing here touches the broker or the pika ioloop: the HTTP server runs
in a daemon thread and reads only thread-safe state the driver updates.
"""

from __future__ import annotations

from worker.observability.http import HealthState, HttpServer, serve_http, start_http
from worker.observability.logs import LogFormat, configure_logging, log_context
from worker.observability.metrics import DEAD_LETTER_FAMILIES, Metrics, reason_family
from worker.observability.progress import ProgressReporter, progress
from worker.observability.status import StatusLine

__all__ = [
    "DEAD_LETTER_FAMILIES",
    "HealthState",
    "HttpServer",
    "LogFormat",
    "Metrics",
    "ProgressReporter",
    "StatusLine",
    "configure_logging",
    "log_context",
    "progress",
    "reason_family",
    "serve_http",
    "start_http",
]
