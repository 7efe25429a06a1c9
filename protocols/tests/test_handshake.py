"""Handshake messages and the two peer sides (holder, edge): layout, round trips, totality."""

from __future__ import annotations

import hashlib
import hmac as std_hmac
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lock_strategies import handshake_messages, keys, nonces, ops, tokens

from kommune.protocols import handshake as hs
from kommune.protocols import lock_client
from kommune.protocols import token as T
from kommune.protocols.errors import (
    BAD_LENGTH,
    BAD_TAG,
    BAD_VALUE,
    TRUNCATED,
    UNKNOWN_TYPE,
    WRONG_LOCK,
    ProtocolError,
)
from kommune.protocols.lock_client import EdgeSession, HolderSession
from kommune.protocols.lock_wire import (
    CMD_EPOCH_SET,
    CMD_TIME_SET,
    MSG_COMMAND,
    MSG_REQUEST,
    OK,
    STATUSES,
)
from kommune.protocols.seal import SealKey

SIZES = {
    hs.Challenge: hs.CHALLENGE_BYTES,
    hs.Request: hs.REQUEST_BYTES,
    hs.Command: hs.COMMAND_BYTES,
    hs.Result: hs.RESULT_BYTES,
    hs.Notice: hs.NOTICE_BYTES,
}


def _hmac16(key: bytes, *parts: bytes) -> bytes:
    return std_hmac.new(key, b"".join(parts), hashlib.sha256).digest()[:16]


@given(handshake_messages)
def test_decode_encode_round_trip(msg: Any) -> None:
    data = msg.encode()
    assert len(data) == SIZES[type(msg)]
    assert lock_client.decode(data) == msg


@given(st.binary(max_size=100))
def test_decode_is_total(data: bytes) -> None:
    try:
        msg = lock_client.decode(data)
    except ProtocolError:
        return
    assert msg.encode() == data


@given(st.sampled_from([1, 2, 3, 4, 5]), st.data())
def test_decode_is_total_for_each_type(msg_type: int, data: st.DataObject) -> None:
    # Right type byte and near-right sizes: reaches the field checks.
    size = data.draw(st.integers(0, 100))
    body = data.draw(st.binary(min_size=size, max_size=size))
    try:
        msg = lock_client.decode(bytes([msg_type]) + body)
    except ProtocolError as e:
        assert e.reason in STATUSES
        return
    assert msg.encode() == bytes([msg_type]) + body


@given(handshake_messages)
def test_every_truncation_and_extension_is_rejected(msg: Any) -> None:
    data = msg.encode()
    for n in range(len(data)):
        with pytest.raises(ProtocolError):
            lock_client.decode(data[:n])
    with pytest.raises(ProtocolError):
        lock_client.decode(data + b"\x00")


def test_empty_and_unknown() -> None:
    with pytest.raises(ProtocolError, match=TRUNCATED):
        lock_client.decode(b"")
    with pytest.raises(ProtocolError, match=UNKNOWN_TYPE):
        lock_client.decode(b"\x06" + bytes(20))  # an audit ack is not a handshake message


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (hs.Challenge(1, 2, 3, bytes(15)), BAD_LENGTH),
        (hs.Challenge(2**32, 2, 3, bytes(16)), BAD_VALUE),
        (hs.Request(3, bytes(16), bytes(16), bytes(42), bytes(16)), BAD_VALUE),
        (hs.Request(1, bytes(16), bytes(16), bytes(41), bytes(16)), BAD_LENGTH),
        (hs.Request(1, bytes(16), bytes(17), bytes(42), bytes(16)), BAD_LENGTH),
        (hs.Command(3, bytes(16), bytes(16), 0, bytes(16)), BAD_VALUE),
        (hs.Command(1, bytes(16), bytes(16), -1, bytes(16)), BAD_VALUE),
        (hs.Result(MSG_REQUEST, CMD_TIME_SET | 2, OK, bytes(16)), BAD_VALUE),
        (hs.Result(MSG_COMMAND, 4, OK, bytes(16)), BAD_VALUE),
        (hs.Result(9, 1, OK, bytes(16)), BAD_VALUE),
        (hs.Notice(256, OK), BAD_VALUE),
    ],
)
def test_encode_refuses_bad_fields(msg: Any, reason: str) -> None:
    with pytest.raises(ProtocolError) as e:
        msg.encode()
    assert e.value.reason == reason


def test_unknown_status_reason_goes_out_as_bad_value() -> None:
    assert hs.Notice(2, "bad_crc").encode() == bytes([4, 2, STATUSES.index(BAD_VALUE)])


def _issue(key: SealKey, tok: T.Token) -> tuple[bytes, bytes]:
    token = T.seal_token(key, tok)
    return token, T.session_key(key, T.authenticate(token, key, tok.lock_id))


