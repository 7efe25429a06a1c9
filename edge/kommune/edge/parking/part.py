"""The parking scanner as a part of the agent (`[parking]` in the site file): the bays
are those of the site's `[[streets]]`, their keys come from `[parking] keys`, events go
to the outbox part's outbox, the durable seqs to the agent's state directory."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kommune.edge.agent.metrics import Labels, Metric, counter, gauge
from kommune.edge.agent.outbox_part import OutboxPart
from kommune.edge.agent.process import PartError
from kommune.edge.agent.site import Site
from kommune.edge.northbound import Event
from kommune.edge.parking.keyfile import KeyFileError, load_keys
from kommune.edge.parking.scanner import ParkingScanner


class ParkingPart:
    name = "parking"

    def __init__(self, site: Site, outbox: OutboxPart) -> None:
        assert site.parking is not None
        self.site = site
        self.config = site.parking
        self._outbox = outbox
        self.bays = tuple(sorted({bay for street in site.streets for bay in street.bays}))
        self.scanner: ParkingScanner | None = None

    async def _append(self, events: Sequence[Event]) -> list[int | None]:
        return await self._outbox.outbox.append(events)

    async def start(self) -> None:
        try:
            keys = load_keys(self.config.keys)
        except KeyFileError as e:
            raise PartError(f"parking.keys: {e}") from e
        missing = [bay for bay in self.bays if bay not in keys]
        if missing:
            raise PartError(
                f"parking.keys: {self.config.keys}: no key for bay(s) "
                f"{', '.join(map(str, missing))}"
            )
        scanner = ParkingScanner(
            {bay: keys[bay] for bay in self.bays},
            self.site.outbox.dir,
            self._append,
            transport=self.config.transport,
        )
        try:
            await scanner.start()
        except ValueError as e:  # a damaged seqs file: never accept old reports again
            raise PartError(f"parking: {scanner.seqs.path}: {e}") from e
        self.scanner = scanner

    async def run(self) -> None:
        if self.scanner is None:
            raise PartError("the parking part is not started")
        await self.scanner.run()

    async def stop(self) -> None:
        scanner, self.scanner = self.scanner, None
        if scanner is not None:
            await scanner.stop()

    def health(self) -> dict[str, Any]:
        return {"started": False} if self.scanner is None else self.scanner.health()

    def metrics(self) -> list[Metric]:
        s = self.scanner
        if s is None:
            return []
        refused: dict[Labels, float] = {
            (("reason", reason),): float(n) for reason, n in s.verifier.refused.items()
        }
        metrics = [
            gauge("parking_bays", "bays the scanner takes reports from", len(s.verifier.bays)),
            counter("parking_reports_heard_total", "parking adverts heard", s.heard),
            counter("parking_reports_accepted_total", "reports accepted", s.verifier.accepted),
            counter("parking_events_committed_total", "events committed", s.committed),
            counter("parking_reports_dropped_total", "reports dropped (queue full)", s.dropped),
            counter("parking_events_pushed_back_total", "events the outbox refused", s.pushed_back),
        ]
        if refused:
            metrics.append(counter("parking_reports_refused_total", "reports refused", refused))
        return metrics
