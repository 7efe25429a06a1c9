"""What the air does to one pair of devices: timing, loss and signal strength.

A `LinkProfile` is plain data; the control channel carries it as a JSON object
whose keys are the field names. Every field is optional on the wire, so a test
can change one knob (`{"loss": 0.2}`) and keep the others.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from kommune.hil.errors import RigError

#: Weakest signal a receiver still decodes (a typical BLE 1M PHY receiver,
#: e.g. ESP32: about -97 dBm). A pair below it is out of range.
RX_SENSITIVITY_DBM = -95.0

#: Connection interval limits (Core Vol 6, Part B, 4.5.1: 7.5 ms to 4 s).
MIN_INTERVAL_MS = 7.5
MAX_INTERVAL_MS = 4000.0

#: Supervision timeout limits (Core Vol 6, Part B, 4.5.2: 100 ms to 32 s).
MIN_SUPERVISION_TIMEOUT_MS = 100.0
MAX_SUPERVISION_TIMEOUT_MS = 32000.0


class LinkProfileError(RigError, ValueError):
    """A link profile field is out of its range or unknown."""


@dataclass(frozen=True)
class LinkProfile:
    """The radio conditions between two devices.

    interval_ms: connection interval the air imposes on their connections. A PDU
        waits for the next connection event, so each hop costs up to one
        interval. None: an ideal link, PDUs are delivered at once (retries,
        if `loss` asks for them, then use the interval the hosts negotiated).
    loss: probability that one connection event's exchange fails. The link
        layer retransmits at the next event, so loss shows up as latency; a
        run of failures longer than the supervision timeout drops the link.
        1.0 is a blackout: every connection drops after its supervision timeout.
    rssi_dbm: signal strength each side reports for the other (advertising
        reports). Below `RX_SENSITIVITY_DBM` the pair is out of range: no
        advertisements, no new connections, and live ones time out.
    supervision_timeout_ms: override for the negotiated supervision timeout.
    """

    interval_ms: float | None = None
    loss: float = 0.0
    rssi_dbm: float = -50.0
    supervision_timeout_ms: float | None = None

    def __post_init__(self) -> None:
        if self.interval_ms is not None and not (
            MIN_INTERVAL_MS <= self.interval_ms <= MAX_INTERVAL_MS
        ):
            raise LinkProfileError(
                f"interval_ms {self.interval_ms} outside {MIN_INTERVAL_MS}..{MAX_INTERVAL_MS}"
            )
        if not 0.0 <= self.loss <= 1.0:
            raise LinkProfileError(f"loss {self.loss} outside 0..1")
        if not -127.0 <= self.rssi_dbm <= 20.0:
            raise LinkProfileError(f"rssi_dbm {self.rssi_dbm} outside -127..20")
        if self.supervision_timeout_ms is not None and not (
            MIN_SUPERVISION_TIMEOUT_MS <= self.supervision_timeout_ms <= MAX_SUPERVISION_TIMEOUT_MS
        ):
            raise LinkProfileError(
                f"supervision_timeout_ms {self.supervision_timeout_ms} outside "
                f"{MIN_SUPERVISION_TIMEOUT_MS}..{MAX_SUPERVISION_TIMEOUT_MS}"
            )

    @property
    def in_range(self) -> bool:
        return self.rssi_dbm >= RX_SENSITIVITY_DBM

    @property
    def effective_loss(self) -> float:
        """Loss as the link layer sees it: out of range loses everything."""
        return self.loss if self.in_range else 1.0

    def updated(self, changes: dict[str, Any]) -> LinkProfile:
        """A copy with `changes` applied (wire keys); unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise LinkProfileError(f"unknown link profile field(s): {', '.join(unknown)}")
        typed: dict[str, float | None] = {}
        for key, value in changes.items():
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise LinkProfileError(f"{key} must be a number, not {value!r}")
            if value is None and key in ("loss", "rssi_dbm"):
                raise LinkProfileError(f"{key} cannot be null")
            typed[key] = None if value is None else float(value)
        return dataclasses.replace(self, **typed)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, float | None]:
        return dataclasses.asdict(self)
