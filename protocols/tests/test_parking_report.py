"""The authenticated parking report: 8 bytes, tag under a per-node key, total decoder."""

from __future__ import annotations

import hmac
import json
import sys
from hashlib import sha256

from hypothesis import given
from hypothesis import strategies as st

from kommune.hil.paths import VECTORS_DIR
from kommune.protocols import parking_report as pr
from kommune.protocols.errors import ProtocolError
from kommune.protocols.hmac_sha256 import HmacKey

KEY = bytes(range(0x40, 0x60))
NODE = 301

reports = st.builds(
    pr.Report,
    state=st.integers(pr.FREE, pr.UNKNOWN),
    seq=st.integers(0, pr.MAX_SEQ),
    duration_s=st.integers(0, 10**8).map(lambda s: pr.code_duration_s(pr.duration_code(s))),
    heartbeat=st.booleans(),
)


def test_vectors_are_what_their_generator_computes() -> None:
    sys.path.insert(0, str(VECTORS_DIR))
    import gen_parking_report_vectors as gen

    expected = json.loads(json.dumps(gen.document()))
    assert json.loads((VECTORS_DIR / "parking_report.json").read_text()) == expected


def test_a_report_is_eight_bytes_and_its_tag_is_hmac_sha256() -> None:
    wire = pr.encode(HmacKey(KEY), NODE, pr.Report(state=pr.OCCUPIED, seq=5, duration_s=60))
    assert len(wire) == pr.REPORT_BYTES == 8
    mac = hmac.new(KEY, pr.CONTEXT + NODE.to_bytes(2, "big") + wire[:4], sha256).digest()
    assert wire[4:] == mac[:4]
    assert wire[:4] == bytes([0x40, 0x00, 0x05, 0x2E])  # occupied, seq 5, 60 s = code 0x2e


@given(reports)
def test_verify_gives_back_what_was_encoded(report: pr.Report) -> None:
    key = HmacKey(KEY)
    assert pr.verify(key, NODE, pr.encode(key, NODE, report)) == report


@given(st.binary(max_size=12))
def test_any_bytes_verify_or_raise_protocol_error(data: bytes) -> None:
    try:
        pr.verify(HmacKey(KEY), NODE, data)
    except ProtocolError as e:
        assert e.reason in {"truncated", "too_long", "bad_tag", "bad_value"}
    try:
        pr.decode(data)
    except ProtocolError as e:
        assert e.reason in {"truncated", "too_long", "bad_value"}


@given(reports, st.integers(0, 63))
def test_every_single_bit_flip_is_refused(report: pr.Report, bit: int) -> None:
    key = HmacKey(KEY)
    wire = bytearray(pr.encode(key, NODE, report))
    wire[bit // 8] ^= 1 << (bit % 8)
    try:
        pr.verify(key, NODE, bytes(wire))
    except ProtocolError as e:
        assert e.reason == "bad_tag"
    else:
        raise AssertionError("a flipped bit verified")


@given(st.integers(0, 10**9))
def test_duration_code_rounds_down_within_a_sixteenth(seconds: int) -> None:
    code = pr.duration_code(seconds)
    back = pr.code_duration_s(code)
    assert 0 <= code <= 0xFF
    assert back <= seconds
    if seconds <= pr.MAX_CODED_S:
        assert seconds - back <= max(0, seconds // 16)
    else:
        assert code == 0xFF
