"""Views: what they cost the worker, and what they must not cost accounts without them.

    python -m benchmarks.views [--quick] [--only cost,unused,memory,latency]
                               [--rounds N] [--against REF] [--sets N] [--view-sets N]
                               [--profile]

About 3 minutes on a quiet 2-core machine (``--quick``: about 1.5), far longer on a
busy one.

Against the local RabbitMQ (127.0.0.1:5672, guest/guest), in a vhost made for the run
and deleted after it, with the harness of :mod:`benchmarks.compare`: the real
``inbox-rules run`` as a subprocess (defaults but the broker URL and a fresh state
file), the stream pre-published into its queue, timed from its consumer's appearance to
the output of a sentinel published last. Every figure is a ratio against a baseline
measured in the same run (rates: interleaved rounds, medians), printed with its target
and PASS or FAIL:

1. **cost**: the generator's rich stream (:mod:`tests.support.streams`, ``rich``
   lifecycles) of accounts of 10 agents, with views and without. With views, each
   account's snapshot is followed by its 20 shared views and each agent's 3 personal
   views (:func:`with_views`: built here from the generator's output), then the same
   conversation events. The views are drawn per account (and per agent) from a
   catalogue of realistic ones: category references, priority, labels, channel,
   ``agent.unread``/``agent.mentioned`` and waiting-time tests under ``all``/``any``/
   ``not``; conversations move in and out of them all along the stream. Target: worker
   events/s with views at least 0.5x without. The in-process categoriser
   (:class:`~worker.domain.inbox.Inbox`, no broker) is measured the same way beside it.
2. **unused**: accounts without views must not pay for the feature, which cannot be
   switched off: the worker of this tree against the worker of ``--against`` (default
   ``af9b8a5``, the commit before views; its packages taken with ``git archive``, no
   worktree), both launched the same way, on the default stream of
   :mod:`benchmarks.compare` (``light/2``, the quick size), seven interleaved rounds
   (a few percent is sought in a noise of tens). Target: at least 0.95x. The
   in-process categoriser of both trees (a subprocess each) beside it, on the same
   stream and on figure 1's stream without views; with ``--instructions``, valgrind's
   count of the instructions per event of both workers' drivers (all but AMQP, on
   the same stream): the one figure here that the machine's load does not move (runs
   still differ by a few percent: hash seeds and addresses order sets and dicts).
3. **memory**: 10,000 accounts, each with a shared view set of its own (20 views,
   distinct conditions and names), its snapshot and a few events of one chat, in
   blocks of 50 accounts. The worker runs with its defaults (at most
   ``INBOX_RULES_VIEW_SETS`` = 1024 compiled sets, ``INBOX_RULES_ACCOUNT_CACHE_SIZE`` =
   2000 accounts; ``--view-sets N`` sets the first); its VmRSS is read once every event
   so far is handled, after 500 sets and at a few points to 10,000. Target: RSS after
   all at most 1.2x RSS after the first 500. Then the same accounts and events without
   their views, for what the account cache alone adds.
4. **latency**: one account of 20 agents with 2,000 open chats (the generator's rich
   lifecycles, resolutions left out), pre-loaded; then shared views events (20 views
   set from none, one view edited, all removed), one at a time: from publishing each to
   the last of its updates (``cause_event_id``) arriving at a queue bound to the
   updates exchange (``inbox.categories``); the number of updates each makes is known
   from the in-process categoriser beforehand. Target: the median at most 2 s. The bare
   relay (:mod:`benchmarks.relay`) then publishes as many copies of each event: the
   floor of publishing that many messages through this broker.

``--profile`` adds where figure 1's time goes: py-spy summaries of the worker's last
round on both streams (``pip install py-spy``), and a cProfile of the in-process
categoriser on the stream with views.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import random
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pika

from benchmarks import compare
from benchmarks.compare import (
    DEFAULT,
    QUICK,
    SENTINEL_ACCOUNT,
    SENTINEL_QUEUE,
    SINK,
    attempt,
    reset,
    start,
    stop,
    throughput,
    wait_until,
)
from benchmarks.relay import COPIES
from contracts import parse_event, parse_event_object
from contracts.events import PRIORITIES
from tests.support.harness import REPO, Bus, fresh_vhost
from tests.support.streams import CHANNELS, LABELS, as_lines, envelope, event_stream
from worker.domain.inbox import Inbox
from worker.rulebook import load_rules

Json = dict[str, Any]

SHARED = 20  # shared views per account
PERSONAL = 3  # personal views per agent
AGENTS = 10  # agents per account of figure 1
BEFORE_VIEWS = "af9b8a5"  # the commit before views
FIRST_SETS = 500  # figure 3: RSS after these, then after all
MEMORY_POINTS = (500, 1000, 2000, 5000, 10_000)
MEMORY_BLOCK = 50  # accounts whose snapshots, views and chats come together
LATENCY_AGENTS = 20
LATENCY_CONVERSATIONS = 2000
TARGETS = {"cost": 0.5, "unused": 0.95, "memory": 1.2, "latency": 2.0}
FIGURES = ("cost", "unused", "memory", "latency")


# -- the views ------------------------------------------------------------------------
def _all(*items: Json) -> Json:
    return {"all": list(items)}


def _any(*items: Json) -> Json:
    return {"any": list(items)}


def _not(item: Json) -> Json:
    return {"not": item}


def _is(category: str) -> Json:
    return {"category": category}


def _fact(name: str, op: str, value: object) -> Json:
    return {"fact": name, op: value}


def _labels(op: str, value: object) -> Json:
    return _fact("conversation.labels", op, value)


def _channel(op: str, value: object) -> Json:
    return _fact("conversation.channel", op, value)


def _priority(op: str, value: object) -> Json:
    return _fact("conversation.priority", op, value)


def _agent(fact: str, value: bool = True) -> Json:
    return _fact(f"agent.{fact}", "equals", value)


NEW, MINE, PRIMARY, ALL = _is("new"), _is("mine"), _is("primary"), _is("all")


def shared_catalogue(rng: random.Random) -> list[tuple[str, str, Json]]:
    """Every shared view an account may have, (view_id, name, condition), with this
    account's labels, channels, priorities and waiting time drawn from ``rng``."""
    first, second, third = rng.sample(LABELS, 3)
    channel, other = rng.sample(CHANNELS, 2)
    high = rng.choice(("medium", "high", "urgent"))
    band = sorted(rng.sample(PRIORITIES, 2), key=PRIORITIES.index)
    wait = rng.choice((120, 300, 600))
    return [
        ("vip-waiting", f"{first} waiting", _all(NEW, _labels("contains", first))),
        ("hot", "Hot", _all(ALL, _priority("at_least", high))),
        ("unread-mine", "Unread, mine", _all(MINE, _agent("unread"))),
        ("channel-label", f"{second} by {channel}",
         _all(_channel("equals", channel), _labels("contains", second))),
        ("messaging", "Messaging", _channel("in", [channel, other])),
        ("either-label", f"{first} or {third}", _labels("contains_any", [first, third])),
        ("new-not-label", f"New, not {third}", _all(NEW, _not(_labels("contains", third)))),
        ("mentioned", "Mentioned", _agent("mentioned")),
        ("snoozed", "Snoozed", _fact("conversation.status", "equals", "snoozed")),
        ("awaiting-reply", "Awaiting my reply",
         _all(MINE, _fact("conversation.last_message_by", "equals", "visitor"))),
        ("at-risk", "At risk", _any(_priority("equals", "urgent"),
                                    _labels("contains_any", [second, third]))),
        ("label-taken", f"{second}, taken", _all(_labels("contains", second), _not(NEW))),
        ("label-elsewhere", f"{first}/{second} not on {other}",
         _all(_labels("contains_any", [first, second]), _channel("not_equals", other))),
        ("group-unassigned", "Other groups, unassigned",
         _all(_fact("conversation.has_group", "equals", True),
              _fact("conversation.joined_count", "equals", 0), _agent("in_group", False))),
        ("channel-low", f"{other}, low priority",
         _all(_channel("equals", other), _priority("at_most", "low"))),
        ("label-primary", f"{third} for me", _all(_labels("contains", third), PRIMARY)),
        ("shared", "Several agents", _fact("conversation.joined_count", "at_least", 2)),
        ("unread-new", "Unread, new", _all(NEW, _agent("unread"))),
        ("both-labels", f"{first} and {second}", _labels("contains_all", [first, second])),
        ("no-channel", "No channel", _not(_channel("present", True))),
        ("answered", "Answered, mine",
         _all(PRIMARY, _fact("conversation.last_message_by", "equals", "agent"),
              _not(_agent("unread")))),
        ("needs-me", "Needs me", _all(_any(MINE, NEW),
                                      _any(_agent("unread"), _agent("mentioned")))),
        ("priority-band", f"{band[0]} to {band[1]}", _priority("in", band)),
        ("unlabelled", "Unlabelled",
         _all(ALL, _not(_labels("contains_any", [first, second, third])))),
        ("long-wait", f"Waiting over {wait} s",
         _all(NEW, _fact("conversation.waiting_seconds", "at_least", wait))),
    ]


