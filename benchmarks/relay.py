"""The bare relay: the physical limit the worker is measured against.

A minimal pika program with the worker's guarantees and none of its work: it consumes
the worker's input queue (the same quorum queue, declared by the harness from
:mod:`worker.amqp.topology`), and for each event publishes persistent copies of it, the
body unchanged, with the delivery's routing key, to the worker's output exchange: as
many as its header ``x-bench-copies`` says (the updates the worker publishes for that
event, so both publish as much: the same fan-out; none for an event that causes none),
one without the header. It acks
input only after the broker confirmed the outputs (asynchronous publisher confirms),
with ``multiple=True``, and holds at most ``INBOX_RULES_PREFETCH`` unacked events, like
the worker. No parsing, no state, no rules. One thread owns the connection
(``SelectConnection``).

    AMQP_URL=amqp://guest:guest@127.0.0.1:5672/VHOST python -m benchmarks.relay

Settings, read from the worker's environment variable names (same defaults):
``AMQP_URL``, ``INBOX_RULES_PREFETCH``, ``INBOX_RULES_EVENTS_QUEUE``,
``INBOX_RULES_UPDATES_EXCHANGE``. Stops gracefully on SIGTERM/SIGINT: cancels the
consumer, waits for outstanding confirms, acks, closes.

Only pika and the standard library are imported, so its RSS is the floor of a Python
AMQP client.
"""

from __future__ import annotations

import logging
import os
import signal
from collections import deque
from typing import Any

import pika
from pika.adapters.select_connection import IOLoop

log = logging.getLogger("relay")

PERSISTENT = pika.BasicProperties(delivery_mode=2)
COPIES = "x-bench-copies"  # how many copies of an event to publish (default 1)


class Relay:
    def __init__(self, url: str, queue: str, exchange: str, prefetch: int) -> None:
        self.params = pika.URLParameters(url)
        self.params.client_properties = {"connection_name": "bench relay"}
        self.queue = queue
        self.exchange = exchange
        self.prefetch = prefetch
        self.ioloop = IOLoop()
        self.connection: pika.SelectConnection | None = None
        self.channel: Any = None
        self.consumer_tag: str | None = None
        # (publish sequence number, delivery tag), in publish order.
        self.pending: deque[tuple[int, int]] = deque()
        self.confirmed_upto = 0  # every publish <= this is confirmed
        self.confirmed_single: set[int] = set()
        self.published = 0
        self.stopping = False

    # -- lifecycle ---------------------------------------------------------
    def run(self) -> None:
        self.connection = pika.SelectConnection(
            self.params, on_open_callback=self._on_open,
            on_open_error_callback=self._on_fatal, on_close_callback=self._on_closed,
            custom_ioloop=self.ioloop)
        try:
            self.ioloop.start()
        finally:
            self.ioloop.close()

    def request_stop(self) -> None:
        self.ioloop.add_callback_threadsafe(self._stop)

    def _stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        if self.channel is not None and self.consumer_tag is not None:
            self.channel.basic_cancel(self.consumer_tag, callback=lambda _f: self._maybe_close())
            self.consumer_tag = None
        else:
            self._maybe_close()

    def _maybe_close(self) -> None:
        if self.stopping and self.consumer_tag is None and not self.pending:
            assert self.connection is not None
            if not (self.connection.is_closing or self.connection.is_closed):
                self.connection.close()

    def _on_fatal(self, _connection: object, error: BaseException) -> None:
        log.error("relay: connection failed: %s", error)
        self.ioloop.stop()

    def _on_closed(self, _connection: object, reason: BaseException) -> None:
        if not self.stopping:
            log.error("relay: connection closed: %s", reason)
        self.ioloop.stop()

    # -- set-up: check the harness's topology, confirms, prefetch, consume --
    def _on_open(self, connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=self._on_channel)

    def _on_channel(self, channel: Any) -> None:
        self.channel = channel
        channel.add_on_return_callback(lambda *_args: None)  # unroutable: nobody wants it
        channel.exchange_declare(self.exchange, passive=True, callback=self._on_exchange)

    def _on_exchange(self, _frame: object) -> None:
        self.channel.queue_declare(self.queue, passive=True, callback=self._on_queue)

    def _on_queue(self, _frame: object) -> None:
        self.channel.confirm_delivery(ack_nack_callback=self._on_confirm,
                                      callback=self._on_confirm_mode)

    def _on_confirm_mode(self, _frame: object) -> None:
        self.channel.basic_qos(prefetch_count=self.prefetch, callback=self._on_qos)

    def _on_qos(self, _frame: object) -> None:
        if self.stopping:
            self._maybe_close()
            return
        self.consumer_tag = self.channel.basic_consume(self.queue, self._on_message)

    # -- the relay ---------------------------------------------------------
    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        headers = properties.headers
        copies = max(0, int(headers.get(COPIES, 1))) if headers else 1
        if not copies and not self.pending:
            channel.basic_ack(method.delivery_tag)  # nothing to publish, nothing unconfirmed
            return
        for _ in range(copies):
            channel.basic_publish(self.exchange, method.routing_key, body, PERSISTENT,
                                  mandatory=True)
        self.published += copies
        # No copies: acked with the publish before it (the same sequence number).
        self.pending.append((self.published, method.delivery_tag))

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if not isinstance(method, pika.spec.Basic.Ack):
            # Refused: give the unacked events back (the broker redelivers them).
            log.error("relay: publish %d refused; closing", method.delivery_tag)
            self.channel.close()
            return
        if method.multiple:
            self.confirmed_upto = max(self.confirmed_upto, method.delivery_tag)
        else:
            self.confirmed_single.add(method.delivery_tag)
        last_tag = 0
        pending = self.pending
        while pending:
            sequence, tag = pending[0]
            if sequence > self.confirmed_upto and sequence not in self.confirmed_single:
                break
            pending.popleft()
            last_tag = tag
        if last_tag:
            self.channel.basic_ack(last_tag, multiple=True)
        self._maybe_close()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    relay = Relay(
        url=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F"),
        queue=os.environ.get("INBOX_RULES_EVENTS_QUEUE", "inbox-rules.events"),
        exchange=os.environ.get("INBOX_RULES_UPDATES_EXCHANGE", "inbox.categories"),
        prefetch=int(os.environ.get("INBOX_RULES_PREFETCH", "200")),
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _sig, _frame: relay.request_stop())
    relay.run()


if __name__ == "__main__":
    main()
