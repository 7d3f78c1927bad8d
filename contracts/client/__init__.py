"""A Python client for downstream services: :class:`InboxMirror` keeps the inboxes of
some agents of one account exact from the worker's updates and snapshots
(docs/downstream.md).

.. code-block:: python

    from contracts.client import InboxMirror

    with InboxMirror("amqp://guest:guest@localhost:5672/%2F", account_id="acc-1",
                     agent_ids=["ag-1", "ag-2"]) as mirror:
        inbox = mirror.inbox("ag-1")  # .seq .counts .unread_counts .conversations .unread

It needs pika and pydantic and the contract's models, nothing of the worker:

- :mod:`contracts.client.inbox`: :class:`InboxKeeper`, the bookkeeping of one agent's
  inbox without I/O (snapshot, updates by ``seq``, duplicates, gaps, new rules), and
  :class:`Inbox`, a frozen picture of it;
- :mod:`contracts.client.link`: the work on one connection (queue, bindings, snapshot
  requests and replies);
- :mod:`contracts.client.mirror`: :class:`InboxMirror`, on a thread of its own with a
  URL, or on the caller's ``pika.BlockingConnection``.
"""

from contracts.client.inbox import (
    DEFAULT_BUFFER_LIMIT,
    DEFAULT_DUPLICATE_WINDOW,
    Applied,
    Buffered,
    Duplicate,
    Gap,
    Inbox,
    InboxKeeper,
    Loaded,
    NewRules,
    Result,
    Stale,
)
from contracts.client.link import SNAPSHOT_ROUTING_KEY, MirrorError
from contracts.client.mirror import InboxMirror, OnChange

__all__ = [
    "DEFAULT_BUFFER_LIMIT",
    "DEFAULT_DUPLICATE_WINDOW",
    "SNAPSHOT_ROUTING_KEY",
    "Applied",
    "Buffered",
    "Duplicate",
    "Gap",
    "Inbox",
    "InboxKeeper",
    "InboxMirror",
    "Loaded",
    "MirrorError",
    "NewRules",
    "OnChange",
    "Result",
    "Stale",
]