def shared_views(account_id: str, count: int = SHARED, *, timed: bool = True) -> list[Json]:
    """``count`` shared views of one account (its own: drawn with its id, and named
    after it), in catalogue order. ``timed=False``: no waiting-time view."""
    rng = random.Random(f"shared/{account_id}")
    catalogue = [entry for entry in shared_catalogue(rng)
                 if timed or entry[0] != "long-wait"]
    chosen = sorted(rng.sample(range(len(catalogue)), count))
    return [{"view_id": catalogue[i][0], "name": f"{catalogue[i][1]} ({account_id})",
             "when": catalogue[i][2]} for i in chosen]


def personal_views(account_id: str, agent_id: str, count: int = PERSONAL) -> list[Json]:
    """``count`` personal views of one agent (drawn with the agent's ids)."""
    rng = random.Random(f"personal/{account_id}/{agent_id}")
    label, channel = rng.choice(LABELS), rng.choice(CHANNELS)
    high = rng.choice(("high", "urgent"))
    catalogue = [
        ("my-label", f"My {label}", _all(MINE, _labels("contains", label))),
        ("unread-hot", "Unread and hot", _all(_agent("unread"), _priority("at_least", high))),
        ("group-new", "New in my groups",
         _all(NEW, _agent("in_group"), _not(_channel("equals", channel)))),
        ("my-mentions", "My mentions", _all(ALL, _agent("mentioned"))),
        ("my-snoozed", "My snoozed",
         _all(_fact("conversation.status", "equals", "snoozed"), _agent("joined"))),
        ("my-channel", f"Mine on {channel}", _all(PRIMARY, _channel("equals", channel))),
    ]
    chosen = sorted(rng.sample(range(len(catalogue)), count))
    return [{"view_id": catalogue[i][0], "name": catalogue[i][1], "when": catalogue[i][2]}
            for i in chosen]


