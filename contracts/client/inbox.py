"""One agent's inbox kept from snapshots and updates: the bookkeeping, without I/O.

:class:`InboxKeeper` takes snapshot pages (:meth:`~InboxKeeper.load_snapshot`) and
updates (:meth:`~InboxKeeper.apply`) in the order they arrive and says what it did with
each; :class:`Inbox` is a frozen picture of it. The rules (docs/downstream.md):

- a snapshot is the baseline; updates that arrive while none is in hand are kept and
  applied after it, in ``seq`` order (those at or below its ``seq`` are in it already);
- an update applies only if its ``seq`` is exactly the next one; a repeated
  ``update_id`` is a redelivery, an older ``seq`` is stale;
- a jump in ``seq`` is a :class:`Gap` and an update under another ``rules_version``
  than the inbox's is :class:`NewRules`: both mean "ask for a new snapshot", and the
  update waits for it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from contracts.requests import SnapshotReply
from contracts.updates import CategoryUpdate

# update_ids remembered to drop redeliveries: a redelivered update comes back soon
# after the original (a worker's unacknowledged batch), never thousands of updates late.
DEFAULT_DUPLICATE_WINDOW = 4096
# Updates held while a snapshot is awaited. Dropping the oldest beyond this is safe: a
# dropped update the snapshot does not cover shows up as a gap, and a gap resyncs.
DEFAULT_BUFFER_LIMIT = 100_000


# -- what happened to one update --------------------------------------------------------
@dataclass(frozen=True)
class Applied:
    """The update was the next one: the inbox now shows it."""

    update: CategoryUpdate


@dataclass(frozen=True)
class Duplicate:
    """The same ``update_id`` was applied recently (a redelivery): nothing to do."""

    update_id: str
    seq: int


@dataclass(frozen=True)
class Stale:
    """``seq`` is not above the inbox's: the snapshot or an earlier update has it."""

    seq: int
    current: int


@dataclass(frozen=True)
class Gap:
    """``seq`` jumped past ``expected``: updates were missed. The update is NOT applied
    (it is kept for after the snapshot); ask for a new snapshot."""

    expected: int
    got: int


@dataclass(frozen=True)
class NewRules:
    """The update was decided under ``rules_version``, not the inbox's ``current``: ask
    for a new snapshot. A next ``seq`` is kept for after it; an older one means the
    worker numbered updates again under other rules (it restarted between publishing
    and storing them), so the updates applied since the snapshot may be wrong."""

    rules_version: str
    current: str
    seq: int


@dataclass(frozen=True)
class Buffered:
    """No snapshot in hand yet (starting, or resyncing): kept for after it."""

    seq: int


Result = Applied | Duplicate | Stale | Gap | NewRules | Buffered


@dataclass(frozen=True)
class Loaded:
    """What one snapshot page did. ``next_after`` not None: ask for the next page with
    ``after`` = it. Once ``complete``, ``results`` are the kept updates applied after
    the snapshot; a :class:`Gap` or :class:`NewRules` among them means: ask for a
    snapshot again."""

    complete: bool
    next_after: str | None
    results: tuple[Result, ...] = ()

    @property
    def resync_needed(self) -> bool:
        return any(isinstance(result, Gap | NewRules) for result in self.results)


@dataclass(frozen=True)
class Inbox:
    """One agent's inbox as of ``seq``: a frozen picture, safe to keep and to read on
    any thread.

    ``conversations`` maps each conversation in some category of the agent (only those
    the filter keeps, if there is one) to its categories; ``unread`` holds those of them
    that are unread for the agent. ``counts`` and ``unread_counts`` are per category over
    the whole inbox, whatever the filter: every category the worker publishes, its
    rules' own, ``all``, ``new``, ``mine``, ``primary``, ``resolved`` or an account's
    ``view:<view_id>``, whichever of them the rules define. ``synced`` is false while a
    snapshot is awaited (what is shown is the last exact state); ``snapshots`` counts
    the snapshots loaded.
    """

    account_id: str
    agent_id: str
    seq: int
    rules_version: str
    counts: Mapping[str, int]
    unread_counts: Mapping[str, int]
    conversations: Mapping[str, frozenset[str]]
    unread: frozenset[str]
    synced: bool
    snapshots: int


@dataclass(frozen=True)
class _Page:
    after: str | None
    reply: SnapshotReply


