"""The bookkeeping of ``inbox-rules watch``: one agent's inbox, pure and without I/O.

A snapshot is the baseline; an update applies only if its ``seq`` is exactly the next
one; a repeated ``update_id`` is a duplicate, an older ``seq`` is stale, a jump in
``seq`` is a gap (updates were missed: ask for a snapshot again). Updates that arrive
while no snapshot is in hand are buffered and applied after it, in ``seq`` order.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from contracts.requests import SnapshotReply
from contracts.updates import CategoryUpdate

# update_ids remembered to drop redeliveries: a redelivered update comes back soon
# after the original (a worker's unacknowledged batch), never thousands of updates late.
DEFAULT_DUPLICATE_WINDOW = 4096
# Updates held while a snapshot is awaited. Dropping the oldest beyond this is safe: a
# dropped update the snapshot does not cover shows up as a gap, and a gap resyncs.
DEFAULT_BUFFER_LIMIT = 100_000
PRIMARY_TAB = "primary"


# -- what happened to one update --------------------------------------------------------
@dataclass(frozen=True)
class Applied:
    """The update was the next one: the view now shows it."""

    update: CategoryUpdate


@dataclass(frozen=True)
class Duplicate:
    """The same ``update_id`` was applied recently (a redelivery): nothing to do."""

    update_id: str
    seq: int


@dataclass(frozen=True)
class Stale:
    """``seq`` is not above the view's: the snapshot or an earlier update has it."""

    seq: int
    current: int


@dataclass(frozen=True)
class Gap:
    """``seq`` jumped past ``expected``: updates were missed. The update is NOT applied
    (it is kept for after the snapshot); ask for a new snapshot."""

    expected: int
    got: int


@dataclass(frozen=True)
class Buffered:
    """No snapshot in hand yet (starting, or resyncing): kept for after it."""

    seq: int


Result = Applied | Duplicate | Stale | Gap | Buffered


@dataclass(frozen=True)
class Loaded:
    """What one snapshot page did. ``next_after`` not None: ask for the next page with
    ``after`` = it. Once ``complete``, ``results`` are the buffered updates applied
    after the snapshot; a :class:`Gap` among them means: ask for a snapshot again."""

    complete: bool
    next_after: str | None
    results: tuple[Result, ...] = ()

    @property
    def resync_needed(self) -> bool:
        return any(isinstance(result, Gap) for result in self.results)


@dataclass(frozen=True)
class _Page:
    after: str | None
    reply: SnapshotReply


