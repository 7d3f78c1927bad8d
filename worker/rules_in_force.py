"""Which rules each partition's messages are evaluated under, in the order of its queue.

A worker wants one rules version live (its rule directory, or the version deployed to
the store). It does not switch to it on its own: it sends each partition it owns an
adoption (worker.control) through the partition's queue, and the partition takes the
new version when that message comes up. Everything queued before it is evaluated under
the version in force then, by whichever worker evaluates it, however many times: after
a crash the next owner redoes the same messages under the same rules, so the updates it
publishes again are the ones already published (same ids, same bodies, same ``seq``).

The version in force is part of the committed state (the store keeps it per partition,
written in the commit of the batch that adopted), and the rule files of every version a
worker ever adopted are kept in the store, so any worker can load any version in force.
With the SQLite store there is one partition, 0.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

from worker.cluster.partitions import partition_of
from worker.domain.categoriser import Categoriser
from worker.domain.rules import Rules
from worker.domain.viewing import DEFAULT_VIEW_SETS

log = logging.getLogger(__name__)

# Compiled versions kept besides those in use: each holds a durable-rules ruleset and
# an evaluation cache (benchmarks/rules_churn.py).
SPARE_VERSIONS = 2


class RulesInForce:
    """The live rules, the version in force per partition (as evaluated, and as
    committed), and their categorisers."""

    def __init__(self, live: Rules, partitions: int, load: Callable[[str], Rules],
                 view_sets: int = DEFAULT_VIEW_SETS) -> None:
        self.partitions = partitions
        self._view_sets = view_sets
        self._load = load
        self._compiled: OrderedDict[str, Categoriser] = OrderedDict()
        self._in_force: dict[int, str] = {}
        self._committed: dict[int, str] = {}
        self.live = Categoriser(live, view_sets)
        self._remember(self.live)
        # Every partition evaluates under the live rules: no partition is looked up.
        self._uniform = True

    # -- what evaluation asks ------------------------------------------------
    def partition(self, account_id: str) -> int:
        return partition_of(account_id, self.partitions) if self.partitions else 0

    def for_account(self, account_id: str) -> Categoriser:
        if self._uniform:
            return self.live
        return self.of_partition(self.partition(account_id))

    def of_partition(self, partition: int) -> Categoriser:
        version = self._in_force.get(partition)
        if version is None or version == self.live.rules.version:
            return self.live
        return self._categoriser(version)

    def version_of(self, partition: int) -> str | None:
        return self._in_force.get(partition)

    @property
    def progress(self) -> int:
        """Work done by every categoriser kept (liveness: worker.cluster.membership.Liveness
        reads any change as progress)."""
        return sum(c.progress for c in list(self._compiled.values()))

    # -- changes -------------------------------------------------------------
    def set_live(self, rules: Rules) -> bool:
        """The version this worker wants in force everywhere; True if it changed."""
        if rules.version == self.live.rules.version:
            return False
        self.live = self._compiled.get(rules.version) or Categoriser(rules, self._view_sets)
        self._remember(self.live)
        self._refresh()
        return True

    def take(self, partition: int, version: str) -> None:
        """A partition as committed: the version its queue adopted last."""
        self._categoriser(version)  # loaded first: a version that cannot load says so
        self._committed[partition] = self._in_force[partition] = version
        self._refresh()

    def drop(self, partitions: frozenset[int]) -> None:
        for partition in partitions:
            self._in_force.pop(partition, None)
            self._committed.pop(partition, None)
        self._refresh()

    def switch(self, partition: int, version: str) -> Categoriser:
        """An adoption came up in the partition's queue (evaluation, not yet committed).
        Raises what loading the version raises (StoreError, RuleFileError)."""
        categoriser = self._categoriser(version)
        self._in_force[partition] = version
        self._refresh()
        return categoriser

    def committed(self, adopted: dict[int, str]) -> None:
        self._committed.update((p, v) for p, v in adopted.items() if p in self._in_force)

    def rollback(self) -> None:
        """Uncommitted batches were discarded: their adoptions with them."""
        self._in_force = dict(self._committed)
        self._refresh()

    def behind(self) -> list[int]:
        """Partitions whose queue has not adopted the live version (as evaluated)."""
        live = self.live.rules.version
        return sorted(p for p, v in self._in_force.items() if v != live)

    # -- the compiled versions ---------------------------------------------
    def _categoriser(self, version: str) -> Categoriser:
        categoriser = self._compiled.get(version)
        if categoriser is None:
            rules = self._load(version)
            log.info("rules version %s loaded: a partition's queue is in force under it",
                     version)
            categoriser = self._remember(Categoriser(rules, self._view_sets))
        self._compiled.move_to_end(version)
        return categoriser

    def _remember(self, categoriser: Categoriser) -> Categoriser:
        self._compiled[categoriser.rules.version] = categoriser
        self._compiled.move_to_end(categoriser.rules.version)
        in_use = {*self._in_force.values(), categoriser.rules.version, self.live.rules.version}
        spare = [v for v in self._compiled if v not in in_use]
        for version in spare[:max(0, len(spare) - SPARE_VERSIONS)]:
            del self._compiled[version]
        return categoriser

    def _refresh(self) -> None:
        live = self.live.rules.version
        self._uniform = all(v == live for v in self._in_force.values())