# -- the bookkeeping --------------------------------------------------------------------
class InboxKeeper:
    """One agent's inbox as a downstream service keeps it: no I/O, no threads, so it
    can be tested (and put behind any transport) without a broker.

    ``categories`` (optional) keeps only the conversations in at least one of them, like
    the snapshot request's filter of the same name; counts always cover the whole inbox.
    """

    def __init__(self, account_id: str, agent_id: str, *,
                 categories: Iterable[str] | None = None,
                 duplicate_window: int = DEFAULT_DUPLICATE_WINDOW,
                 buffer_limit: int = DEFAULT_BUFFER_LIMIT) -> None:
        self.account_id = account_id
        self.agent_id = agent_id
        self.filter: frozenset[str] | None = frozenset(categories) if categories else None
        self.seq = 0
        self.rules_version = ""
        self.counts: dict[str, int] = {}
        self.unread_counts: dict[str, int] = {}
        self.snapshots = 0
        self._conversations: dict[str, frozenset[str]] = {}
        self._unread: set[str] = set()
        self._synced = False
        self._pages: list[_Page] = []
        self._buffer: deque[CategoryUpdate] = deque(maxlen=buffer_limit)
        self._recent: deque[str] = deque()
        self._recent_ids: set[str] = set()
        self._window = duplicate_window
        self._baseline = 0  # the seq the last snapshot started from
        self._resynced_for: str | None = None  # the rules version that last resynced
        # Pages taken at different seqs (SnapshotReply): until ``seq`` reaches the
        # newest page, an update applies to a conversation only above its page's seq.
        self._page_bounds: list[str] = []  # next_after of every page but the last
        self._page_seqs: list[int] = []
        self._counts_seq = 0  # counts are those of this seq (the newest page, or later)
        self._picture: Inbox | None = None

    # -- reading --------------------------------------------------------------------
    @property
    def synced(self) -> bool:
        """A complete snapshot is in hand and no resync is pending."""
        return self._synced

    @property
    def conversations(self) -> Mapping[str, frozenset[str]]:
        """Conversation id -> its categories (only non-empty sets are kept)."""
        return self._conversations

    @property
    def unread(self) -> frozenset[str]:
        """The conversations kept that are unread for the agent."""
        return frozenset(self._unread)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def picture(self) -> Inbox:
        """The inbox as it is, frozen (built again only after a change)."""
        if self._picture is None:
            self._picture = Inbox(
                self.account_id, self.agent_id, self.seq, self.rules_version,
                MappingProxyType(dict(self.counts)), MappingProxyType(dict(self.unread_counts)),
                MappingProxyType(dict(self._conversations)), frozenset(self._unread),
                self._synced, self.snapshots)
        return self._picture

    # -- writing --------------------------------------------------------------------
    def reset(self) -> None:
        """Forget being in sync (the queue was lost, so updates may have been): the next
        updates are kept until a new snapshot is loaded. What is shown stays."""
        self._synced = False
        self._pages = []
        self._buffer.clear()
        self._picture = None

    def load_snapshot(self, reply: SnapshotReply, after: str | None = None) -> Loaded:
        """Take one snapshot page: ``after`` is what the request for it said (None for
        the first page, which also drops any half-loaded snapshot).

        Nothing changes until the last page: then the pages replace the inbox, and the
        kept updates are applied in ``seq`` order.
        """
        self._check_owner(reply.account_id, reply.agent_id)
        if after is None:
            self._pages = []
        elif not self._pages or self._pages[-1].reply.next_after != after:
            expected = self._pages[-1].reply.next_after if self._pages else None
            raise ValueError(f"snapshot page after {after!r} does not follow the pages "
                             f"loaded so far (expected after={expected!r})")
        self._pages.append(_Page(after, reply))
        if reply.next_after is not None:
            return Loaded(False, reply.next_after)
        self._install(self._pages)
        self._pages = []
        return Loaded(True, None, self._drain())

    def apply(self, update: CategoryUpdate) -> Result:
        """Apply ``update`` if it is the next one; say what was done with it."""
        self._check_owner(update.account_id, update.agent_id)
        if not self._synced:
            self._buffer.append(update)
            return Buffered(update.seq)
        return self._apply_synced(update)

    # -- inside ---------------------------------------------------------------------
    def _check_owner(self, account_id: str, agent_id: str) -> None:
        if (account_id, agent_id) != (self.account_id, self.agent_id):
            raise ValueError(f"{account_id}.{agent_id} is not this inbox's agent "
                             f"({self.account_id}.{self.agent_id})")

    def _keep(self, categories: Iterable[str]) -> frozenset[str] | None:
        """The categories to store for a conversation, None to not store it."""
        cats = frozenset(categories)
        if not cats or (self.filter is not None and not cats & self.filter):
            return None
        return cats

    def _install(self, pages: list[_Page]) -> None:
        conversations: dict[str, frozenset[str]] = {}
        unread: set[str] = set()
        for page in pages:
            marked = set(page.reply.unread)
            for cid, cats in page.reply.conversations.items():
                kept = self._keep(cats)
                if kept is not None:
                    conversations[cid] = kept
                    if cid in marked:
                        unread.add(cid)
        # The newest page (the last of equal seqs) gives counts and rules version.
        newest = max(reversed(pages), key=lambda page: page.reply.seq).reply
        self._conversations, self._unread = conversations, unread
        self.counts = dict(newest.counts)
        self.unread_counts = dict(newest.unread_counts)
        self.rules_version = newest.rules_version
        self._counts_seq = newest.seq
        # From the oldest page on, every update is needed; each page ignores those at
        # or below its own seq (they are in it already).
        self.seq = self._baseline = min(page.reply.seq for page in pages)
        self._page_seqs = [page.reply.seq for page in pages]
        self._page_bounds = [page.reply.next_after for page in pages[:-1]
                             if page.reply.next_after is not None]
        self._forget_pages_once_past()
        self._synced = True
        self.snapshots += 1
        self._picture = None

    def _drain(self) -> tuple[Result, ...]:
        pending = sorted(self._buffer, key=lambda update: update.seq)
        self._buffer.clear()
        results: list[Result] = []
        for index, update in enumerate(pending):
            result = self._apply_synced(update)
            results.append(result)
            if isinstance(result, Gap | NewRules):  # kept, with what follows, for later
                self._buffer.extend(pending[index + 1:])
                break
        return tuple(results)

    def _apply_synced(self, update: CategoryUpdate) -> Result:
        if update.update_id in self._recent_ids:
            return Duplicate(update.update_id, update.seq)
        other_rules = update.rules_version not in (self.rules_version, self._resynced_for)
        if update.seq <= self.seq:
            if other_rules and update.seq > self._baseline:
                # A number applied here since the snapshot came again under other
                # rules: only a new snapshot is exact now.
                return self._resync(NewRules(update.rules_version, self.rules_version,
                                             update.seq), None)
            return Stale(update.seq, self.seq)
        if update.seq > self.seq + 1:
            return self._resync(Gap(self.seq + 1, update.seq), update)
        if other_rules:
            # Once per version in a row: the snapshot it asks for may still name the
            # old rules, and the update is then applied after it rather than asked
            # about again.
            self._resynced_for = update.rules_version
            return self._resync(NewRules(update.rules_version, self.rules_version,
                                         update.seq), update)
        self._take(update)
        return Applied(update)

    def _resync(self, result: Gap | NewRules, keep: CategoryUpdate | None) -> Result:
        self._synced = False
        self._picture = None
        if keep is not None:
            self._buffer.append(keep)
        return result

    def _take(self, update: CategoryUpdate) -> None:
        if not self._page_seqs or update.seq > self._page_seq(update.conversation_id):
            kept = self._keep(update.categories)
            if kept is None:
                self._conversations.pop(update.conversation_id, None)
            else:
                self._conversations[update.conversation_id] = kept
            if kept is not None and update.unread:
                self._unread.add(update.conversation_id)
            else:
                self._unread.discard(update.conversation_id)
        if update.seq > self._counts_seq:
            self.counts = dict(update.counts)
            self.unread_counts = dict(update.unread_counts)
            self.rules_version = update.rules_version
            self._counts_seq = update.seq
        self.seq = update.seq
        self._remember(update.update_id)
        self._forget_pages_once_past()
        self._picture = None

    def _page_seq(self, conversation_id: str) -> int:
        """The seq of the page whose id range (after, next_after] holds the id."""
        return self._page_seqs[bisect_left(self._page_bounds, conversation_id)]

    def _forget_pages_once_past(self) -> None:
        if self._page_seqs and self.seq >= max(self._page_seqs):
            self._page_seqs, self._page_bounds = [], []

    def _remember(self, update_id: str) -> None:
        self._recent.append(update_id)
        self._recent_ids.add(update_id)
        if len(self._recent) > self._window:
            self._recent_ids.discard(self._recent.popleft())
