"""Several workers on one PostgreSQL store: who is a member, who owns which partition.

- :mod:`worker.cluster.partitions`: which partition an account belongs to.
- :mod:`worker.cluster.membership`: the coordinator: heartbeats, leases, liveness,
  partitions taken and released.
"""