@given(keys, tokens(), ops, st.tuples(nonces, nonces), st.integers(1, 2**32 - 1))
def test_holder_request_matches_lock_md(
    token_key: bytes, tok: T.Token, op: int, both_nonces: tuple[bytes, bytes], clock: int
) -> None:
    lock_nonce, holder_nonce = both_nonces
    token, session = _issue(SealKey(token_key), tok)
    challenge = hs.Challenge(tok.lock_id, clock, 0, lock_nonce).encode()
    assert challenge == struct.pack(">BBIII", 1, 2, tok.lock_id, clock, 0) + lock_nonce
    request = HolderSession(token, session, tok.lock_id).request(challenge, op, holder_nonce)
    body = bytes([2, op]) + lock_nonce + holder_nonce + token
    lock_id = struct.pack(">I", tok.lock_id)
    assert request == body + _hmac16(session, b"PRF1", lock_id, body)


def _holder_pair() -> tuple[HolderSession, bytes, bytes, bytes]:
    key = SealKey(bytes(range(32)))
    tok = T.Token(
        token_id=5, holder_id=6, lock_id=7, not_before_s=0, not_after_s=99, rights=3, epoch=0
    )
    token, session = _issue(key, tok)
    holder = HolderSession(token, session, 7)
    challenge = hs.Challenge(7, 50, 0, b"L" * 16).encode()
    holder.request(challenge, 1, b"H" * 16)
    return holder, session, b"L" * 16, b"H" * 16


def test_holder_accepts_only_the_genuine_result() -> None:
    holder, session, ln, hn = _holder_pair()
    head = bytes([3, 2, 1, 0])
    mac = _hmac16(session, b"RES1", struct.pack(">I", 7), ln, hn, head)
    forged = head + bytes(16)
    with pytest.raises(ProtocolError, match=BAD_TAG):
        holder.result(forged)
    reply = holder.result(head + mac)
    assert reply.ok and reply.authenticated and reply.status == OK
    with pytest.raises(ProtocolError, match=BAD_VALUE):
        holder.result(head + mac)  # one answer per request


def test_holder_reads_a_notice_as_unauthenticated() -> None:
    holder, _, _, _ = _holder_pair()
    reply = holder.result(hs.Notice(2, OK).encode())
    assert reply.status == OK and not reply.authenticated and not reply.ok


def test_holder_refuses_another_locks_challenge() -> None:
    holder, _, _, _ = _holder_pair()
    with pytest.raises(ProtocolError, match=WRONG_LOCK):
        holder.request(hs.Challenge(8, 50, 0, b"L" * 16).encode(), 1, b"H" * 16)


def test_result_before_request_is_refused() -> None:
    edge = EdgeSession(bytes(range(32)), 7)
    with pytest.raises(ProtocolError, match=BAD_VALUE):
        edge.result(hs.Notice(5, OK).encode())


@given(keys, st.sampled_from([CMD_TIME_SET, CMD_EPOCH_SET]), st.integers(0, 2**32 - 1))
def test_edge_command_matches_lock_md(edge_key: bytes, cmd: int, value: int) -> None:
    challenge = hs.Challenge(7, 50, 0, b"L" * 16).encode()
    command = EdgeSession(edge_key, 7).command(challenge, cmd, value, b"E" * 16, now_s=60)
    body = bytes([5, cmd]) + b"L" * 16 + b"E" * 16 + struct.pack(">I", value)
    assert command == body + _hmac16(edge_key, b"CMD1", struct.pack(">I", 7), body)


def test_peer_keys_must_be_32_bytes() -> None:
    with pytest.raises(ProtocolError, match=BAD_LENGTH):
        EdgeSession(bytes(16), 7)


def test_a_holder_session_refuses_an_unsealed_token() -> None:
    with pytest.raises(ProtocolError, match="bad_version"):
        HolderSession(b"\x01" + bytes(41), bytes(range(32)), 7)


def test_peers_refuse_a_challenge_from_a_far_clock() -> None:
    # A held-back challenge (or a lock far off) shows in its clock: the edge
    # always checks, a phone when it trusts its own clock.
    challenge = hs.Challenge(7, 100_000, 0, b"L" * 16).encode()
    edge = EdgeSession(bytes(range(32)), 7)
    with pytest.raises(ProtocolError, match=BAD_VALUE):
        edge.command(challenge, CMD_TIME_SET, 200_000, b"E" * 16, now_s=200_000)
    edge.command(challenge, CMD_TIME_SET, 200_000, b"E" * 16, now_s=200_000, max_skew_s=10**6)
    edge.command(challenge, CMD_TIME_SET, 103_600, b"E" * 16, now_s=103_600)
    tok = T.Token(
        token_id=1, holder_id=2, lock_id=7, not_before_s=0, not_after_s=1, rights=1, epoch=0
    )
    holder = HolderSession(_issue(SealKey(bytes(range(32))), tok)[0], bytes(range(32)), 7)
    holder.request(challenge, 1, b"h" * 16)  # no clock of its own: no check
    with pytest.raises(ProtocolError, match=BAD_VALUE):
        holder.request(challenge, 1, b"h" * 16, now_s=100_301)
    holder.request(challenge, 1, b"h" * 16, now_s=100_300)