def views_events(snapshot: Json, shared: int, personal: int) -> list[Json]:
    """The views an account sends after its snapshot: its shared views, then each of its
    agents' personal views; account events numbered after the snapshot."""
    account = str(snapshot["account_id"])
    sequence = snapshot.get("sequence")
    events: list[Json] = []

    def add(kind: str, data: Json) -> None:
        number = len(events) + 1
        events.append(envelope(
            kind, account, data, event_id=f"{snapshot['event_id']}-views-{number}",
            occurred_at=str(snapshot["occurred_at"]),
            sequence=None if sequence is None else int(sequence) + number))

    if shared:
        add("account.views_updated", {"views": shared_views(account, shared)})
    if personal:
        for agent in snapshot["data"]["agents"]:
            add("agent.views_updated", {"agent_id": agent,
                                        "views": personal_views(account, agent, personal)})
    return events


def with_views(events: Iterable[Json], *, shared: int = SHARED,
               personal: int = PERSONAL) -> list[Json]:
    """A generator's stream with views: each account's first snapshot followed by its
    views (:func:`views_events`), everything else as it was; the account's later
    account events are numbered after the views (a re-sent snapshot keeps its number:
    it stays the old event it is)."""
    out: list[Json] = []
    shifted: dict[str, tuple[int, int]] = {}  # account -> (snapshot's sequence, shift)
    for event in events:
        account = str(event["account_id"])
        sequence = event.get("sequence")
        moved = shifted.get(account)
        if (moved is not None and "conversation_id" not in event and sequence is not None
                and sequence > moved[0]):
            event = {**event, "sequence": sequence + moved[1]}
        out.append(event)
        if event["type"] == "account.updated" and moved is None:
            added = views_events(event, shared, personal)
            shifted[account] = (int(sequence or 0), len(added))
            out.extend(added)
    return out


# -- the streams ------------------------------------------------------------------------
def cost_streams(conversations: int, accounts: int, seed: int = 7,
                 ) -> tuple[list[Json], list[Json]]:
    """Figure 1: the rich stream of ``accounts`` accounts of :data:`AGENTS` agents,
    without views and with them."""
    plain = event_stream(seed, profile="rich", agents=AGENTS, conversations=conversations,
                         accounts=accounts)
    return plain, with_views(plain)


