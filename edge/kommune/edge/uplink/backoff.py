"""How long the uplink waits before it tries the broker again: exponential, jittered.

The n-th wait in a row (n = 0, 1, 2, ...) is drawn uniformly from [d/2, d] with
d = min(max_s, initial_s * 2**n): it doubles until it reaches the cap, never exceeds
it, and never falls below half of it, so a thousand agents that lost one broker at
the same moment do not all come back in the same instant, and none hammers it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """The first wait's upper bound and the cap, in seconds."""

    initial_s: float = 0.5
    max_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError(f"back-off needs 0 < initial_s ({self.initial_s}) <= max_s")


class Backoff:
    """Successive waits under one policy; `reset()` after a connection that worked."""

    def __init__(self, policy: BackoffPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self._rng = rng if rng is not None else random.Random()
        self.attempt = 0

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the wait after `attempt` failures in a row."""
        p = self.policy
        if attempt >= 64:  # 2**64 * anything positive is past any cap
            return p.max_s
        return min(p.max_s, p.initial_s * 2.0**attempt)

    def next_delay(self) -> float:
        """The next wait, in seconds; each call counts one more failure."""
        d = self.ceiling(self.attempt)
        self.attempt += 1
        return self._rng.uniform(d / 2, d)

    def reset(self) -> None:
        self.attempt = 0
