"""The broker topology, named and declared in one place, idempotently, at start-up.

Declarations are data (a method name and its arguments) so that the worker's
asynchronous channel and the blocking channels of the demo and the tests declare
exactly the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker.settings import Settings

Step = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class Topology:
    """Exchange and queue names, all derived here from the settings."""

    events_exchange: str
    events_queue: str
    dead_letter_exchange: str
    dead_letter_queue: str
    updates_exchange: str
    delivery_limit: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        return cls(
            events_exchange=settings.events_exchange,
            events_queue=settings.events_queue,
            dead_letter_exchange=f"{settings.dead_letter_queue}.exchange",
            dead_letter_queue=settings.dead_letter_queue,
            updates_exchange=settings.updates_exchange,
            delivery_limit=settings.delivery_limit,
        )

    def events_queue_arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            # Rejected and over-delivered events go to the DLQ, never silently away.
            "x-dead-letter-exchange": self.dead_letter_exchange,
            # A message that keeps crashing the worker is dead-lettered, not looped on.
            "x-delivery-limit": self.delivery_limit,
            # One consumer at a time: a second worker is a hot standby, and one
            # account's events are never processed by two workers at once.
            "x-single-active-consumer": True,
        }

    def steps(self) -> list[Step]:
        """The declarations, in order: exchanges before the queues bound to them."""
        return [
            ("exchange_declare", {"exchange": self.events_exchange, "exchange_type": "topic",
                                  "durable": True}),
            ("exchange_declare", {"exchange": self.dead_letter_exchange,
                                  "exchange_type": "fanout", "durable": True}),
            ("exchange_declare", {"exchange": self.updates_exchange, "exchange_type": "topic",
                                  "durable": True}),
            ("queue_declare", {"queue": self.dead_letter_queue, "durable": True}),
            ("queue_bind", {"queue": self.dead_letter_queue,
                            "exchange": self.dead_letter_exchange, "routing_key": "#"}),
            ("queue_declare", {"queue": self.events_queue, "durable": True,
                               "arguments": self.events_queue_arguments()}),
            ("queue_bind", {"queue": self.events_queue, "exchange": self.events_exchange,
                            "routing_key": "#"}),
        ]

    def declare_blocking(self, channel: Any) -> None:
        """Declare on a ``pika.BlockingConnection`` channel."""
        for method, kwargs in self.steps():
            getattr(channel, method)(**kwargs)

    def declare_async(self, channel: Any, on_done: Callable[[], None]) -> None:
        """Declare on a ``SelectConnection`` channel, chaining callbacks; then ``on_done``."""
        remaining = list(self.steps())

        def next_step(_frame: object = None) -> None:
            if not remaining:
                on_done()
                return
            method, kwargs = remaining.pop(0)
            getattr(channel, method)(callback=next_step, **kwargs)

        next_step()