def memory_blocks(sets: int, views: int = SHARED, chat_events: int = 3,
                  block: int = MEMORY_BLOCK, seed: int = 1000) -> list[list[Json]]:
    """Figure 3: ``sets`` accounts with a shared view set each, in blocks of ``block``:
    per block the generator's rich stream of that many accounts (2 agents) and chats
    (one each), cut to about ``chat_events`` events per chat; each snapshot followed
    by its account's views."""
    blocks = []
    for number in range(-(-sets // block)):
        size = min(block, sets - number * block)
        base = event_stream(seed + number, profile="rich", agents=2, conversations=size,
                            accounts=size, count=size * (1 + chat_events))
        blocks.append(with_views(base, shared=views, personal=0))
    return blocks


def latency_setup(conversations: int = LATENCY_CONVERSATIONS, agents: int = LATENCY_AGENTS,
                  seed: int = 9) -> list[Json]:
    """Figure 4: one account of ``agents`` agents, ``conversations`` chats left open (the
    generator's rich lifecycles without their resolutions)."""
    return [e for e in event_stream(seed, profile="rich", agents=agents,
                                    conversations=conversations, accounts=1)
            if e["type"] != "conversation.resolved"]


def latency_changes(setup: Sequence[Json], rounds: int) -> list[tuple[str, Json]]:
    """The views events measured, after ``setup``: per round its 20 shared views set
    (from none), one of them edited, all removed. (label, event)"""
    snapshot = next(e for e in setup if e["type"] == "account.updated")
    account = str(snapshot["account_id"])
    last = max(int(e.get("sequence") or 0) for e in setup if "conversation_id" not in e)
    moment = str(setup[-1]["occurred_at"])
    views = shared_views(account, timed=False)
    edited = [dict(v) for v in views]
    edited[0]["when"] = _all(ALL, _priority("at_least", "low"))
    changes: list[tuple[str, Json]] = []
    for round_ in range(rounds):
        for label, body in (("set 20 views", views), ("edit 1 view", edited),
                            ("remove all", [])):
            last += 1
            changes.append((label, envelope(
                "account.views_updated", account, {"views": body}, occurred_at=moment,
                event_id=f"views-{round_}-{len(changes)}", sequence=last)))
    return changes


def keys_of(events: Sequence[Json]) -> list[str]:
    return [str(e["type"]) for e in events]


# -- in process -------------------------------------------------------------------------
def replay(lines: Sequence[bytes]) -> tuple[float, int]:
    """(CPU seconds, updates) of the in-process categoriser on ``lines``: CPU time, as
    other work on the machine slows the wall clock down run by run."""
    inbox = Inbox(load_rules())
    gc.collect()
    started = time.process_time()
    updates = 0
    for line in lines:
        updates += len(inbox.handle(parse_event(line)))
    return time.process_time() - started, updates


def profile(lines: Sequence[bytes], top: int = 18) -> str:
    """cProfile of the in-process categoriser on ``lines``: the top functions by own
    time and by cumulative time."""
    profiler = cProfile.Profile()
    profiler.enable()
    replay(lines)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# -- another tree ---------------------------------------------------------------------
# Puts a tree's packages first on the path (python -P: not the working directory), then
# runs the module as ``python -m`` would.
LAUNCH = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
          "runpy.run_module('worker.cli', run_name='__main__', alter_sys=True)")
REPLAY = """
import gc, json, sys, time
sys.path.insert(0, sys.argv[1])
from contracts import parse_event
from worker.domain.inbox import Inbox
from worker.rulebook import load_rules
lines = open(sys.argv[2], "rb").read().splitlines()
inbox = Inbox(load_rules())
gc.collect()
started = time.process_time()
updates = sum(len(inbox.handle(parse_event(line))) for line in lines)
print(json.dumps([time.process_time() - started, updates]))
"""

# The worker's driver as ``inbox-rules run`` makes it (pipeline, categoriser, SQLite store
# committed inline), over a link that publishes into the void and confirms everything:
# the whole worker but AMQP, for counting its instructions.
DRIVE = """
import json, sys, tempfile
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from worker.driver import Driver
from worker.link import Delivery
from worker.rulebook import load_rules
from worker.settings import Settings
from worker.store.sqlite import SqliteStore
class Link:
    published = 0
    timers = []
    def start(self): pass
    def close(self): pass
    def consume(self, queues): pass
    def cancel(self): pass
    def abort(self, stop): pass
    def publish(self, message):
        self.published += 1
        return self.published
    def ack(self, tag, multiple): pass
    def call_later(self, delay, callback):
        self.timers.append(callback)
        return callback
    def cancel_timer(self, handle): self.timers = [t for t in self.timers if t is not handle]
def settle():
    confirmed = 0
    for _ in range(50):
        if confirmed < link.published:
            confirmed = link.published
            driver.on_confirm(confirmed, multiple=True, ok=True)
            continue
        timers, link.timers = link.timers, []
        if not timers:
            return
        for timer in timers:
            timer()
lines = open(sys.argv[2], "rb").read().splitlines()
driver = Driver(Settings(max_batch_delay=0.0), load_rules(),
                SqliteStore(Path(tempfile.mkdtemp()) / "state.db"))
link = Link()
driver.attach(link)
driver.on_ready()
for tag, line in enumerate(lines, 1):
    driver.on_delivery(Delivery(tag, json.loads(line)["type"], line))
    if tag % 600 == 0:
        settle()
settle()
"""
REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def checkout(ref: str, into: Path) -> Path:
    """The worker's packages (worker, contracts, rules) as they were at ``ref``, from
    ``git archive``: the repository's worktrees and branches are left alone."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "worker", "contracts",
                              "rules"], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def describe(ref: str) -> str:
    """``ref`` as a short commit id."""
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", ref],
                          capture_output=True, text=True, check=True).stdout.strip()


def this_tree() -> str:
    """HEAD's short id, ``+changes`` when the working tree's packages differ from it."""
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "worker",
                            "contracts", "rules"], capture_output=True, text=True,
                           check=True).stdout.strip()
    return describe("HEAD") + ("+changes" if dirty else "")


def worker_at(tree: Path) -> tuple[str, ...]:
    """``inbox-rules run`` from the packages in ``tree``."""
    return (sys.executable, "-P", "-c", LAUNCH, str(tree), "run")


def replay_at(tree: Path, lines_file: Path) -> tuple[float, int]:
    """(CPU seconds, updates) of the in-process categoriser of ``tree`` (a
    subprocess)."""
    out = subprocess.run([sys.executable, "-P", "-c", REPLAY, str(tree), str(lines_file)],
                         capture_output=True, text=True, check=True, cwd=tree).stdout
    seconds, updates = json.loads(out.strip().splitlines()[-1])
    return float(seconds), int(updates)


def instructions_at(tree: Path, lines_file: Path, empty_file: Path, seed: int) -> int:
    """Instructions (valgrind's count: the same every run with the same hash seed,
    however busy the machine) the worker of ``tree`` takes for the events of
    ``lines_file`` on its driver (:data:`DRIVE`): a run on them less a run on none
    (start-up, imports)."""
    counts = []
    for path in (lines_file, empty_file):
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
             sys.executable, "-P", "-c", DRIVE, str(tree), str(path)],
            capture_output=True, text=True, check=True, cwd=tree,
            env={**os.environ, "PYTHONHASHSEED": str(seed)})
        found = REFS.search(done.stderr)
        if found is None:
            raise RuntimeError(f"no instruction count from valgrind: {done.stderr[-500:]}")
        counts.append(int(found.group(1).replace(",", "")))
    return counts[0] - counts[1]


def instructions(trees: dict[str, Path], lines_file: Path, empty_file: Path,
                 seeds: Sequence[int] = (0, 1, 2)) -> dict[str, int]:
    """Per tree, the median over hash seeds (set and dict orders move the count by a
    few percent) of :func:`instructions_at`; two at a time (counts do not mind)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {(name, seed): pool.submit(instructions_at, tree, lines_file, empty_file, seed)
                for name, tree in trees.items() for seed in seeds}
        return {name: int(statistics.median(runs[(name, seed)].result() for seed in seeds))
                for name in trees}


# -- reporting ----------------------------------------------------------------------------
@dataclass
class Verdict:
    name: str
    ok: bool
    text: str

    def __str__(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'} {self.name}: {self.text}"


@dataclass
class Rates:
    """Runs of one program on one stream: events, updates and seconds of each."""

    events: int
    updates: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # CPU seconds (worker runs)

    def add(self, seconds: float, updates: int, cpu: float = 0.0) -> None:
        self.seconds.append(seconds)
        self.updates.append(updates)
        self.cpu.append(cpu)

    @property
    def rate(self) -> float:
        """Median events/s."""
        return self.events / statistics.median(self.seconds)

    @property
    def cpu_us(self) -> float:
        """Median CPU microseconds per event."""
        return statistics.median(self.cpu) / self.events * 1e6

    @property
    def per_event(self) -> float:
        return statistics.median(self.updates) / self.events

    def runs(self) -> str:
        return ", ".join(f"{self.events / s:.0f}" for s in self.seconds)


def rate_row(label: str, rates: Rates, cpu: bool) -> str:
    extra = f" {rates.cpu_us:9.0f}" if cpu else f" {'':9}"
    return (f"  {label:40} {rates.events:7d} {rates.per_event:6.2f} {rates.rate:9.0f}"
            f"{extra}   ({rates.runs()})")


RATE_HEAD = (f"  {'':40} {'events':>7} {'upd/ev':>6} {'events/s':>9} {'CPU us/ev':>9}   "
             "(each run's events/s; in process: per CPU second)")


def log(began: float, text: str) -> None:
    print(f"[{time.perf_counter() - began:5.0f} s] {text}", file=sys.stderr, flush=True)


# -- figure 1: the cost of views ----------------------------------------------------------
def figure_cost(vhost: str, work: Path, args: argparse.Namespace, began: float,
                ) -> list[Verdict]:
    plain, viewed = cost_streams(args.conversations, args.accounts)
    plain_lines, viewed_lines = as_lines(plain), as_lines(viewed)
    print(f"1. cost: the rich stream, {args.accounts} accounts of {AGENTS} agents, "
          f"{args.conversations} chats; with views: {SHARED} shared views per account and "
          f"{PERSONAL} personal per agent first ({len(viewed) - len(plain)} views events)")
    in_process = {"without views": Rates(len(plain)), "with views": Rates(len(viewed))}
    worker = {"without views": Rates(len(plain)), "with views": Rates(len(viewed))}
    streams = {"without views": (plain_lines, keys_of(plain)),
               "with views": (viewed_lines, keys_of(viewed))}
    for round_ in range(args.rounds):
        for label, (lines, keys) in streams.items():
            in_process[label].add(*replay(lines))
            spy = (work / f"{label.replace(' ', '-')}.txt"
                   if args.profile and round_ == args.rounds - 1 else None)
            result = attempt(vhost, label, partial(
                throughput, "worker", lines=lines, keys=keys, workdir=work, timeout=900,
                profile=spy))
            worker[label].add(result.seconds, result.updates, result.cpu_seconds)
        log(began, f"cost: round {round_ + 1} of {args.rounds}")
    print(RATE_HEAD)
    for label in streams:
        print(rate_row(f"worker, {label}", worker[label], cpu=True))
    for label in streams:
        print(rate_row(f"in process, {label}", in_process[label], cpu=False))
    value = worker["with views"].rate / worker["without views"].rate
    process = in_process["with views"].rate / in_process["without views"].rate
    cpu = worker["with views"].cpu_us / worker["without views"].cpu_us
    if args.profile:
        for label in streams:
            print((work / f"{label.replace(' ', '-')}.txt").read_text())
        print("cProfile of the in-process categoriser, with views:")
        print(profile(viewed_lines))
    return [Verdict("cost", value >= TARGETS["cost"],
                    f"worker events/s with views / without = {value:.2f} (target >= "
                    f"{TARGETS['cost']:.2f}; median of {args.rounds} interleaved rounds; "
                    f"worker CPU per event {cpu:.2f}x; in-process categoriser {process:.2f}x)")]


# -- figure 2: accounts without views -------------------------------------------------
def figure_unused(vhost: str, work: Path, args: argparse.Namespace, began: float,
                  ) -> list[Verdict]:
    before, now = describe(args.against), this_tree()
    old_tree = checkout(args.against, work / f"tree-{before}")  # a new directory
    variant = next(v for v in QUICK if v.name == DEFAULT)
    default = event_stream(profile=variant.fanout, agents=variant.agents,
                           conversations=variant.conversations)
    rich, _ = cost_streams(args.conversations, args.accounts)
    trees = {before: old_tree, now: REPO}
    for name, tree in trees.items():
        compare.PROGRAMS[f"worker@{name}"] = worker_at(tree)
    print(f"2. unused: the worker at {before} (before views) and at {now}, launched "
          f"alike, on the default stream ({DEFAULT}, {len(default)} events, no views)")
    lines, keys = as_lines(default), keys_of(default)
    files = {}
    for label, events in ((DEFAULT, default), ("rich/10, no views", rich)):
        path = work / f"{label.replace('/', '-').replace(' ', '').replace(',', '')}.jsonl"
        path.write_bytes(b"\n".join(as_lines(events)) + b"\n")
        files[label] = (path, len(events))
    worker = {name: Rates(len(default)) for name in trees}
    process = {(name, label): Rates(count) for name in trees
               for label, (_, count) in files.items()}
    for round_ in range(args.unused_rounds):
        order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
        for name in order:
            result = attempt(vhost, name, partial(
                throughput, f"worker@{name}", lines=lines, keys=keys, workdir=work,
                timeout=600))
            worker[name].add(result.seconds, result.updates, result.cpu_seconds)
            for label, (path, _) in files.items():
                process[(name, label)].add(*replay_at(trees[name], path))
        log(began, f"unused: round {round_ + 1} of {args.unused_rounds}")
    print(RATE_HEAD)
    for name in trees:
        print(rate_row(f"worker at {name}", worker[name], cpu=True))
    for label in files:
        for name in trees:
            print(rate_row(f"in process at {name}, {label}", process[(name, label)],
                           cpu=False))
    if args.instructions:
        empty = work / "empty.jsonl"
        empty.write_bytes(b"")
        counted = instructions(trees, files[DEFAULT][0], empty)
        print("  instructions per event on the driver (valgrind, median of 3 hash seeds; "
              "pipeline, categoriser, SQLite store, no broker): "
              + ", ".join(f"at {name} {counted[name] / len(default):,.0f}" for name in trees))
        log(began, "unused: instructions counted")
    value = worker[now].rate / worker[before].rate
    cpu = worker[now].cpu_us / worker[before].cpu_us
    notes = [f"{label} {process[(now, label)].rate / process[(before, label)].rate:.2f}x"
             for label in files]
    if args.instructions:
        notes.append(f"instructions per event on the driver {counted[now] / counted[before]:.3f}x")
    same = all(statistics.median(process[(now, label)].updates)
               == statistics.median(process[(before, label)].updates) for label in files)
    if not same:
        notes.append("WARNING: not the same updates in process")
    return [Verdict("unused", value >= TARGETS["unused"],
                    f"worker events/s at {now} / at {before} on {DEFAULT} = {value:.2f} "
                    f"(target >= {TARGETS['unused']:.2f}; median of {args.unused_rounds} "
                    f"interleaved rounds; worker CPU per event {cpu:.2f}x; in-process "
                    f"categoriser {', '.join(notes)})")]


# -- figure 3: memory over many view sets -------------------------------------------------
def _more_than(items: list[float], count: int) -> Callable[[], bool]:
    return lambda: len(items) > count


def sentinel_event(number: int) -> bytes:
    """A new chat joined by an agent in the sentinel account: exactly one update."""
    return json.dumps({"event_id": f"sentinel-{number}", "type": "conversation.assigned",
                       "account_id": SENTINEL_ACCOUNT, "conversation_id": f"c-{number}",
                       "occurred_at": "2026-11-24T23:59:59Z",
                       "data": {"agent_id": "ag-end"}}).encode()


def memory_run(broker: Bus, work: Path, blocks: Sequence[Sequence[Json]],
               points: Sequence[int], began: float, label: str,
               **settings: object) -> list[int]:
    """VmRSS (KiB) of one worker once it has handled the accounts of ``blocks`` up to
    each of ``points`` (a sentinel's update, published after them, has arrived)."""
    reset(broker)
    arrived: list[float] = []
    tag = broker.channel.basic_consume(
        SENTINEL_QUEUE, lambda _c, _m, _p, _b: arrived.append(time.perf_counter()),
        auto_ack=True)
    program = start("worker", broker, work, **settings)
    rows = []
    try:
        wait_until(lambda: broker.consumers() > 0, program, 120, "its consumer", broker)
        done = 0
        for number, point in enumerate(points):
            for block in blocks[done // MEMORY_BLOCK: point // MEMORY_BLOCK]:
                for event in block:
                    broker.send(str(event["type"]), json.dumps(event).encode())
            broker.send("conversation.assigned", sentinel_event(number))
            wait_until(_more_than(arrived, number), program, 900,
                       f"the sentinel after {point} accounts", broker, 0.05)
            broker.channel.queue_purge(SINK)
            done = point
            rows.append(program.status_kib("VmRSS"))
            log(began, f"memory, {label}: {point} accounts, VmRSS {rows[-1] / 1024:.1f} MiB")
    finally:
        stop("worker", program)
        broker.cancel(tag)
    return rows


def figure_memory(vhost: str, work: Path, args: argparse.Namespace, began: float,
                  ) -> list[Verdict]:
    blocks = memory_blocks(args.sets)
    plain = [[e for e in block if e["type"] != "account.views_updated"] for block in blocks]
    points = [p for p in MEMORY_POINTS if p < args.sets] + [args.sets]
    settings = {} if args.view_sets is None else {"view_sets": args.view_sets}
    bound = ("the worker's defaults" if args.view_sets is None
             else f"INBOX_RULES_VIEW_SETS={args.view_sets}, the other settings' defaults")
    print(f"3. memory: {args.sets} accounts, each with its own {SHARED} shared views, its "
          f"snapshot and a chat's first events ({sum(map(len, blocks))} events); {bound}; "
          "then the same accounts without their views")
    viewed = attempt(vhost, "memory", partial(memory_run, work=work, blocks=blocks,
                                              points=points, began=began, label="views",
                                              **settings))
    control = attempt(vhost, "memory", partial(memory_run, work=work, blocks=plain,
                                               points=points, began=began, label="no views",
                                               **settings))
    first = points.index(min(FIRST_SETS, args.sets))
    print(f"  {'accounts':>9} {'views: VmRSS MiB':>17} {'x first':>7} "
          f"{'no views: VmRSS MiB':>20} {'x first':>7}")
    for point, rss, plain_rss in zip(points, viewed, control, strict=True):
        print(f"  {point:9d} {rss / 1024:17.1f} {rss / viewed[first]:7.2f} "
              f"{plain_rss / 1024:20.1f} {plain_rss / control[first]:7.2f}")
    value = viewed[-1] / viewed[first]
    return [Verdict("memory", value <= TARGETS["memory"],
                    f"worker VmRSS after {args.sets} view sets / after {points[first]} = "
                    f"{viewed[-1] / 1024:.1f} / {viewed[first] / 1024:.1f} MiB = {value:.2f} "
                    f"(target <= {TARGETS['memory']:.2f}; the same accounts without views: "
                    f"{control[-1] / control[first]:.2f})")]


# -- figure 4: re-categorisation latency ----------------------------------------------------
CAUSE = re.compile(rb'"cause_event_id":"([^"]+)"')


def _reached(counts: dict[str, int], cause: str, count: int) -> Callable[[], bool]:
    return lambda: counts.get(cause, 0) >= count


def latency_run(kind: str, broker: Bus, work: Path, setup: Sequence[Json],
                changes: Sequence[tuple[str, Json]], expected: Sequence[int],
                account: str) -> list[float]:
    """Seconds from publishing each of ``changes`` to the last of its ``expected``
    outputs: the worker's updates (after ``setup``, every one handled), or the bare
    relay's copies of the event (as many as the worker's updates: the floor of
    publishing that many messages through this broker)."""
    reset(broker)
    program = start(kind, broker, work)
    seconds: list[float] = []
    tag = None
    try:
        wait_until(lambda: broker.consumers() > 0, program, 120, "its consumer", broker)
        if kind == "worker":
            for event in setup:
                broker.send(str(event["type"]), json.dumps(event).encode())
            wait_until(broker.drained, program, 900, "the setup events", broker, 0.5)
        queue = broker.channel.queue_declare("", exclusive=True).method.queue
        # The worker's updates of the account; the relay's copies keep the event's key.
        key = f"{account}.#" if kind == "worker" else "account.views_updated"
        broker.channel.queue_bind(queue, broker.topology.updates_exchange, key)
        counts: dict[str, int] = {}
        last: dict[str, float] = {}

        def on_output(_c: object, _m: object, _p: object, body: bytes) -> None:
            match = CAUSE.search(body) if kind == "worker" else None
            cause = match.group(1).decode() if match is not None else "relay"
            counts[cause] = counts.get(cause, 0) + 1
            last[cause] = time.perf_counter()

        tag = broker.channel.basic_consume(queue, on_output, auto_ack=True)
        for (label, event), count in zip(changes, expected, strict=True):
            cause = str(event["event_id"]) if kind == "worker" else "relay"
            counts.pop(cause, None)
            properties = pika.BasicProperties(delivery_mode=2, headers={COPIES: count})
            published = time.perf_counter()
            broker.send(str(event["type"]), json.dumps(event).encode(), properties)
            wait_until(_reached(counts, cause, count), program, 300,
                       f"the {count} outputs of {label}", broker, 0.001)
            seconds.append(last[cause] - published)
            broker.pump(0.2)  # more than expected would show now
            broker.channel.queue_purge(SINK)
            if counts.get(cause, 0) != count:
                raise compare.BenchError(f"{kind}, {label}: {counts.get(cause, 0)} outputs, "
                                         f"{count} expected")
    finally:
        stop(kind, program)
        if tag is not None:
            broker.cancel(tag)
    return seconds


def figure_latency(vhost: str, work: Path, args: argparse.Namespace, began: float,
                   ) -> list[Verdict]:
    setup = latency_setup()
    changes = latency_changes(setup, args.latency_rounds)
    inbox = Inbox(load_rules())
    for event in setup:
        inbox.handle(parse_event_object(event))
    account = str(setup[0]["account_id"])
    open_chats = sum(1 for c in inbox.accounts[account].conversations.values()
                     if c.status in ("open", "snoozed"))
    expected, in_process = [], []
    for _, event in changes:
        cause = str(event["event_id"])
        started = time.perf_counter()
        updates = inbox.handle(parse_event_object(event))
        in_process.append(time.perf_counter() - started)
        expected.append(sum(1 for u in updates if u.cause_event_id == cause))
    print(f"4. latency: one account of {LATENCY_AGENTS} agents, {open_chats} open or "
          f"snoozed chats ({len(setup)} events first); shared views events one at a time")
    worker = attempt(vhost, "latency", lambda b: latency_run(
        "worker", b, work, setup, changes, expected, account))
    log(began, "latency: the worker done")
    relay = attempt(vhost, "latency floor", lambda b: latency_run(
        "relay", b, work, setup, changes, expected, account))
    print(f"  {'views event':14} {'updates':>8} {'worker s':>9} {'in process s':>12} "
          f"{'relay s':>8}")
    for (label, _), count, worker_s, own, floor in zip(changes, expected, worker, in_process,
                                                        relay, strict=True):
        print(f"  {label:14} {count:8d} {worker_s:9.2f} {own:12.2f} {floor:8.2f}")
    value = statistics.median(worker)
    return [Verdict("latency", value <= TARGETS["latency"],
                    f"a shared views event on {open_chats} open chats and {LATENCY_AGENTS} "
                    f"agents: median {value:.2f} s from publishing it to its last update "
                    f"(worst {max(worker):.2f} s; {', '.join(map(str, expected))} updates; "
                    f"the bare relay publishing as many: median "
                    f"{statistics.median(relay):.2f} s; target <= {TARGETS['latency']:.1f} s)")]


# -- the run ----------------------------------------------------------------------------
Figure = Callable[[str, Path, argparse.Namespace, float], list[Verdict]]
RUNS: dict[str, Figure] = {"cost": figure_cost, "unused": figure_unused,
                           "memory": figure_memory, "latency": figure_latency}


def arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller streams and fewer rounds (about 2 minutes)")
    parser.add_argument("--only", default=",".join(FIGURES),
                        help=f"comma-separated figures of {', '.join(FIGURES)}")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds of figure 1 (default 3, --quick 1; "
                        "figure 2 runs four more)")
    parser.add_argument("--against", default=BEFORE_VIEWS,
                        help=f"figure 2's baseline commit (default {BEFORE_VIEWS}, the "
                        "commit before views)")
    parser.add_argument("--sets", type=int, default=None,
                        help="figure 3's view sets (default 10000, --quick 2000)")
    parser.add_argument("--view-sets", type=int, default=None,
                        help="figure 3: run the worker with INBOX_RULES_VIEW_SETS=N (default: "
                        "its default)")
    parser.add_argument("--instructions", action="store_true",
                        help="figure 2: also count the instructions per event of both "
                        "workers' drivers with valgrind (noise-free; about 3 minutes)")
    parser.add_argument("--profile", action="store_true",
                        help="figure 1: py-spy summaries of the worker's last round, and "
                        "a cProfile of the in-process categoriser with views")
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(args.only) - set(FIGURES)
    if unknown:
        parser.error(f"unknown figure(s): {', '.join(sorted(unknown))}")
    args.rounds = args.rounds or (1 if args.quick else 3)
    # Figure 2 looks for a few percent in a noise of tens: more rounds.
    args.unused_rounds = args.rounds + 4
    args.sets = args.sets or (2000 if args.quick else 10_000)
    args.conversations = 300 if args.quick else 600
    args.accounts = 3 if args.quick else 6
    args.latency_rounds = 1
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = arguments(argv)
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    verdicts: list[Verdict] = []
    with fresh_vhost("inbox-rules-views", patient=True) as vhost, \
            tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.only:
            directory = work / name
            directory.mkdir()
            verdicts += RUNS[name](vhost, directory, args, began)
            print(flush=True)
    command = " ".join(["python -m benchmarks.views", *(sys.argv[1:] if argv is None
                                                         else argv)])
    print(f"{command}: {time.perf_counter() - began:.0f} s; load average "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (2 cores)")
    for verdict in verdicts:
        print(verdict)


if __name__ == "__main__":
    main()
