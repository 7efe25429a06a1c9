"""What goes north from a node's message: the table that turns a decoded message into
outbox `Event`s, and the source sequence numbers that let the outbox recognise
retransmissions.

One message becomes one event per field worth reporting, each in a stream of its own
(`bay-17/occupancy`, `lamp-3/energy`, `node-3/uptime`): the outbox recognises a
retransmission by (stream, source_seq) and the event's content, so two events of one
frame must never share a stream. Messages that answer the edge (ConfigValue,
OtaStatus, CalibrationReport), ask it something (TimeRequest) or feed the lamp control
loop (Presence) do not go north: they are `LOCAL`.

Classes: parking occupancy is OCCUPANCY; everything else here is TELEMETRY, a lamp's
FailureReport included. AUDIT is for lock openings, which must never be evicted and
push their producers back instead; a lamp fault is a maintenance state the lamp reports
again on every change (and on `Request(FAILURE_REPORT)`), so losing an old one to
eviction after days without backhaul loses no fact the backend cannot get again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from kommune.edge.northbound import Event, Priority, Value
from kommune.protocols import lamp, ota, parking, runtime
from kommune.protocols.message import Message

#: source_seq = boot_count << 16 | frame seq: a node that reboots starts its frame seqs
#: at 0 again, and its Hello's boot_count keeps the new frames apart from the old ones.
SEQ_BITS: Final = 16
SEQ_MASK: Final = (1 << SEQ_BITS) - 1

LOG_LEVEL_NAMES: Final = {
    runtime.LOG_DEBUG: "debug",
    runtime.LOG_INFO: "info",
    runtime.LOG_WARNING: "warning",
    runtime.LOG_ERROR: "error",
    runtime.LOG_CRITICAL: "critical",
}


def source_seq(boot_count: int, frame_seq: int) -> int:
    """The outbox's source_seq of a node's frame: its boot count above its frame seq."""
    return boot_count << SEQ_BITS | (frame_seq & SEQ_MASK)


@dataclass(frozen=True, slots=True)
class Reading:
    """One event of a message: its stream's second part, SenML name and unit, and the
    value taken from the message."""

    stream: str
    name: str
    unit: str | None
    value: Callable[[Message], Value]
    priority: Priority = Priority.TELEMETRY


def _field(name: str, divisor: int = 1) -> Callable[[Message], Value]:
    """A message field as it is (divisor 1), or divided into its unit (mV -> V)."""
    if divisor == 1:
        return lambda msg: int(getattr(msg, name))
    return lambda msg: getattr(msg, name) / divisor


def _firmware(msg: Message) -> Value:
    assert isinstance(msg, runtime.Hello)
    return f"{msg.fw_major}.{msg.fw_minor}.{msg.fw_patch}"


def _log_text(msg: Message) -> Value:
    assert isinstance(msg, runtime.LogRecord)
    return bytes(msg.text).decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class Route:
    """How one message type goes north: the prefix of its streams ("bay", "lamp",
    "node") and its readings; no readings: it stays local."""

    prefix: str
    readings: tuple[Reading, ...]


LOCAL: Final = ()

#: message type -> how it goes north. A type not listed here is not taken from nodes
#: (edge -> node messages, Ack/Nack handled before).
TABLE: Final[dict[int, Route]] = {
    parking.OCCUPANCY: Route(
        "bay", (Reading("occupancy", "state", None, _field("state"), Priority.OCCUPANCY),)
    ),
    parking.HEARTBEAT: Route(
        "bay",
        (
            Reading("battery", "battery", "V", _field("battery_mv", 1000)),
            Reading("temp", "temp", "Cel", _field("temp_c_x10", 10)),
        ),
    ),
    parking.CALIBRATION_REPORT: Route("bay", LOCAL),
    lamp.ENERGY_REPORT: Route(
        "lamp",
        (
            Reading("energy", "energy", "Wh", _field("energy_wh")),
            Reading("power", "power", "W", _field("power_w_x10", 10)),
            Reading("burn-time", "burn_time", "h", _field("burn_hours")),
        ),
    ),
    lamp.FAILURE_REPORT: Route(
        "lamp",
        (
            Reading("faults", "faults", None, _field("faults")),
            Reading("driver-temp", "driver_temp", "Cel", _field("driver_temp_c_x10", 10)),
        ),
    ),
    lamp.PRESENCE: Route("lamp", LOCAL),  # for the lamp control loop, not the backend
    runtime.HELLO: Route(
        "node",
        (
            Reading("boot", "boot_count", None, _field("boot_count")),
            Reading("reset-cause", "reset_cause", None, _field("reset_cause")),
            Reading("firmware", "version", None, _firmware),
        ),
    ),
    runtime.STATUS: Route(
        "node",
        (
            Reading("uptime", "uptime", "s", _field("uptime_s")),
            Reading("heap-free", "heap_free", "B", _field("heap_free")),
            Reading("heap-min-free", "heap_min_free", "B", _field("heap_min_free")),
            Reading("supply", "supply", "V", _field("supply_mv", 1000)),
            Reading("temp", "temp", "Cel", _field("temp_c_x10", 10)),
            Reading("rx-bad", "rx_bad", None, _field("rx_bad")),
            Reading("tx-retries", "tx_retries", None, _field("tx_retries")),
        ),
    ),
    runtime.LOG: Route("node", (Reading("log", "info", None, _log_text),)),
    runtime.TIME_REQUEST: Route("node", LOCAL),  # answered by the link at once
    runtime.CONFIG_VALUE: Route("node", LOCAL),
    ota.OTA_STATUS: Route("node", LOCAL),  # an answer to the edge's OTA transfer
}

#: Message types only a lamp sends, and only a parking sensor.
LAMP_TYPES: Final = frozenset(t for t, m in TABLE.items() if m.prefix == "lamp")
BAY_TYPES: Final = frozenset(t for t, m in TABLE.items() if m.prefix == "bay")


def events_of(node: int, msg: Message, seq: int, time_ms: int) -> list[Event]:
    """The events `msg` from `node` sends north ([] for a local one), with source_seq
    `seq` (see source_seq()) and the receipt time."""
    route = TABLE[msg.TYPE]
    stream_base = f"{route.prefix}-{node}/"
    events = []
    for reading in route.readings:
        name = reading.name
        if isinstance(msg, runtime.LogRecord):
            name = LOG_LEVEL_NAMES.get(msg.level, "info")
        events.append(
            Event(
                stream_base + reading.stream,
                reading.priority,
                seq,
                time_ms,
                name,
                reading.value(msg),
                reading.unit,
            )
        )
    return events
