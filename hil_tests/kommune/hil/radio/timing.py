"""When a PDU crosses one LE connection: connection events, retransmission, supervision.

Pure arithmetic on the event loop's clock (seconds) and a seeded RNG, so the
model is checked without any radio.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Attempt:
    """How one PDU's transmission ends.

    delivered: True, it arrives at `at_s`; False, the link is lost at `at_s`
        (the supervision timer expired during its retries).
    """

    at_s: float
    retransmissions: int
    delivered: bool


class ConnectionEvents:
    """The connection events of one LE connection.

    Event k happens at `anchor_s + k * interval_s`. A PDU goes out at the first
    event after it was queued (aligned) or at once (not aligned: the ideal
    link). An unacknowledged PDU is resent at the next event until it gets
    through (Core Vol 6, Part B, 4.5.9), so loss costs whole intervals; when
    the failures span the supervision timeout the link is lost (4.5.2). A
    direction is in order: a PDU never overtakes the one before it.
    """

    def __init__(
        self,
        *,
        anchor_s: float,
        interval_s: float,
        supervision_timeout_s: float,
        aligned: bool,
        rng: random.Random,
    ) -> None:
        self.anchor_s = anchor_s
        self.interval_s = interval_s
        self.supervision_timeout_s = supervision_timeout_s
        self.aligned = aligned
        self._rng = rng

    def retime(
        self, *, now_s: float, interval_s: float, supervision_timeout_s: float, aligned: bool
    ) -> None:
        """New conditions from `now_s` on (the air changed, not the hosts)."""
        self.anchor_s = now_s
        self.interval_s = interval_s
        self.supervision_timeout_s = supervision_timeout_s
        self.aligned = aligned

    def first_event_at(self, t_s: float) -> float:
        """The first connection event at or after `t_s`."""
        if not self.aligned:
            return t_s
        # 1e-9: a PDU queued exactly at an event (float noise aside) makes that event.
        k = max(0, math.ceil((t_s - self.anchor_s) / self.interval_s - 1e-9))
        return self.anchor_s + k * self.interval_s

    def transmit(self, *, now_s: float, not_before_s: float, loss: float) -> Attempt:
        """Send one PDU queued at `now_s`, after the direction's previous PDU."""
        t_s = self.first_event_at(max(now_s, not_before_s))
        if loss >= 1.0:
            # Blackout: nothing gets through; no draws, so the seed's sequence
            # is the same whether or not a blackout happened on the way.
            tries = int(self.supervision_timeout_s / self.interval_s)
            return Attempt(t_s + self.supervision_timeout_s, tries, delivered=False)
        retransmissions = 0
        run_start_s: float | None = None
        while True:
            if self._rng.random() >= loss:
                return Attempt(t_s, retransmissions, delivered=True)
            if run_start_s is None:
                run_start_s = t_s
            retransmissions += 1
            t_s += self.interval_s
            if t_s >= run_start_s + self.supervision_timeout_s:
                return Attempt(
                    run_start_s + self.supervision_timeout_s, retransmissions, delivered=False
                )
