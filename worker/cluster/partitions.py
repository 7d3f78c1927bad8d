"""Which partition an account belongs to, the unit of ownership when several workers
share a PostgreSQL store.

Every worker, on every Python version and in every process, must put an account in the
same partition, or two workers would handle one account at once: so the hash is
blake2b (stable by definition), never :func:`hash` (salted per process for ``str``).
"""

from __future__ import annotations

import hashlib


def partition_of(account_id: str, partitions: int) -> int:
    """The partition of ``account_id`` among ``partitions``: the first 8 bytes of the
    blake2b digest of its UTF-8 encoding, big-endian, modulo the count."""
    if partitions < 1:
        raise ValueError(f"the partition count must be at least 1, not {partitions}")
    digest = hashlib.blake2b(account_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % partitions
