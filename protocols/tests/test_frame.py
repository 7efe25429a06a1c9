"""Node-link framing: CRC, COBS and the frame codec (exact bytes, totality, round trips)."""

from __future__ import annotations

import binascii

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wire_strategies import frames, raw_of, wire_of

from kommune.protocols import cobs, frame
from kommune.protocols.crc16 import crc16
from kommune.protocols.errors import ProtocolError
from kommune.protocols.frame import Frame

unicast = st.integers(0, frame.GROUP_BASE - 1)
any_address = st.integers(0, 0xFFFF)


# CRC-16/CCITT-FALSE


@given(st.binary(max_size=300))
def test_crc16_matches_the_standard_library(data: bytes) -> None:
    # binascii.crc_hqx is the same polynomial, unreflected; init 0xFFFF makes it CCITT-FALSE
    assert crc16(data) == binascii.crc_hqx(data, 0xFFFF)


@given(st.binary(max_size=100), st.binary(max_size=100))
def test_crc16_continues_across_chunks_and_ranges(a: bytes, b: bytes) -> None:
    assert crc16(b, crc=crc16(a)) == crc16(a + b)
    assert crc16(b"xx" + a + b"yy", 2, 2 + len(a)) == crc16(a)


# COBS


@given(st.binary(max_size=cobs.MAX_DATA))
def test_cobs_round_trip_removes_every_zero(data: bytes) -> None:
    enc = cobs.encode(data)
    assert 0 not in enc
    assert len(enc) == len(data) + 1  # never more: no 0xFF blocks below 254 bytes
    assert cobs.decode(enc) == data


@given(st.binary(max_size=cobs.MAX_DATA))
def test_cobs_in_place_agrees_with_the_copying_functions(data: bytes) -> None:
    buf = bytearray(b"\xee" + data + b"\xee")
    n = cobs.encode_in_place(buf, len(data))
    assert bytes(buf[:n]) == cobs.encode(data)
    k = cobs.decode_in_place(buf, 0, n)
    assert bytes(buf[1 : 1 + k]) == data


@given(st.binary(max_size=300))
def test_cobs_decode_is_total(data: bytes) -> None:
    try:
        out = cobs.decode(data)
    except ProtocolError as e:
        assert e.reason in ("truncated", "too_long", "bad_encoding")
    else:
        assert cobs.encode(out) == data  # only canonical encodings are accepted


def test_cobs_rejects_packets_beyond_its_limit() -> None:
    with pytest.raises(ProtocolError, match="too_long"):
        cobs.encode(bytes(cobs.MAX_DATA + 1))
    with pytest.raises(ProtocolError, match="too_long"):
        cobs.decode(b"\x01" * (cobs.MAX_ENCODED + 1))


# Frames: exact layout


def test_header_layout_is_as_documented() -> None:
    wire = Frame(0x20, b"\xc8\x05\xdc", dst=0x0012, src=0x0345, seq=0x0607, flags=1).to_bytes()
    raw = raw_of(wire)
    assert wire[-1] == 0 and 0 not in wire[:-1]
    assert raw[:10] == bytes([1, 1, 0x03, 0x45, 0x00, 0x12, 0x06, 0x07, 0x20, 3])
    assert raw[10:13] == b"\xc8\x05\xdc"
    assert raw[13:] == crc16(raw[:13]).to_bytes(2, "big")


def test_a_set_level_frame_is_17_bytes_on_the_wire() -> None:
    wire = Frame(0x20, bytes(3), dst=1, seq=1).to_bytes()
    assert len(wire) == frame.HEADER_SIZE + 3 + frame.CRC_SIZE + 2  # + COBS code + delimiter


def test_largest_frame_fits_max_wire() -> None:
    wire = Frame(0x0C, bytes(frame.MAX_PAYLOAD), dst=1).to_bytes()
    assert len(wire) == frame.MAX_WIRE == 254


# Frames: round trip and rejection


@given(frames())
def test_frame_round_trip(f: Frame) -> None:
    wire = f.to_bytes()
    assert Frame.from_bytes(wire) == f
    assert Frame.from_bytes(wire[:-1]) == f  # the delimiter is optional
    assert len(wire) == frame.MIN_RAW + len(f.payload()) + 2


@given(frames())
def test_decoded_frame_re_encodes_to_the_same_bytes(f: Frame) -> None:
    wire = f.to_bytes()
    again = Frame.from_bytes(wire)
    assert again.to_bytes() == wire
    assert again.copy() == again and again.copy().payload_buf is not again.payload_buf


@given(st.binary(max_size=400))
def test_frame_decode_is_total(data: bytes) -> None:
    try:
        f = Frame.from_bytes(data)
    except ProtocolError as e:
        assert e.reason in (
            "truncated",
            "too_long",
            "bad_encoding",
            "bad_crc",
            "bad_version",
            "bad_length",
            "bad_value",
        )
    else:
        assert f.to_bytes().rstrip(b"\x00") == data.rstrip(b"\x00")


