"""Hypothesis strategies for frames and messages, and wire helpers (shared by the tests)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from kommune.protocols import cobs, frame, lamp, ota, parking, runtime
from kommune.protocols.frame import MAX_GROUP, Frame
from kommune.protocols.message import BLOB, RAW, REGISTRY, TAIL, U16_LIST, Message

LAMP = [c for c in REGISTRY.values() if c.__module__ == lamp.__name__]
PARKING = [c for c in REGISTRY.values() if c.__module__ == parking.__name__]
RUNTIME = [c for c in REGISTRY.values() if c.__module__ in (runtime.__name__, ota.__name__)]


def _field(cls: type[Message], name: str, kind: int, lo: int, hi: int) -> st.SearchStrategy[Any]:
    if kind in (RAW, BLOB, TAIL):
        return st.binary(min_size=lo, max_size=hi)
    if kind == U16_LIST:
        element = st.integers(0, MAX_GROUP) if cls is runtime.Groups else st.integers(0, 0xFFFF)
        return st.lists(element, min_size=lo, max_size=hi)
    return st.integers(lo, hi)


def messages(cls: type[Message]) -> st.SearchStrategy[Message]:
    """Valid instances of cls: every field in range, cross-field rules kept."""
    fields = {name: _field(cls, name, kind, lo, hi) for name, kind, lo, hi in cls._LAYOUT}
    strategy = st.fixed_dictionaries(fields).map(lambda kw: cls(**kw))
    if cls in (parking.Calibrate, parking.CalibrationReport):
        strategy = strategy.filter(
            lambda m: m.free_below_ut_x10 <= m.occupied_above_ut_x10  # type: ignore[attr-defined]
        )
    return strategy


def any_message(classes: list[type[Message]]) -> st.SearchStrategy[Message]:
    return st.sampled_from(classes).flatmap(messages)


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    """Valid frames: any type and payload, routing rules kept."""
    dst = draw(st.integers(0, 0xFFFF))
    flags = draw(st.sampled_from([0, frame.FLAG_RETRY]))
    if frame.is_unicast(dst) and draw(st.booleans()):
        flags |= frame.FLAG_ACK_REQUESTED
    return Frame(
        draw(st.integers(0, 0xFF)),
        draw(st.binary(max_size=frame.MAX_PAYLOAD)),
        dst=dst,
        src=draw(st.integers(0, frame.GROUP_BASE - 1)),
        seq=draw(st.integers(0, 0xFFFF)),
        flags=flags,
    )


def raw_of(wire: bytes) -> bytes:
    """The raw frame (header, payload, CRC) inside wire bytes."""
    return cobs.decode(wire[:-1])


def wire_of(raw: bytes) -> bytes:
    """Wire bytes for a raw frame, whatever it holds (for building bad frames)."""
    return cobs.encode(raw) + b"\x00"
