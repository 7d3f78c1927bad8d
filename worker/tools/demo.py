"""``inbox-rules demo``: a small scenario through a running worker, shown as inboxes.

It listens before it speaks: its own exclusive queue is bound to the updates
exchange for the scenario's account before the first event is published, so no
update can slip past it.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pika
import pika.exceptions

from worker.amqp.connection import connection_parameters
from worker.amqp.io import blocking_connection
from worker.amqp.topology import Topology
from worker.errors import DemoError
from worker.settings import Settings

AGENTS = ("ag-alice", "ag-bob")
QUIET_SECONDS = 1.0


def scenario(account_id: str) -> list[dict[str, Any]]:
    """Two agents, a PRO group with Alice in it, a join, a transfer, a resolve."""
    steps: list[tuple[str, str | None, dict[str, Any]]] = [
        ("account.updated", None,
         {"plan": "pro", "agents": list(AGENTS), "groups": {"g-pro": ["ag-alice"]}}),
        ("conversation.created", "c-1", {"group_id": "g-pro"}),  # New for Alice only
        ("conversation.created", "c-2", {"group_id": None}),     # New for both
        ("conversation.created", "c-3", {"group_id": "g-pro"}),
        ("conversation.assigned", "c-2", {"agent_id": "ag-bob"}),  # Bob joins
        ("conversation.transferred", "c-1", {"to_agent_id": "ag-bob"}),
        ("conversation.resolved", "c-2", {}),
    ]
    events = []
    for number, (kind, conversation_id, data) in enumerate(steps, start=1):
        event: dict[str, Any] = {
            "event_id": f"{account_id}-e{number}", "type": kind, "account_id": account_id,
            "occurred_at": f"2026-11-24T10:00:{number:02d}Z", "data": data}
        if conversation_id is not None:
            event["conversation_id"] = conversation_id
        events.append(event)
    return events


def run_demo(settings: Settings, timeout: float = 10.0) -> str:
    """Publish the scenario, collect the updates, return the inboxes as a table."""
    account_id = f"demo-{uuid.uuid4().hex[:8]}"
    events = scenario(account_id)
    topology = Topology.from_settings(settings)
    try:
        connection = blocking_connection(connection_parameters(settings, "inbox-rules demo"))
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise DemoError(f"cannot connect to {settings.safe_amqp_url}: {exc!r}") from exc
    try:
        channel = connection.channel()
        topology.declare_blocking(channel)
        queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        channel.queue_bind(queue, topology.updates_exchange, routing_key=f"{account_id}.*")
        for event in events:
            channel.basic_publish(
                topology.events_exchange, event["type"], json.dumps(event).encode(),
                pika.BasicProperties(content_type="application/json", delivery_mode=2))
        updates = _collect(channel, queue, events[-1]["event_id"], timeout)
    finally:
        connection.close()
    if not updates:
        raise DemoError(f"no category updates within {timeout:g} s: is a worker "
                        f"(inbox-rules run) consuming {topology.events_queue} on "
                        f"{settings.safe_amqp_url}?")
    return render(account_id, len(events), updates)


def _collect(channel: Any, queue: str, last_event_id: str,
             timeout: float) -> list[dict[str, Any]]:
    """Updates until the last event's have come and a quiet second passed, or timeout."""
    updates: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    quiet_since: float | None = None
    for _method, _properties, body in channel.consume(queue, auto_ack=True,
                                                       inactivity_timeout=0.1):
        now = time.monotonic()
        if body is not None:
            update = json.loads(body)
            updates.append(update)
            if update["cause_event_id"] == last_event_id:
                quiet_since = now
        if now > deadline or (quiet_since is not None and now - quiet_since > QUIET_SECONDS):
            break
    channel.cancel()
    return updates


def render(account_id: str, events: int, updates: list[dict[str, Any]]) -> str:
    """Each agent's badge counts, then which conversations sit in which category."""
    counts: dict[str, dict[str, int]] = {}
    placed: dict[str, dict[str, list[str]]] = {}
    for update in updates:  # in publish order: the last one per key wins
        agent = update["agent_id"]
        counts[agent] = update["counts"]
        placed.setdefault(agent, {})[update["conversation_id"]] = update["categories"]
    categories = list(next(iter(counts.values())))
    agents = sorted(counts)
    width = max(len("agent"), *(len(a) for a in agents))
    lines = [f"Inbox of account {account_id} ({events} events, {len(updates)} updates)", "",
             "  ".join([f"{'agent':<{width}}", *categories])]
    for agent in agents:
        cells = [f"{counts[agent].get(c, 0):>{len(c)}}" for c in categories]
        lines.append("  ".join([f"{agent:<{width}}", *cells]))
    lines.append("")
    for agent in agents:
        by_category = {c: sorted(conv for conv, cats in placed[agent].items() if c in cats)
                       for c in categories}
        shown = "; ".join(f"{c}: {', '.join(convs)}" for c, convs in by_category.items()
                          if convs)
        lines.append(f"{agent:<{width}}  {shown}")
    return "\n".join(lines)