@given(frames(), st.data())
def test_truncated_frames_are_rejected(f: Frame, data: st.DataObject) -> None:
    wire = f.to_bytes()[:-1]
    cut = data.draw(st.integers(0, len(wire) - 1))
    with pytest.raises(ProtocolError):
        Frame.from_bytes(wire[:cut])


@given(frames(), st.data())
def test_every_burst_error_up_to_16_bits_is_caught_by_the_crc(
    f: Frame, data: st.DataObject
) -> None:
    raw = bytearray(raw_of(f.to_bytes()))
    nbits = 8 * len(raw)
    length = data.draw(st.integers(1, 16))
    start = data.draw(st.integers(0, nbits - length))
    pattern = data.draw(st.integers(0, (1 << length) - 1)) | 1 | (1 << (length - 1))
    for i in range(length):
        if pattern >> i & 1:
            bit = start + i
            raw[bit // 8] ^= 0x80 >> (bit % 8)
    with pytest.raises(ProtocolError, match="bad_crc"):
        Frame.from_bytes(wire_of(bytes(raw)))


@given(frames(), st.data())
def test_bit_flips_on_the_wire_never_crash(f: Frame, data: st.DataObject) -> None:
    wire = bytearray(f.to_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        bit = data.draw(st.integers(0, 8 * len(wire) - 1))
        wire[bit // 8] ^= 0x80 >> (bit % 8)
    try:
        Frame.from_bytes(bytes(wire))
    except ProtocolError:
        pass


def test_payload_over_240_bytes_is_refused_both_ways() -> None:
    with pytest.raises(ProtocolError, match="too_long"):
        Frame(0x0C, bytes(frame.MAX_PAYLOAD + 1), dst=1).to_bytes()
    raw = bytes([1, 0, 0, 0, 0, 1, 0, 0, 0x0C, 241]) + bytes(241)
    raw += crc16(raw).to_bytes(2, "big")
    with pytest.raises(ProtocolError, match="too_long"):
        Frame.from_bytes(wire_of(raw))


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"src": frame.group_address(1)}, "bad_value"),
        ({"src": frame.BROADCAST}, "bad_value"),
        ({"dst": frame.BROADCAST, "flags": frame.FLAG_ACK_REQUESTED}, "bad_value"),
        ({"dst": frame.group_address(7), "flags": frame.FLAG_ACK_REQUESTED}, "bad_value"),
        ({"flags": 0x04}, "bad_value"),
        ({"flags": 0x100}, "bad_value"),
        ({"seq": 0x10000}, "bad_value"),
        ({"seq": -1}, "bad_value"),
        ({"dst": 0x10000}, "bad_value"),
    ],
)
def test_encoder_refuses_headers_the_decoder_would_reject(
    kwargs: dict[str, int], reason: str
) -> None:
    args = {"dst": 1, "src": 0, "seq": 0, "flags": 0, **kwargs}
    with pytest.raises(ProtocolError) as e:
        Frame(0x20, b"\x01\x00\x00", **args).to_bytes()
    assert e.value.reason == reason


def test_other_versions_are_recognised_after_the_crc() -> None:
    wire = Frame(0x20, b"\x01\x00\x00", dst=1, version=2).to_bytes()
    with pytest.raises(ProtocolError, match="bad_version"):
        Frame.from_bytes(wire)
    raw = bytearray(raw_of(wire))
    raw[-1] ^= 1  # a damaged frame counts as damaged, not as another version
    with pytest.raises(ProtocolError, match="bad_crc"):
        Frame.from_bytes(wire_of(bytes(raw)))


def test_decode_in_place_reuses_one_frame_and_points_into_the_buffer() -> None:
    f = Frame()
    for payload in (b"\x01\x02", b"", b"\x00" * 5):
        wire = Frame(0x30, payload, dst=9, seq=3).to_bytes()
        buf = bytearray(wire[:-1])
        assert f.decode_in_place(buf, 0, len(buf)) is f
        assert f.payload_buf is buf
        assert bytes(buf[f.payload_start : f.payload_end]) == payload


# Addressing


def test_address_space() -> None:
    assert frame.is_unicast(frame.EDGE) and frame.is_unicast(frame.UNASSIGNED)
    assert not frame.is_unicast(frame.GROUP_BASE) and not frame.is_unicast(frame.BROADCAST)
    assert frame.group_address(0) == 0xF000 and frame.group_address(4094) == 0xFFFE
    assert frame.is_group(0xFFFE) and not frame.is_group(frame.BROADCAST)
    assert frame.group_of(0xF00A) == 10 and frame.group_of(0x0010) == -1
    with pytest.raises(ProtocolError, match="bad_value"):
        frame.group_address(frame.MAX_GROUP + 1)


@given(any_address, unicast, st.lists(st.integers(0, frame.MAX_GROUP), max_size=8))
def test_accepts_matches_the_addressing_rules(dst: int, me: int, groups: list[int]) -> None:
    expected = dst in (me, frame.BROADCAST) or (
        frame.is_group(dst) and frame.group_of(dst) in groups
    )
    assert frame.accepts(dst, me, groups) is expected
