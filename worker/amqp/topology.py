"""The broker topology, named and declared in one place, idempotently, at start-up.

Declarations are data (a method name and its arguments) so that the worker's
asynchronous channel and the blocking channels of the demo and the tests declare
exactly the same thing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from contracts.requests import REQUEST_KINDS
from worker.settings import Settings, env_name

Step = tuple[str, dict[str, Any]]
# The requests queue's delivery limit (see events_queue_arguments for why it is high).
REQUESTS_DELIVERY_LIMIT = 100_000


@dataclass(frozen=True)
class Topology:
    """Exchange and queue names, all derived here from the settings."""

    events_exchange: str
    events_queue: str
    dead_letter_exchange: str
    dead_letter_queue: str
    updates_exchange: str
    requests_exchange: str
    requests_queue: str
    delivery_limit: int
    # Several workers (PostgreSQL store): events are routed by account to this many
    # partition queues, each consumed by one worker at a time. 0: one shared queue.
    partitions: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        return cls(
            events_exchange=settings.events_exchange,
            events_queue=settings.events_queue,
            dead_letter_exchange=f"{settings.dead_letter_queue}.exchange",
            dead_letter_queue=settings.dead_letter_queue,
            updates_exchange=settings.updates_exchange,
            requests_exchange=settings.requests_exchange,
            requests_queue=settings.requests_queue,
            delivery_limit=settings.delivery_limit,
            partitions=settings.partitions if settings.store_url else 0,
        )

    def events_queue_arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            # Rejected and over-delivered events go to the DLQ, never silently away.
            "x-dead-letter-exchange": self.dead_letter_exchange,
            # A last resort against a message that crash-loops the *process*, set so
            # high (default 100000) that reconnects never reach it. RabbitMQ 3.x counts
            # every return of an unacked message towards this limit, returns caused
            # by a lost connection included: with the old limit of 20, an event held
            # across 21 lost connections (a network flap, broker restarts, a worker
            # that keeps missing heartbeats) was dead-lettered with no reason
            # (tests/broker/test_delivery_limit.py shows it). Each loss costs a
            # reconnect with backoff, so 100000 is beyond any storm, yet an event
            # that really kills the process every time still ends up in the DLQ.
            # Bad events are the worker's own to dead-letter, with a reason.
            # RabbitMQ never changes an existing queue's arguments: a queue declared
            # with another value is refused (PRECONDITION_FAILED) and the link says
            # how to fix it (describe_refusal; docs/delivery-limit.md).
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
            # Snapshot and explain requests (SPEC "Requests"): answered by the active
            # worker, between its batches of events, from the state those left.
            ("exchange_declare", {"exchange": self.requests_exchange,
                                  "exchange_type": "direct", "durable": True}),
            ("queue_declare", {"queue": self.requests_queue, "durable": True,
                               "arguments": self.requests_queue_arguments()}),
            *[("queue_bind", {"queue": self.requests_queue,
                              "exchange": self.requests_exchange, "routing_key": kind})
              for kind in REQUEST_KINDS],
            *(self.partition_steps() if self.partitions else []),
        ]

    def requests_queue_arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": self.dead_letter_exchange,
            # Fixed, not the setting: the setting may be lowered to match an events
            # queue an older worker declared, and this queue would then keep that value.
            "x-delivery-limit": REQUESTS_DELIVERY_LIMIT,
            # The worker that consumes the events answers the requests (a standby waits).
            "x-single-active-consumer": True,
        }

    def consumed_queues(self) -> tuple[str, ...]:
        """The queues every worker consumes, events first: in partitioned mode these
        are routed on to the partitions (one router active at a time)."""
        return (self.events_queue, self.requests_queue)

    def own_queues(self) -> frozenset[str]:
        """Every queue of the worker's own (it consumes them, or dead-letters to one):
        a request's reply must not go to any of them, where it would be read as an
        event, a request or a dead letter."""
        return frozenset((self.events_queue, self.requests_queue, self.dead_letter_queue,
                          *(self.partition_queue(p) for p in range(self.partitions))))

    # -- partitions (several workers) ------------------------------------------
    @property
    def partitions_exchange(self) -> str:
        return f"{self.events_queue}.partitions"

    def partition_queue(self, partition: int) -> str:
        return f"{self.events_queue}.partition.{partition}"

    def partition_of_queue(self, queue: str) -> int | None:
        prefix = f"{self.events_queue}.partition."
        return int(queue[len(prefix):]) if queue.startswith(prefix) else None

    def partition_steps(self) -> list[Step]:
        steps: list[Step] = [("exchange_declare", {
            "exchange": self.partitions_exchange, "exchange_type": "direct", "durable": True})]
        for partition in range(self.partitions):
            queue = self.partition_queue(partition)
            steps += [("queue_declare", {"queue": queue, "durable": True,
                                         "arguments": self.events_queue_arguments()}),
                      ("queue_bind", {"queue": queue, "exchange": self.partitions_exchange,
                                      "routing_key": str(partition)})]
        return steps

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


# RabbitMQ's refusal of a redeclaration with other arguments, e.g. "PRECONDITION_FAILED -
# inequivalent arg 'x-delivery-limit' for queue 'q' in vhost '/': received '100000' but
# current is '20'" (or "received none but current is the value '20' of type 'signedint'").
_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for (?P<kind>queue|exchange) '(?P<name>[^']*)'"
    r" in vhost '(?P<vhost>[^']*)': received (?P<new>none|(?:the value )?'[^']*')"
    r".*? but current is (?P<old>none|(?:the value )?'[^']*')")
_VALUE = re.compile(r"^(?:the value )?'(?P<value>[^']*)'")

# Queue arguments the operator sets through a setting.
_ARGUMENT_SETTINGS = {"x-delivery-limit": "delivery_limit"}


def _value(text: str) -> str:
    match = _VALUE.match(text)
    return match["value"] if match else text


def describe_refusal(topology: Topology, settings: Settings, reason: str) -> str:
    """What to tell an operator when the broker refuses the set-up: for a queue that
    exists with other arguments, which one differs and how to fix it; otherwise the
    broker's own words."""
    match = _INEQUIVALENT.search(reason)
    if match is None:
        return (f"the broker refused the worker's set-up on {settings.safe_amqp_url}: "
                f"{reason}. Retrying quietly meanwhile.")
    arg, kind, name, vhost = match["arg"], match["kind"], match["name"], match["vhost"]
    old, new = _value(match["old"]), _value(match["new"])
    text = (f"{kind} {name!r} in vhost {vhost!r} exists with {arg} = {old}, but this worker "
            f"declares {arg} = {new}; RabbitMQ never changes an existing {kind}'s "
            "arguments, so the worker cannot consume.")
    if kind == "queue" and name == topology.events_queue:
        delete = (f"delete the queue (rabbitmqctl delete_queue --vhost {vhost} {name} "
                  "--if-empty)")
        setting = _ARGUMENT_SETTINGS.get(arg)
        if setting is not None and old != "none":
            variable = env_name(setting)
            text += (f" Fix: set {variable}={old} to use the queue as it is. To move to "
                     f"{new}: while running so, pause the publisher and let the queue "
                     f"drain, stop the worker, {delete}, and start it without "
                     f"{variable}={old}: it declares the queue anew.")
        else:
            text += (" Fix: with the publisher paused, let the worker that declared the "
                     f"queue drain it, stop that worker, {delete}, then start this one: "
                     "it declares the queue anew.")
        if arg == "x-delivery-limit":
            text += (" A delivery-limit policy cannot raise the limit (RabbitMQ applies the "
                     "lower of policy and argument). See docs/delivery-limit.md.")
    return text + " Retrying quietly meanwhile."
