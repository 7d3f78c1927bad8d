"""The driver: carries the pipeline's plans out over a :class:`worker.link.Link`, in order,
at least once (the acknowledgement policy is stated in :mod:`worker.driver.core`).

- :mod:`worker.driver.core`: :class:`Driver`: the link's callbacks, the loop, commits, acks,
  failures and back-off, partitions taken and handed over.
- :mod:`worker.driver.batches`: the batches in flight: publishing, groups to commit.
- :mod:`worker.driver.confirms`: the confirm window (publish numbers confirmed).
- :mod:`worker.driver.adoption`: rules adoptions sent per partition, rules in force read.
- :mod:`worker.driver.sweeps`: rules sweeps per partition.
- :mod:`worker.driver.time`: time crossings: ticks, standby probes, the time timer.
- :mod:`worker.driver.state`: phase, counters, a batch, what the monitor takes.
"""

from worker.driver.core import Driver
from worker.driver.state import Batch, Phase, Stats

__all__ = ["Batch", "Driver", "Phase", "Stats"]
