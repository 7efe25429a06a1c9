"""Access tokens: the sealed layout, round trips, totality, confidentiality, and
that tampering never verifies."""

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
    BAD_VERSION,
    EXPIRED,
    NO_RIGHT,
    NOT_YET_VALID,
    REVOKED,
    TRUNCATED,
    WRONG_LOCK,
    ProtocolError,
)
from kommune.protocols.lock_wire import RIGHT_ADMIN, RIGHT_READ_AUDIT, RIGHT_UNLOCK
from kommune.protocols.seal import SealKey


def _sealed(key: bytes, tok: T.Token) -> bytes:
    return T.seal_token(SealKey(key), tok)


def _hmac(key: bytes, *parts: bytes) -> bytes:
    return std_hmac.new(key, b"".join(parts), hashlib.sha256).digest()


@given(tokens())
def test_body_round_trip(tok: T.Token) -> None:
    body = T.encode_body(tok)
    assert len(body) == T.BODY_BYTES == 25
    assert T.decode_body(body) == tok


@given(keys, tokens())
def test_layout_and_seal_match_lock_md(key: bytes, tok: T.Token) -> None:
    # Recomputed from LOCK.md with struct and the stdlib hmac: SIV on HMAC-SHA-256.
    body = struct.pack(
        ">IIIIIBI",
        tok.token_id,
        tok.holder_id,
        tok.lock_id,
        tok.not_before_s,
        tok.not_after_s,
        tok.rights,
        tok.epoch,
    )
    tag = _hmac(key, b"TOK2", b"\x02", body)[:16]
    stream = _hmac(_hmac(key, b"ENC2"), tag, struct.pack(">I", 0))
    sealed = bytes(b ^ k for b, k in zip(body, stream, strict=False))
    assert _sealed(key, tok) == b"\x02" + tag + sealed
    opened = T.authenticate(b"\x02" + tag + sealed, SealKey(key), tok.lock_id)
    assert opened == T.Token(**{**tok.__dict__, "tag": tag})
    session = _hmac(key, b"SES2", struct.pack(">I", tok.token_id), tag)
    assert T.session_key(SealKey(key), opened) == session


@given(keys, st.binary(max_size=60), u32s)
def test_authenticate_is_total(key: bytes, data: bytes, lock_id: int) -> None:
    try:
        T.authenticate(data, SealKey(key), lock_id)
    except ProtocolError:
        return
    raise AssertionError("random bytes opened as a token")


@given(keys, tokens())
def test_every_truncation_is_rejected(key: bytes, tok: T.Token) -> None:
    data = _sealed(key, tok)
    for n in range(len(data)):
        with pytest.raises(ProtocolError) as e:
            T.authenticate(data[:n], SealKey(key), tok.lock_id)
        assert e.value.reason == TRUNCATED


@given(keys, tokens(), st.data())
def test_a_flipped_bit_never_verifies(key: bytes, tok: T.Token, data: st.DataObject) -> None:
    good = _sealed(key, tok)
    bit = data.draw(st.integers(0, 8 * len(good) - 1))
    bad = bytearray(good)
    bad[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ProtocolError):
        T.authenticate(bytes(bad), SealKey(key), tok.lock_id)


def test_every_single_bit_flip_fails_authentication() -> None:
    # Exhaustive for one token: 336 flips, none passes.
    key = bytes(range(32))
    tok = T.Token(
        token_id=7, holder_id=8, lock_id=9, not_before_s=100, not_after_s=200, rights=3, epoch=1
    )
    good = _sealed(key, tok)
    assert T.authenticate(good, SealKey(key), 9).fields()[:7] == tok.fields()[:7]
    reasons = set()
    for bit in range(8 * len(good)):
        bad = bytearray(good)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(ProtocolError) as e:
            T.authenticate(bytes(bad), SealKey(key), 9)
        reasons.add(e.value.reason)
    assert reasons == {BAD_TAG, BAD_VERSION}


@given(keys, keys, tokens())
def test_another_key_never_opens_it(key: bytes, other: bytes, tok: T.Token) -> None:
    if key == other:
        return
    with pytest.raises(ProtocolError) as e:
        T.authenticate(_sealed(key, tok), SealKey(other), tok.lock_id)
    assert e.value.reason == BAD_TAG


@given(keys, tokens(), st.integers(1, 2**32 - 1))
def test_the_air_learns_nothing_of_the_fields(key: bytes, tok: T.Token, holder: int) -> None:
    # Two tokens that differ only in the holder look unrelated on the air:
    # the seal's tag changes, and with it the whole keystream.
    if holder == tok.holder_id:
        return
    other = T.Token(**{**tok.__dict__, "holder_id": holder})
    a, b = _sealed(key, tok), _sealed(key, other)
    assert a[0] == b[0] == 2
    assert sum(x != y for x, y in zip(a[1:], b[1:], strict=True)) >= 24


def test_no_field_is_in_the_clear() -> None:
    key = bytes(range(32))
    tok = T.Token(
        token_id=0x0A0B0C0D,
        holder_id=4242,
        lock_id=1017,
        not_before_s=1767258000,
        not_after_s=1767261600,
        rights=3,
        epoch=3,
    )
    sealed = _sealed(key, tok)
    for value in (tok.token_id, tok.holder_id, tok.lock_id, tok.not_before_s, tok.not_after_s):
        assert struct.pack(">I", value) not in sealed


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
    }
    fields.update(change)
    with pytest.raises(ProtocolError) as e:
        T.encode_body(T.Token(**fields))  # type: ignore[arg-type]
    assert e.value.reason == reason


def test_session_key_needs_the_seal_tag() -> None:
    tok = T.Token(
        token_id=1, holder_id=2, lock_id=3, not_before_s=1, not_after_s=2, rights=1, epoch=0
    )
    with pytest.raises(ProtocolError) as e:
        T.session_key(SealKey(bytes(range(32))), tok)  # never sealed: no tag
    assert e.value.reason == BAD_LENGTH


def test_verify_checks_in_order() -> None:
    key = SealKey(bytes(range(1, 33)))
    tok = T.Token(
        token_id=1, holder_id=2, lock_id=3, not_before_s=10, not_after_s=20, rights=1, epoch=5
    )
    data = T.seal_token(key, tok)
    assert T.verify(data, key, 3, now_s=15, epoch=5, right=RIGHT_UNLOCK).holder_id == 2
    # Revocation outranks the clock: a revoked token is reported revoked, even when expired.
    with pytest.raises(ProtocolError, match=REVOKED):
        T.verify(data, key, 3, now_s=10_000, epoch=6, right=RIGHT_UNLOCK)
    # Genuine but naming another lock (an authority fault): wrong_lock.
    with pytest.raises(ProtocolError, match=WRONG_LOCK):
        T.verify(data, key, 4, now_s=15, epoch=5, right=RIGHT_UNLOCK)


def test_rights_text() -> None:
    assert T.rights_text(RIGHT_UNLOCK | RIGHT_READ_AUDIT) == "unlock,read-audit"
    assert T.rights_text(0x0F) == "unlock,lock,read-audit,admin"
    assert T.rights_text(RIGHT_ADMIN) == "admin"


def test_repr_names_the_fields_not_the_tag() -> None:
    tok = T.Token(
        token_id=1, holder_id=2, lock_id=3, not_before_s=4, not_after_s=5, rights=1, epoch=6
    )
    assert repr(tok) == "Token(id=1 holder=2 lock=3 window=4..5 rights=0x01 epoch=6)"
