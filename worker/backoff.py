"""Bounded exponential backoff with jitter, for reconnects and store retries."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, cap: float, base: float = 0.25) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): grows, capped, jittered.

    The jitter (50-100 % of the step) keeps several workers from retrying in lockstep.
    """
    step: float = min(cap, base * 2.0 ** max(0, min(attempt - 1, 30)))
    return step * random.uniform(0.5, 1.0)
