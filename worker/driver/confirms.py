"""The confirm window: which publish numbers the broker has confirmed.

The link numbers every publish (1, 2, ... on each connection); the broker confirms
them one at a time or "everything up to n", not necessarily in order. A batch may be
committed once the number of its last message is confirmed, and no more messages are
published while :attr:`ConfirmWindow.published` is a window ahead of the confirms.

Ticks and adoptions are published aside: their confirms concern no batch, and a refused
one is counted as done. After a failure, refusals of what was published before it
concern discarded batches only (:meth:`ConfirmWindow.discard`).
"""

from __future__ import annotations

from enum import Enum


class Confirm(Enum):
    """What a confirm means for the batches."""

    CONFIRMED = "confirmed"  # the window may have moved: batches may commit
    REFUSED = "refused"  # a publish of a batch in flight was refused: they fail
    STALE = "stale"  # refused, but of a discarded batch: nothing to do


class ConfirmWindow:
    """Publish numbers confirmed: all up to :attr:`confirmed`, and some beyond."""

    def __init__(self) -> None:
        self.confirmed = 0
        self.ahead: set[int] = set()
        self.published = 0
        self.stale_upto = 0  # confirms up to here belong to discarded batches
        self.aside: set[int] = set()  # publish numbers of ticks and adoptions in flight

    def reset(self) -> None:
        """A new connection: its publish numbers start again at 1."""
        self.confirmed = self.published = self.stale_upto = 0
        self.ahead.clear()

    def sent(self, sequence: int) -> None:
        """A batch's message went out as ``sequence``."""
        self.published = sequence

    def sent_aside(self, sequence: int) -> None:
        """A tick or an adoption went out as ``sequence``: its confirm concerns no batch."""
        self.published = sequence
        self.aside.add(sequence)

    def open(self, window: int) -> bool:
        """Room for one more publish: fewer than ``window`` wait for their confirm."""
        return self.published - self.confirmed < window

    def covers(self, sequence: int) -> bool:
        """Every publish up to ``sequence`` is confirmed."""
        return sequence <= self.confirmed

    def discard(self) -> None:
        """Everything published so far belongs to discarded batches."""
        self.stale_upto = self.published

    def on_confirm(self, sequence: int, multiple: bool, ok: bool) -> Confirm:
        """The broker confirmed (``ok``) or refused ``sequence``, or everything up to
        it (``multiple``)."""
        aside = self.aside
        if not ok and not multiple and sequence in aside:
            ok = True  # a refused tick concerns no batch: counted as done
        if not ok:
            return Confirm.REFUSED if sequence > self.stale_upto else Confirm.STALE
        if aside:
            if multiple:
                aside.difference_update([t for t in aside if t <= sequence])
            else:
                aside.discard(sequence)
        if multiple:
            self.confirmed = max(self.confirmed, sequence)
        elif sequence == self.confirmed + 1:
            self.confirmed = sequence
        else:
            self.ahead.add(sequence)
        ahead = self.ahead
        while ahead and (self.confirmed + 1) in ahead:
            self.confirmed += 1
            ahead.discard(self.confirmed)
        if ahead and min(ahead) <= self.confirmed:
            self.ahead = {s for s in ahead if s > self.confirmed}
        return Confirm.CONFIRMED
