"""A built-in part: the agent's own pulse, i.e. how promptly its event loop answers.

Every part shares one event loop; a part that blocks it (a slow synchronous call, a
tight loop) delays every other. The heartbeat sleeps `interval_s` at a time and
measures how late it wakes: that lateness is the loop's lag, shown as gauges and logged
as a warning (at most once a minute) when it passes `warn_lag_s`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from kommune.edge.agent.logs import fields
from kommune.edge.agent.metrics import Metric, counter, gauge

log = logging.getLogger(__name__)

INTERVAL_S: Final = 1.0
WARN_LAG_S: Final = 0.25
WARN_EVERY_S: Final = 60.0


class Heartbeat:
    name = "heartbeat"

    def __init__(self, interval_s: float = INTERVAL_S, warn_lag_s: float = WARN_LAG_S) -> None:
        self.interval_s = interval_s
        self.warn_lag_s = warn_lag_s
        self.beats = 0
        self.lag_s = 0.0
        self.max_lag_s = 0.0
        self._stopped = asyncio.Event()
        self._warned_at: float | None = None

    async def start(self) -> None:
        self._stopped.clear()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopped.is_set():
            before = loop.time()
            try:
                async with asyncio.timeout(self.interval_s):
                    await self._stopped.wait()
            except TimeoutError:
                pass
            else:
                return
            lag = max(0.0, loop.time() - before - self.interval_s)
            self.beats += 1
            self.lag_s = lag
            self.max_lag_s = max(self.max_lag_s, lag)
            if lag >= self.warn_lag_s and (
                self._warned_at is None or loop.time() - self._warned_at >= WARN_EVERY_S
            ):
                self._warned_at = loop.time()
                log.warning(
                    "the event loop answered %.0f ms late: a part blocks it",
                    lag * 1000,
                    extra=fields(lag_ms=round(lag * 1000)),
                )

    async def stop(self) -> None:
        self._stopped.set()

    def health(self) -> dict[str, Any]:
        return {"loop_lag_ms": round(self.lag_s * 1000, 1), "beats": self.beats}

    def metrics(self) -> list[Metric]:
        return [
            counter("agent_heartbeats_total", "heartbeats of the agent's event loop", self.beats),
            gauge(
                "agent_loop_lag_seconds",
                "how late the event loop woke at the last beat",
                self.lag_s,
            ),
            gauge(
                "agent_loop_lag_max_seconds",
                "the largest event loop lag since the start",
                self.max_lag_s,
            ),
        ]
