"""Log lines: plain text for people, one JSON object per line for collectors, and no
credential in either, at any level.

``configure_logging`` installs one handler on the root logger carrying two filters:

- :class:`ContextFilter` attaches the fields bound with :func:`log_context` (a
  contextvar, so the driver binds ``event_id``/``account_id``/``partition`` once
  around an event and every line logged below it, by any module, carries them);
  fields passed as ``extra={...}`` join them.
- ``extra={"data": {...}}`` carries a line's own numbers (the status line's rates):
  a ``data`` object in JSON, left out of the text line, whose message says them.
- :class:`CredentialFilter` masks the password of every URL (``amqp://user:***@host``,
  ``amqps://``, ``postgresql://`` alike) in the formatted message, which covers the
  format string *and* its args whatever their type (an exception, a pika parameters
  object), plus the traceback and the context values. The formatters mask their
  final output once more: a line that got past a filter (a handler added later, a
  record built by hand) still cannot carry a password.

JSON is written with the standard library's ``json``, not orjson: the worker logs a
few lines per batch, never per update, so encoding speed does not matter, and
``json`` needs no compiled dependency and renders any context value with
``default=str``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Literal, TextIO, get_args
from urllib.parse import unquote, urlsplit

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MASK = "***"
# Secrets shorter than this are masked inside URLs only: as bare words they would
# mask ordinary text ("guest" is RabbitMQ's default user *and* password).
MIN_LITERAL_SECRET = 8

# scheme://user:password@ - the password runs to the last "@" before the host (a raw
# "@" in it is mis-typed but seen), and never past "/", "?", "#" or a space, which
# end the authority part of a URL.
_URL_CREDENTIALS = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@]*):(?P<password>[^\s/?#]*)@")

_CONTEXT: ContextVar[Mapping[str, object]] = ContextVar(
    "inbox_rules_log_context", default=MappingProxyType({}))
_CONTEXT_ATTR = "inbox_rules_context"
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName", _CONTEXT_ATTR, "data"}


def mask_secrets(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with URL passwords (and each given secret, literally) replaced."""
    if "://" in text:
        text = _URL_CREDENTIALS.sub(rf"\g<head>:{MASK}@", text)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def url_secrets(*urls: str) -> tuple[str, ...]:
    """The passwords of ``urls`` as written and decoded, for a literal mask; only
    those of at least :data:`MIN_LITERAL_SECRET` characters."""
    found: set[str] = set()
    for url in urls:
        password = urlsplit(url).password
        if password:
            found.update({password, unquote(password)})
    return tuple(sorted((s for s in found if len(s) >= MIN_LITERAL_SECRET),
                        key=len, reverse=True))


@contextlib.contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Every line logged inside the block (in this thread or task) carries ``fields``
    as context; blocks nest, inner fields win."""
    token = _CONTEXT.set(MappingProxyType({**_CONTEXT.get(), **fields}))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def current_context() -> dict[str, object]:
    """The fields :func:`log_context` has bound here, as a new dict."""
    return dict(_CONTEXT.get())


def record_context(record: logging.LogRecord) -> dict[str, object]:
    """A record's context: the bound fields, then its ``extra=`` fields (an
    ``extra={"context": {...}}`` mapping is merged, other extras join by name, except
    ``extra={"data": {...}}``: a line's own numbers, shown in JSON only)."""
    context = dict(getattr(record, _CONTEXT_ATTR, None) or _CONTEXT.get())
    for key, value in record.__dict__.items():
        if key in _STANDARD_ATTRS:
            continue
        if key == "context" and isinstance(value, Mapping):
            context.update({str(k): v for k, v in value.items()})
        else:
            context[key] = value
    return context


class ContextFilter(logging.Filter):
    """Snapshot the bound context onto the record where it was logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, _CONTEXT_ATTR):
            setattr(record, _CONTEXT_ATTR, _CONTEXT.get())
        return True


class CredentialFilter(logging.Filter):
    """Mask credentials in a record before any formatter or later handler sees it.

    The message is formatted here (``msg % args``), masked, and stored with no args
    left, so a password inside any argument is caught whatever its type. Traceback,
    stack and context strings are masked too. Never drops a record.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = tuple(secrets)
        self._exc_formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # bad args: logging reports them; mask the parts
            message = f"{record.msg!s} {record.args!r}"
        record.msg = mask_secrets(message, self.secrets)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exc_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info, self.secrets)
        context = getattr(record, _CONTEXT_ATTR, None)
        if context:
            setattr(record, _CONTEXT_ATTR, {
                key: mask_secrets(value, self.secrets) if isinstance(value, str) else value
                for key, value in context.items()})
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, key, mask_secrets(value, self.secrets))
        return True


class TextFormatter(logging.Formatter):
    """The classic line, with the context appended as ``key=value`` when there is any."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__(TEXT_FORMAT)
        self.secrets = tuple(secrets)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - stdlib name
        line = super().formatMessage(record)
        context = record_context(record)
        if context:
            line += " [" + " ".join(f"{key}={value}" for key, value in context.items()) + "]"
        return line

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record), self.secrets)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601, ms), level, logger, message,
    context (always an object), and data, exception and stack when there are some."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = tuple(secrets)

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.fromtimestamp(record.created, UTC)
        document: dict[str, object] = {
            "time": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "context": record_context(record),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        data = getattr(record, "data", None)
        if isinstance(data, Mapping):
            document["data"] = dict(data)
        line = json.dumps(document, ensure_ascii=False, default=str, separators=(",", ":"))
        return mask_secrets(line, self.secrets)


def configure_logging(level: int | str = "INFO", fmt: LogFormat = "text", *,
                      stream: TextIO | None = None, secrets: Iterable[str] = (),
                      quiet_pika: bool = True) -> logging.Handler:
    """Send every log line to ``stream`` (stderr) in ``fmt``, masking credentials.

    Replaces the handler an earlier call installed (and only that one: pytest's
    capture handlers stay). ``secrets`` are masked literally as well, e.g.
    ``url_secrets(settings.amqp_url)``. ``quiet_pika``: below DEBUG, pika's loggers
    are silenced; pika logs every step of a failed connection at ERROR and the
    worker says it once.
    """
    if fmt not in get_args(LogFormat):
        raise ValueError(f"log format must be one of {get_args(LogFormat)}, not {fmt!r}")
    secrets = tuple(secrets)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_inbox_rules", False)]:
        root.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler._inbox_rules = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter(secrets) if fmt == "json" else TextFormatter(secrets))
    handler.addFilter(ContextFilter())
    handler.addFilter(CredentialFilter(secrets))
    root.addHandler(handler)
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    root.setLevel(numeric)
    if quiet_pika:
        logging.getLogger("pika").setLevel(
            logging.NOTSET if numeric <= logging.DEBUG else logging.CRITICAL)
    return handler
