"""Log lines: JSON that parses line by line, context attached, and no password ever."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from worker.observability.logs import (
    LogFormat,
    configure_logging,
    log_context,
    mask_secrets,
    url_secrets,
)

# Characters a URL must escape, as in tests/reliability/test_security.py.
PASSWORD = "Pw-5e3f9a1c@:/%"
URL = f"amqp://svc-user:{quote(PASSWORD, safe='')}@broker.internal:5672/%2F"
TLS_URL = f"amqps://svc-user:{quote(PASSWORD, safe='')}@broker.internal:5671/prod"
SECRETS_SEEN = (PASSWORD, quote(PASSWORD, safe=""), quote(PASSWORD))

log = logging.getLogger("worker.test")


class Connector:
    """An object whose str() carries the URL, like pika's parameters or an error."""

    def __str__(self) -> str:
        return f"<Connector {URL}>"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root, pika = logging.getLogger(), logging.getLogger("pika")
    handlers, level, pika_level = list(root.handlers), root.level, pika.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    pika.setLevel(pika_level)


def log_everything(stream: io.StringIO, fmt: LogFormat) -> str:
    configure_logging("DEBUG", fmt, stream=stream, secrets=url_secrets(URL))
    log.debug("connecting to " + URL)  # in the message itself
    log.debug("connecting to %s (attempt %d)", URL, 2)  # as an argument
    log.info("connecting to %(url)s", {"url": TLS_URL})  # a mapping argument
    log.warning("link: %s", Connector())  # inside an object's str()
    log.error("refused by %s", "broker", extra={"url": URL, "event_id": "e-1"})
    try:
        raise ConnectionError(f"cannot reach {URL}")
    except ConnectionError:
        log.exception("connection failed")  # in a traceback
    logging.getLogger("pika.connection").debug("params %r", URL)  # a library's logger
    log.critical("bare password, no URL: %s", PASSWORD)
    return stream.getvalue()


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_the_amqp_password_never_appears_at_any_level(fmt: LogFormat) -> None:
    output = log_everything(io.StringIO(), fmt)
    assert output.count("svc-user:***@") >= 6, output  # the lines are there, masked
    for secret in SECRETS_SEEN:
        assert secret not in output
    assert "bare password, no URL: ***" in output


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_are_one_object_each_with_time_level_logger_message_context() -> None:
    output = log_everything(io.StringIO(), "json")
    lines = output.splitlines()
    assert len(lines) == 8  # a traceback stays inside its line
    records = [json.loads(line) for line in lines]
    for record in records:
        assert {"time", "level", "logger", "message", "context"} <= record.keys()
        assert record["time"].endswith("Z")
        assert isinstance(record["context"], dict)
    assert [r["level"] for r in records][:3] == ["DEBUG", "DEBUG", "INFO"]
    assert records[0]["logger"] == "worker.test"
    assert records[1]["message"] == (
        "connecting to amqp://svc-user:***@broker.internal:5672/%2F (attempt 2)")
    assert records[4]["context"] == {
        "url": "amqp://svc-user:***@broker.internal:5672/%2F", "event_id": "e-1"}
    assert "ConnectionError: cannot reach amqp://svc-user:***@" in records[5]["exception"]


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_context_comes_from_log_context_and_extra(fmt: LogFormat) -> None:
    stream = io.StringIO()
    configure_logging(logging.INFO, fmt, stream=stream)
    with log_context(event_id="e-7", account_id="acc-1"):
        with log_context(partition=3):
            logging.getLogger("worker.domain").info("applied")
        log.info("done", extra={"context": {"account_id": "acc-2"}})
    log.info("outside")
    lines = stream.getvalue().splitlines()
    if fmt == "json":
        contexts = [json.loads(line)["context"] for line in lines]
        assert contexts == [{"event_id": "e-7", "account_id": "acc-1", "partition": 3},
                            {"event_id": "e-7", "account_id": "acc-2"}, {}]
    else:
        assert lines[0].endswith("worker.domain: applied [event_id=e-7 account_id=acc-1 "
                                 "partition=3]")
        assert lines[1].endswith("done [event_id=e-7 account_id=acc-2]")
        assert lines[2].endswith("worker.test: outside")


@pytest.mark.usefixtures("restore_logging")
def test_configure_logging_replaces_its_own_handler_and_sets_levels() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", "text", stream=first)
    configure_logging("WARNING", "json", stream=second)
    log.warning("once")
    log.info("below the level")
    assert first.getvalue() == ""
    assert [json.loads(line)["message"] for line in second.getvalue().splitlines()] == ["once"]
    assert logging.getLogger("pika").level == logging.CRITICAL  # quiet unless DEBUG
    with pytest.raises(ValueError, match="log format"):
        configure_logging("INFO", "xml", stream=first)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="log level"):
        configure_logging("LOUD", "text", stream=first)


@pytest.mark.parametrize(("text", "masked"), [
    ("amqp://guest:guest@localhost:5672/%2F", "amqp://guest:***@localhost:5672/%2F"),
    ("amqps://u:p@ss@h/v", "amqps://u:***@h/v"),  # a raw "@" in the password
    ("postgresql://app:s3cr3t@db:5432/inbox?sslmode=require",
     "postgresql://app:***@db:5432/inbox?sslmode=require"),
    ("two: amqp://a:b@h1, amqp://c:d@h2/x", "two: amqp://a:***@h1, amqp://c:***@h2/x"),
    ("amqp://localhost:5672/%2F", "amqp://localhost:5672/%2F"),  # nothing to mask
    ("amqp://user@localhost/", "amqp://user@localhost/"),
    ("http://host:80/path@x", "http://host:80/path@x"),
])
def test_mask_secrets_masks_url_passwords_only(text: str, masked: str) -> None:
    assert mask_secrets(text) == masked


def test_url_secrets_skips_short_passwords() -> None:
    assert url_secrets("amqp://guest:guest@localhost/") == ()
    assert set(url_secrets(URL)) == {PASSWORD, quote(PASSWORD, safe="")}
