"""The parking scanner: BLE adverts in, verified Occupancy events out to the outbox.

A bleak detection callback only parses the advert and queues (node, report); one task
verifies, records the seq durably (fsync'd) and then commits the events. A report
repeated within its burst is dropped before any MAC is computed. Refusals are counted
per reason and logged at most once per LOG_EVERY_S per reason (a forger on the air
must not flood the log).

    scanner = ParkingScanner(keys, state_dir, outbox.append)
    await scanner.start()          # scanning
    await scanner.run()            # until cancelled
    await scanner.stop()
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from kommune.edge.ble import select_backend
from kommune.edge.northbound import Event, Priority
from kommune.edge.outbox.errors import OutboxFull
from kommune.edge.parking.advert import parse_advert
from kommune.edge.parking.seqs import SeqStore
from kommune.edge.parking.verifier import ACCEPTED, REFUSED, Outcome, ReportVerifier
from kommune.protocols import parking_report

log = logging.getLogger(__name__)

#: The durable seqs, under the agent's state directory.
SEQS_NAME = "parking/seqs.json"
#: Reports waiting for the verifier; more are dropped (counted): bursts repeat them.
QUEUE_SIZE = 256
LOG_EVERY_S = 10.0

Append = Callable[[Sequence[Event]], Awaitable[Any]]


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def events_of(outcome: Outcome, time_ms: int) -> list[Event]:
    """What an accepted report sends north: a change (or a heartbeat that shows a change
    the edge missed) as the bay's new state and how long the previous state lasted."""
    report = outcome.report
    assert report is not None
    if report.heartbeat and outcome.previous_state == report.state:
        return []  # nothing new: the bay is as the edge knew it
    node = outcome.node
    events = [
        Event(
            f"bay-{node}/occupancy", Priority.OCCUPANCY, report.seq, time_ms, "state", report.state
        )
    ]
    if not report.heartbeat:
        events.append(
            Event(
                f"bay-{node}/prev-duration",
                Priority.OCCUPANCY,
                report.seq,
                time_ms,
                "prev_duration",
                report.duration_s,
                "s",
            )
        )
    return events


class ParkingScanner:
    name = "parking"

    def __init__(
        self,
        keys: Mapping[int, bytes],
        state_dir: Path,
        append: Append,
        *,
        transport: str | None = None,
        clock_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.seqs = SeqStore(state_dir / SEQS_NAME)
        self.verifier = ReportVerifier(keys, self.seqs)
        self._append = append
        self._transport = transport
        self._clock_ms = clock_ms
        self._queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue(QUEUE_SIZE)
        self._scanner: BleakScanner | None = None
        self._last_bytes: dict[int, bytes] = {}  # the report accepted last per bay
        self._logged: dict[str, float] = {}
        self.heard = 0
        self.dropped = 0
        self.committed = 0
        self.pushed_back = 0  # events the outbox refused (full)
        #: Every outcome but duplicates, newest last (tests and diagnostics read it).
        self.outcomes: list[Outcome] = []

    async def start(self) -> None:
        await asyncio.to_thread(self.seqs.load)
        backend = select_backend(self._transport)
        self._scanner = BleakScanner(
            detection_callback=self._on_advert,
            backend=backend.scanner,
            **backend.kwargs,
        )
        await self._scanner.start()
        log.info("parking scanner started for %d bays", len(self.verifier.bays))

    async def stop(self) -> None:
        scanner, self._scanner = self._scanner, None
        if scanner is not None:
            await scanner.stop()

    def _on_advert(self, _device: BLEDevice, adv: AdvertisementData) -> None:
        parsed = parse_advert(adv.manufacturer_data)
        if parsed is not None:
            self.offer(*parsed)

    def offer(self, node: int, report: bytes) -> None:
        """Queue one report heard on the air (from the callback; never blocks)."""
        self.heard += 1
        if self._last_bytes.get(node) == report:
            return  # the burst repeating what was accepted
        try:
            self._queue.put_nowait((node, report))
        except asyncio.QueueFull:
            self.dropped += 1

    async def run(self) -> None:
        while True:
            node, report = await self._queue.get()
            try:
                await self.handle(node, report)
            except OutboxFull as e:
                # Pushed back: this change is not committed; the bay's next heartbeat
                # shows it again (handle() kept the old state).
                self.pushed_back += 1
                self._log_once("outbox_full", "parking event not committed: %s", e)

    async def handle(self, node: int, data: bytes) -> Outcome:
        """Verify one report; if accepted, record its seq durably, then commit its events."""
        if self._last_bytes.get(node) == data:
            return Outcome("duplicate", node)
        outcome = self.verifier.check(node, data)
        if outcome.verdict == REFUSED:
            self._log_refusal(outcome)
        if outcome.verdict != "duplicate":
            self.outcomes.append(outcome)
            del self.outcomes[:-1000]
        if outcome.verdict != ACCEPTED:
            return outcome
        report = outcome.report
        assert report is not None
        previous = self.seqs.last(node)
        await asyncio.to_thread(self.seqs.commit, node, report.seq, report.state)
        self._last_bytes[node] = data
        events = events_of(outcome, self._clock_ms())
        if events:
            try:
                await self._append(events)
            except Exception:
                # Not committed: keep the seq (it was accepted) but not the state, so the
                # bay's next heartbeat shows the change again.
                old_state = parking_report.UNKNOWN if previous is None else previous[1]
                await asyncio.to_thread(self.seqs.commit, node, report.seq, old_state)
                raise
            self.committed += len(events)
        return outcome

    def _log_refusal(self, outcome: Outcome) -> None:
        self._log_once(
            outcome.reason,
            "parking report from node %d refused (%s); %d refused for this reason so far",
            outcome.node,
            outcome.reason,
            self.verifier.refused[outcome.reason],
        )

    def _log_once(self, kind: str, message: str, *args: object) -> None:
        # At most one warning per kind every LOG_EVERY_S (the counters keep the rest).
        now = time.monotonic()
        last = self._logged.get(kind)
        if last is not None and now - last < LOG_EVERY_S:
            return
        self._logged[kind] = now
        log.warning(message, *args)

    def health(self) -> dict[str, Any]:
        return {
            "bays": len(self.verifier.bays),
            "heard": self.heard,
            "accepted": self.verifier.accepted,
            "refused": dict(self.verifier.refused),
            "dropped": self.dropped,
            "pushed_back": self.pushed_back,
        }
