"""Rules adoption per partition: the version each partition's queue is in force under.

New live rules are sent to every partition owned as an adoption through its queue
(worker.control): everything queued before it stays under the rules in force then,
whoever evaluates it again. A partition taken is first read from the store: its
committed version in force (nothing of it is evaluated before that is known).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from worker.amqp.topology import Topology
from worker.control import Adopt, adopt_message
from worker.driver.host import DriverHost
from worker.driver.state import Phase
from worker.errors import RuleFileError, StoreError, UnknownRulesError

log = logging.getLogger("worker.driver")


def partition_route(topology: Topology, partition: int) -> tuple[str, str]:
    """Where a message for ``partition`` is published: (exchange, routing key)."""
    if topology.partitions:
        return topology.partitions_exchange, str(partition)
    return "", topology.events_queue


class Adoptions:
    """Partitions whose version in force is not read yet (the store failed), and the
    adoptions sent per partition that have not come back."""

    def __init__(self, host: DriverHost, on_read: Callable[[int], None]) -> None:
        self.host = host
        self.on_read = on_read  # a partition's version in force is known: sweep it
        self.unread: set[int] = set()
        self.sending: dict[int, str] = {}

    def send(self) -> None:
        """Every partition owned whose queue is not (about to be) under the live rules is
        sent an adoption, once per version; only by the active consumer (a hot standby
        would make the active worker adopt its rules)."""
        host = self.host
        if host.phase is not Phase.CONSUMING or not host.may_act():
            return
        live = host.rules.version
        for partition in host.in_force.behind():
            if self.sending.get(partition) == live:
                continue
            exchange, routing_key = partition_route(host.topology, partition)
            if not host.publish_aside(adopt_message(exchange, routing_key, host.step.token,
                                                    Adopt(partition, live))):
                return  # the link is down: on_ready sends them again
            self.sending[partition] = live

    def read_in_force(self) -> bool:
        """The committed version in force of each partition taken (and a sweep for
        it: a previous owner may have left one unfinished). False if the store failed
        (a back-off; evaluation waits until they are known)."""
        host = self.host
        for partition in sorted(self.unread):
            try:
                version = host.store.rules_in_force(partition, host.rules.version)
                try:
                    host.in_force.take(partition, version)
                except UnknownRulesError:
                    log.warning("partition %d is in force under rules version %s, whose "
                                "files the store does not keep (an older inbox-rules "
                                "adopted it): it follows version %s from here on",
                                partition, version, host.rules.version)
                    version = host.rules.version
                    host.in_force.take(partition, version)
            except (StoreError, RuleFileError) as exc:
                host.back_off(f"cannot read the rules in force of partition {partition}: "
                              f"{exc}")
                return False
            self.unread.discard(partition)
            self.on_read(partition)
            if version != host.rules.version:
                log.info("partition %d is under rules version %s until its queue adopts "
                         "%s", partition, version, host.rules.version)
        return True

    def committed(self, adopted: Mapping[int, str]) -> None:
        """Adoptions evaluated and committed: they came back."""
        for partition, version in adopted.items():
            if self.sending.get(partition) == version:
                del self.sending[partition]

    def drop(self, partitions: Iterable[int]) -> None:
        """Partitions released: nothing of them is read or sent any more."""
        for partition in partitions:
            self.sending.pop(partition, None)
            self.unread.discard(partition)
