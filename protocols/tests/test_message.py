"""The table-driven message codec and the type registry, checked for every node-link message.

Per message class: decode(encode(m)) == m; any bytes decode or raise
ProtocolError; whatever decodes re-encodes to the very same bytes (one
canonical encoding: nothing padded, nothing cut); fixed-size payloads reject
every truncation and extension.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wire_strategies import LAMP, PARKING, RUNTIME, any_message, messages

from kommune.protocols import lamp, message, runtime
from kommune.protocols.errors import ProtocolError
from kommune.protocols.frame import EDGE, FLAG_ACK_REQUESTED, MAX_PAYLOAD, Frame
from kommune.protocols.message import BLOB, RAW, TAIL, U16_LIST, Message

ALL = LAMP + PARKING + RUNTIME
IDS = [c.__name__ for c in ALL]
REASONS = {"truncated", "too_long", "bad_length", "bad_value"}


def is_fixed_size(cls: type[Message]) -> bool:
    return all(kind not in (BLOB, TAIL, U16_LIST) for _, kind, _, _ in cls._LAYOUT)


def max_size(cls: type[Message]) -> int:
    sizes = {RAW: 0, BLOB: 1, TAIL: 0, U16_LIST: 0}
    total = 0
    for _, kind, _, hi in cls._LAYOUT:
        if kind in sizes:
            total += sizes[kind] + (2 * hi if kind == U16_LIST else hi)
        else:
            total += abs(kind)
    return total


def decode_or_reason(cls: type[Message], data: bytes) -> Message | str:
    try:
        return cls.from_bytes(data)
    except ProtocolError as e:
        assert e.reason in REASONS, e
        return e.reason


@pytest.mark.parametrize("cls", ALL, ids=IDS)
@given(data=st.data())
def test_round_trip(cls: type[Message], data: st.DataObject) -> None:
    m = data.draw(messages(cls))
    wire = m.to_bytes()
    assert len(wire) == m.encoded_size() <= MAX_PAYLOAD
    assert cls.from_bytes(wire) == m


@pytest.mark.parametrize("cls", ALL, ids=IDS)
@given(junk=st.binary(max_size=MAX_PAYLOAD + 8))
def test_any_bytes_decode_canonically_or_raise(cls: type[Message], junk: bytes) -> None:
    got = decode_or_reason(cls, junk)
    if isinstance(got, Message):
        assert got.to_bytes() == junk


@pytest.mark.parametrize("cls", ALL, ids=IDS)
@given(data=st.data())
def test_truncations_and_bit_flips(cls: type[Message], data: st.DataObject) -> None:
    wire = data.draw(messages(cls)).to_bytes()
    cut = data.draw(st.integers(0, max(len(wire) - 1, 0)))
    flipped = bytearray(wire)
    if wire:
        bit = data.draw(st.integers(0, 8 * len(wire) - 1))
        flipped[bit // 8] ^= 1 << (bit % 8)
    for variant in (
        wire[:cut],
        bytes(flipped),
        wire + data.draw(st.binary(min_size=1, max_size=4)),
    ):
        got = decode_or_reason(cls, variant)
        if isinstance(got, Message):
            assert got.to_bytes() == variant
    if is_fixed_size(cls):
        assert decode_or_reason(cls, wire[:cut]) == "truncated" or wire == wire[:cut]
        assert decode_or_reason(cls, wire + b"\x00") == "too_long"


@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_largest_payload_fits_a_frame(cls: type[Message]) -> None:
    assert max_size(cls) <= MAX_PAYLOAD


@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_encoder_refuses_out_of_range_fields(cls: type[Message]) -> None:
    for name, kind, lo, hi in cls._LAYOUT:
        for bad in [hi + 1, lo - 1] if kind < RAW else [None]:
            m = cls()
            if bad is None:  # bytes/list one element too long
                value: object = [0] * (hi + 1) if kind == U16_LIST else bytes(hi + 1)
            else:
                value = bad
            setattr(m, name, value)
            with pytest.raises(ProtocolError) as e:
                m.to_bytes()
            assert e.value.reason in ("bad_value", "bad_length"), name


@given(any_message(ALL), st.integers(1, 0xEFFF), st.integers(0, 0xFFFF))
def test_messages_travel_in_frames(m: Message, dst: int, seq: int) -> None:
    wire = message.encode_frame(m, dst=dst, seq=seq, flags=FLAG_ACK_REQUESTED)
    f = Frame.from_bytes(wire)
    assert (f.msg_type, f.dst, f.src, f.seq) == (m.TYPE, dst, EDGE, seq)
    assert message.decode_frame(f) == m
    buf = bytearray(300)
    n = message.encode_frame_into(buf, m, dst=dst, seq=seq, flags=FLAG_ACK_REQUESTED)
    assert bytes(buf[:n]) == wire


def test_type_numbers_live_in_their_ranges() -> None:
    for classes, lo, hi in ((RUNTIME, 0x01, 0x1F), (LAMP, 0x20, 0x3F), (PARKING, 0x40, 0x5F)):
        assert classes
        for cls in classes:
            assert lo <= cls.TYPE <= hi, cls
            assert message.message_class(cls.TYPE) is cls
    names = [c.__name__ for c in message.REGISTRY.values()]
    assert len(names) == len(set(names))


def test_a_type_number_is_registered_once() -> None:
    class Clash(Message):
        TYPE = lamp.SET_LEVEL

    with pytest.raises(ValueError, match="taken"):
        message.register(Clash)
    assert message.REGISTRY[lamp.SET_LEVEL] is lamp.SetLevel


def test_unknown_types_raise_unknown_type() -> None:
    f = Frame(0x7F, b"", dst=1)
    with pytest.raises(ProtocolError, match="unknown_type"):
        message.decode_frame(f)
    with pytest.raises(ProtocolError, match="unknown_type"):
        message.MessagePool([lamp.SetLevel]).decode(Frame(runtime.ACK, b"\x00\x01", dst=1))


def test_pool_refills_one_instance_per_type() -> None:
    pool = message.MessagePool()
    a = pool.decode(Frame.from_bytes(message.encode_frame(lamp.SetLevel(level=9), dst=1, seq=1)))
    b = pool.decode(Frame.from_bytes(message.encode_frame(lamp.SetLevel(level=7), dst=1, seq=2)))
    assert a is b and isinstance(b, lamp.SetLevel) and b.level == 7


def test_pool_reports_bad_payloads() -> None:
    # A pooled message may hold partial fields after an error; the error is what counts.
    pool = message.MessagePool([lamp.SetLevel])
    with pytest.raises(ProtocolError, match="truncated"):
        pool.decode(Frame(lamp.SET_LEVEL, b"\x05", dst=1))


def test_repr_and_equality() -> None:
    a = lamp.SetLevel(level=1, fade_ms=2)
    assert repr(a) == "SetLevel(level=1, fade_ms=2)"
    assert a == lamp.SetLevel(level=1, fade_ms=2)
    assert a != lamp.SetLevel(level=1, fade_ms=3)
    assert a != lamp.RecallScene(scene=1, fade_ms=2)
    assert a.fields() == {"level": 1, "fade_ms": 2}


def test_every_message_type_has_a_valid_and_an_invalid_golden_vector() -> None:
    from kommune.hil.paths import VECTORS_DIR

    valid: set[int] = set()
    invalid: set[int] = set()
    for name in ("lamp", "parking", "runtime"):
        doc = json.loads((VECTORS_DIR / f"{name}.json").read_text())
        for case in doc["cases"]:
            if case.get("hex"):
                (invalid if "error" in case else valid).add(int(case["hex"][:2], 16))
    types = {c.TYPE for c in ALL}
    assert types <= valid
    assert types <= invalid