# -- the view ---------------------------------------------------------------------------
class InboxView:
    """One agent's inbox as a downstream service keeps it: no I/O, so it can be tested
    (and reused behind any transport) without a broker or a terminal.

    Feed it snapshot pages (:meth:`load_snapshot`) and updates (:meth:`apply`) in the
    order they arrive; each call says what it did. ``categories`` (optional) keeps only
    the conversations in at least one of them, like the request filter of the same
    name; badge counts always cover the whole inbox.
    """

    def __init__(self, account_id: str, agent_id: str, *,
                 categories: Iterable[str] | None = None,
                 duplicate_window: int = DEFAULT_DUPLICATE_WINDOW,
                 buffer_limit: int = DEFAULT_BUFFER_LIMIT) -> None:
        self.account_id = account_id
        self.agent_id = agent_id
        self.filter: tuple[str, ...] | None = tuple(categories) if categories else None
        self.seq = 0
        self.rules_version = ""
        self.counts: dict[str, int] = {}
        self.unread_counts: dict[str, int] = {}
        self._conversations: dict[str, tuple[str, ...]] = {}
        self._unread: set[str] = set()
        self._synced = False
        self._pages: list[_Page] = []
        self._buffer: deque[CategoryUpdate] = deque(maxlen=buffer_limit)
        self._recent: deque[str] = deque()
        self._recent_ids: set[str] = set()
        self._window = duplicate_window
        # Pages taken at different seqs (SnapshotReply): until ``seq`` reaches the
        # newest page, an update applies to a conversation only above its page's seq.
        self._page_bounds: list[str] = []  # next_after of every page but the last
        self._page_seqs: list[int] = []
        self._counts_seq = 0  # counts are those of this seq (the newest page, or later)

    # -- reading --------------------------------------------------------------------
    @property
    def synced(self) -> bool:
        """A complete snapshot is in hand and no gap is pending."""
        return self._synced

    @property
    def conversations(self) -> Mapping[str, tuple[str, ...]]:
        """Conversation id -> its sorted categories (only non-empty sets are kept)."""
        return self._conversations

    @property
    def unread(self) -> frozenset[str]:
        """The conversations kept that are unread for the agent."""
        return frozenset(self._unread)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def tabs(self) -> list[str]:
        """The categories the rules publish, in their order: the keys of the counts."""
        return list(self.counts)

    def in_tab(self, tab: str) -> list[str]:
        """The conversations in category ``tab``, by id."""
        return sorted(cid for cid, cats in self._conversations.items() if tab in cats)

    def default_tab(self) -> str | None:
        """The tab to show first: the first filtered category, else ``primary``, else
        the first one the rules publish."""
        if self.filter:
            return self.filter[0]
        tabs = self.tabs
        if PRIMARY_TAB in tabs:
            return PRIMARY_TAB
        return tabs[0] if tabs else None

    # -- writing --------------------------------------------------------------------
    def reset(self) -> None:
        """Forget being in sync (the queue was lost, so updates may have been): the next
        updates are buffered until a new snapshot is loaded. What is shown stays."""
        self._synced = False
        self._pages = []
        self._buffer.clear()

    def load_snapshot(self, reply: SnapshotReply, after: str | None = None) -> Loaded:
        """Take one snapshot page: ``after`` is what the request for it said (None for
        the first page, which also drops any half-loaded snapshot).

        Nothing changes until the last page: then the pages replace the inbox, and the
        buffered updates are applied in ``seq`` order.
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
            raise ValueError(f"{account_id}.{agent_id} is not this view's agent "
                             f"({self.account_id}.{self.agent_id})")

    def _keep(self, categories: Iterable[str]) -> tuple[str, ...] | None:
        """The categories to store for a conversation, None to not store it."""
        cats = tuple(categories)
        if not cats or (self.filter is not None and not set(cats) & set(self.filter)):
            return None
        return cats

    def _install(self, pages: list[_Page]) -> None:
        conversations: dict[str, tuple[str, ...]] = {}
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
        self.seq = min(page.reply.seq for page in pages)
        self._page_seqs = [page.reply.seq for page in pages]
        self._page_bounds = [page.reply.next_after for page in pages[:-1]
                             if page.reply.next_after is not None]
        self._forget_pages_once_past()
        self._synced = True

    def _drain(self) -> tuple[Result, ...]:
        pending = sorted(self._buffer, key=lambda update: update.seq)
        self._buffer.clear()
        results: list[Result] = []
        for index, update in enumerate(pending):
            result = self._apply_synced(update)
            results.append(result)
            if isinstance(result, Gap):  # kept (with what follows) for the next snapshot
                self._buffer.extend(pending[index + 1:])
                break
        return tuple(results)

    def _apply_synced(self, update: CategoryUpdate) -> Result:
        if update.update_id in self._recent_ids:
            return Duplicate(update.update_id, update.seq)
        if update.seq <= self.seq:
            if update.rules_version != self.rules_version:
                # A number we hold came again under other rules: the worker crashed
                # between publishing and committing and restarted with new rule files,
                # so it numbered those updates again. Only a snapshot is exact now.
                self._synced = False
                self._buffer.append(update)
                return Gap(self.seq + 1, update.seq)
            return Stale(update.seq, self.seq)
        if update.seq > self.seq + 1:
            self._synced = False
            self._buffer.append(update)
            return Gap(self.seq + 1, update.seq)
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
        return Applied(update)

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
