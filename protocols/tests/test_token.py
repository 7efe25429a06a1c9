"""Access tokens: exact layout, round trips, totality, and that tampering never verifies."""

from __future__ import annotations

import hashlib
import hmac as std_hmac
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lock_strategies import keys, tokens, u32s

from kommune.protocols import token as T
from kommune.protocols.errors import (
    BAD_LENGTH,
    BAD_TAG,
    BAD_VALUE,
    EXPIRED,
    NO_RIGHT,
    NOT_YET_VALID,
    REVOKED,
    TRUNCATED,
    WRONG_LOCK,
    ProtocolError,
)
from kommune.protocols.hmac_sha256 import HmacKey
from kommune.protocols.lock_wire import RIGHT_ADMIN, RIGHT_READ_AUDIT, RIGHT_UNLOCK


def _signed(key: bytes, tok: T.Token) -> bytes:
    return T.sign(HmacKey(key), tok)


@given(tokens())
def test_decode_encode_round_trip(tok: T.Token) -> None:
    data = T.encode(tok)
    assert len(data) == T.TOKEN_BYTES
    assert T.decode(data) == tok


@given(keys, tokens(signed=False))
def test_layout_and_macs_match_lock_md(key: bytes, tok: T.Token) -> None:
    # Recomputed from the tables in LOCK.md with struct and the stdlib hmac.
    body = struct.pack(
        ">BIIIIIBI",
        1,
        tok.token_id,
        tok.holder_id,
        tok.lock_id,
        tok.not_before_s,
        tok.not_after_s,
        tok.rights,
        tok.epoch,
    )
    tag = std_hmac.new(key, b"TOK1" + body, hashlib.sha256).digest()[:16]
    assert _signed(key, tok) == body + tag
    signed = T.decode(body + tag)
    session = std_hmac.new(key, b"SES1" + struct.pack(">I", tok.token_id) + tag, hashlib.sha256)
    assert T.session_key(HmacKey(key), signed) == session.digest()


@given(st.binary(max_size=60))
def test_decode_is_total(data: bytes) -> None:
    try:
        tok = T.decode(data)
    except ProtocolError:
        return
    assert T.encode(tok) == data  # whatever decodes is canonical


@given(tokens())
def test_every_truncation_is_rejected(tok: T.Token) -> None:
    data = T.encode(tok)
    for n in range(len(data)):
        with pytest.raises(ProtocolError) as e:
            T.decode(data[:n])
        assert e.value.reason == TRUNCATED


@given(keys, tokens(signed=False), st.data())
def test_a_flipped_bit_never_verifies(key: bytes, tok: T.Token, data: st.DataObject) -> None:
    good = _signed(key, tok)
    bit = data.draw(st.integers(0, 8 * len(good) - 1))
    bad = bytearray(good)
    bad[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ProtocolError):
        T.authenticate(bytes(bad), HmacKey(key), tok.lock_id)


def test_every_single_bit_flip_fails_authentication() -> None:
    # Exhaustive for one token: 336 flips, none passes.
    key = bytes(range(32))
    tok = T.Token(
        token_id=7,
        holder_id=8,
        lock_id=9,
        not_before_s=100,
        not_after_s=200,
        rights=3,
        epoch=1,
    )
    good = _signed(key, tok)
    assert T.authenticate(good, HmacKey(key), 9) == T.decode(good)
    reasons = set()
    for bit in range(8 * len(good)):
        bad = bytearray(good)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(ProtocolError) as e:
            T.authenticate(bytes(bad), HmacKey(key), 9)
        reasons.add(e.value.reason)
    assert BAD_TAG in reasons and WRONG_LOCK in reasons


@given(keys, keys, tokens(signed=False))
def test_another_key_never_verifies(key: bytes, other: bytes, tok: T.Token) -> None:
    if key == other:
        return
    with pytest.raises(ProtocolError) as e:
        T.authenticate(_signed(key, tok), HmacKey(other), tok.lock_id)
    assert e.value.reason == BAD_TAG


@given(tokens(), u32s, u32s, st.integers(0, 600))
def test_authorize_window_with_skew(tok: T.Token, now: int, epoch: int, skew: int) -> None:
    inside = tok.not_before_s - skew <= now <= tok.not_after_s + skew
    expected = None
    if tok.epoch < epoch:
        expected = REVOKED
    elif now + skew < tok.not_before_s:
        expected = NOT_YET_VALID
    elif not inside:
        expected = EXPIRED
    try:
        T.authorize(tok, now, epoch, 0, skew)
    except ProtocolError as e:
        assert e.reason == expected
    else:
        assert expected is None


@given(tokens())
def test_authorize_needs_the_right(tok: T.Token) -> None:
    for right in (1, 2, 4, 8):
        t = T.Token(**{**tok.__dict__, "epoch": 0})
        if tok.rights & right:
            T.authorize(t, tok.not_before_s, 0, right, 0)
        else:
            with pytest.raises(ProtocolError) as e:
                T.authorize(t, tok.not_before_s, 0, right, 0)
            assert e.value.reason == NO_RIGHT


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"token_id": 2**32}, BAD_VALUE),
        ({"holder_id": -1}, BAD_VALUE),
        ({"epoch": 2**32}, BAD_VALUE),
        ({"rights": 0x10}, BAD_VALUE),
        ({"rights": 0}, BAD_VALUE),
        ({"lock_id": 0}, BAD_VALUE),
        ({"not_before_s": 5, "not_after_s": 4}, BAD_VALUE),
        ({"tag": b"\x00" * 15}, BAD_LENGTH),
        ({"tag": b"\x00" * 32}, BAD_LENGTH),
    ],
)
def test_encode_refuses_what_decode_would_refuse(change: dict[str, object], reason: str) -> None:
    fields: dict[str, object] = {
        "token_id": 1,
        "holder_id": 1,
        "lock_id": 1,
        "not_before_s": 0,
        "not_after_s": 10,
        "rights": 1,
        "epoch": 0,
        "tag": bytes(16),
    }
    fields.update(change)
    with pytest.raises(ProtocolError) as e:
        T.encode(T.Token(**fields))  # type: ignore[arg-type]
    assert e.value.reason == reason


def test_verify_checks_in_order() -> None:
    key = HmacKey(bytes(32))
    tok = T.Token(
        token_id=1, holder_id=2, lock_id=3, not_before_s=10, not_after_s=20, rights=1, epoch=5
    )
    data = T.sign(key, tok)
    assert T.verify(data, key, 3, now_s=15, epoch=5, right=RIGHT_UNLOCK) == T.decode(data)
    # Revocation outranks the clock: a revoked token is reported revoked, even when expired.
    with pytest.raises(ProtocolError, match=REVOKED):
        T.verify(data, key, 3, now_s=10_000, epoch=6, right=RIGHT_UNLOCK)
    with pytest.raises(ProtocolError, match=WRONG_LOCK):
        T.verify(data, HmacKey(bytes(range(32))), 4, now_s=15, epoch=5, right=RIGHT_UNLOCK)


def test_rights_text() -> None:
    assert T.rights_text(RIGHT_UNLOCK | RIGHT_READ_AUDIT) == "unlock,read-audit"
    assert T.rights_text(0x0F) == "unlock,lock,read-audit,admin"
    assert T.rights_text(RIGHT_ADMIN) == "admin"


def test_repr_names_the_fields_not_the_tag() -> None:
    tok = T.Token(
        token_id=1, holder_id=2, lock_id=3, not_before_s=4, not_after_s=5, rights=1, epoch=6
    )
    assert repr(tok) == "Token(id=1 holder=2 lock=3 window=4..5 rights=0x01 epoch=6)"
