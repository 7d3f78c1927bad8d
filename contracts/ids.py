"""Identifier and limit types shared by both contracts."""

from typing import Annotated

from pydantic import StringConstraints

# Ids become parts of routing keys: '.', '*' and '#' would break topic routing.
ID_PATTERN = r"^[A-Za-z0-9_:\-]{1,128}$"

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
# An update's routing key is "<account_id>.<agent_id>", and AMQP carries a routing key
# as a short string: 255 bytes at most. Two ids of 128 would make 257.
MAX_ROUTING_KEY = 255
EventId = Annotated[str, StringConstraints(min_length=1, max_length=256)]

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
# Sequences are stored as SQLite integers: keep them inside a signed 64-bit range.
MAX_SEQUENCE = 2**63 - 1
