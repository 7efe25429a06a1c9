"""The outbox as a part of the agent: opened at start, drained and closed at stop.

Producers inside the agent get it with `Wiring.part("outbox", OutboxPart).outbox`; the
uplink part is built after it and stops before it (the host stops parts in reverse).
"""

from __future__ import annotations

import logging
from typing import Any

from kommune.edge.agent.metrics import Labels, Metric, counter, gauge
from kommune.edge.agent.site import Site
from kommune.edge.northbound import Priority
from kommune.edge.outbox.budget import Quota
from kommune.edge.outbox.outbox import Outbox

log = logging.getLogger(__name__)

#: The database file in the agent's state directory.
DATABASE_NAME = "outbox.sqlite3"


class OutboxPart:
    name = "outbox"

    def __init__(self, site: Site) -> None:
        self.site = site
        self._outbox: Outbox | None = None

    @property
    def outbox(self) -> Outbox:
        """The open outbox (only between start and stop)."""
        if self._outbox is None:
            raise RuntimeError("the outbox part is not started")
        return self._outbox

    async def start(self) -> None:
        config = self.site.outbox
        quotas = {p: Quota(config.policy(p).max_rows, config.policy(p).max_age_s) for p in Priority}
        self._outbox = await Outbox.open(
            config.dir / DATABASE_NAME,
            agent=self.site.agent.id,
            budget_bytes=config.budget_bytes,
            quotas=quotas,
        )
        if self._outbox.kept_aside:
            log.error(
                "the outbox could not be read and was kept aside: %s", self._outbox.kept_aside
            )

    async def stop(self) -> None:
        outbox, self._outbox = self._outbox, None
        if outbox is not None:
            await outbox.aclose()

    def health(self) -> dict[str, Any]:
        if self._outbox is None:
            return {"open": False}
        depth = self._outbox.depth()
        return {
            "open": True,
            "queued": {p.name.lower(): n for p, n in depth.rows.items()},
            "disk_bytes": depth.disk_bytes,
            "budget_bytes": depth.budget_bytes,
        }

    def metrics(self) -> list[Metric]:
        if self._outbox is None:
            return []
        depth = self._outbox.depth()
        stats = self._outbox.stats
        by_class: dict[Labels, float] = {
            (("class", p.name.lower()),): float(n) for p, n in depth.rows.items()
        }
        in_flight: dict[Labels, float] = {
            (("class", p.name.lower()),): float(n) for p, n in depth.in_flight.items()
        }
        evicted: dict[Labels, float] = {
            (("class", p.name.lower()), ("reason", reason)): float(n)
            for (p, reason), n in stats.evicted.items()
        }
        metrics = [
            gauge("outbox_rows", "rows committed and not yet delivered", by_class),
            gauge("outbox_in_flight_rows", "rows handed to the uplink, not yet acked", in_flight),
            gauge("outbox_disk_bytes", "the outbox's files on disk", depth.disk_bytes),
            gauge("outbox_budget_bytes", "the outbox's disk budget", depth.budget_bytes),
            counter("outbox_appended_total", "events committed", stats.appended),
            counter("outbox_duplicates_total", "retransmissions recognised", stats.duplicates),
            counter("outbox_refused_total", "events pushed back (outbox full)", stats.refused),
            counter("outbox_acknowledged_total", "rows delivered and removed", stats.acknowledged),
            counter("outbox_commits_total", "transactions committed", stats.commits),
        ]
        if evicted:
            metrics.append(counter("outbox_evicted_total", "rows evicted unsent", evicted))
        return metrics
