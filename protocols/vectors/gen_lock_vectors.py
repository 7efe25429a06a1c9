"""Writes the lock-protocol golden vectors: hmac, token, handshake and audit .json.

Run only after a deliberate wire-format change, then review the diff:

    .venv/bin/python protocols/vectors/gen_lock_vectors.py

Inputs are spelled out here; outputs are computed with the implementation and
checked against the outcome each case exists to show (a case meant to be
"expired" must come out expired). The tests check the same bytes against
independent computations (stdlib hmac, `cryptography`), so a bug here cannot
silently become golden.
"""

from __future__ import annotations

import hmac as std_hmac
import json
import sys
from hashlib import sha256
from pathlib import Path
from typing import Any

from kommune.edge.keys import derive_lock_keys
from kommune.edge.token_authority import TokenAuthority
from kommune.protocols import audit, audit_check
from kommune.protocols import handshake as hs
from kommune.protocols.errors import ProtocolError
from kommune.protocols.lock_client import (
    ACTION_NAMES,
    CHALLENGE_REQUEST,
    EdgeSession,
    HolderSession,
)
from kommune.protocols.lock_verifier import Connection, LockVerifier
from kommune.protocols.lock_wire import (
    CMD_EPOCH_SET,
    CMD_TIME_SET,
    RIGHT_LOCK,
    RIGHT_READ_AUDIT,
    RIGHT_UNLOCK,
    lock_key,
)
from kommune.protocols.seal import SealKey

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vec_audit
import vec_handshake
import vec_token

HERE = Path(__file__).resolve().parent

# TEST-ONLY material. The site key is what edge/tests/test_keys.py derives
# these locks' keys from; it is in keys.PUBLISHED_TEST_KEYS, so nothing but
# an explicit test_key=True (here and in tests) accepts it, and no code
# defaults to it.
SITE_KEY = bytes(range(0x10, 0x30))
LOCK = 1017
OTHER_LOCK = 1018
KEYS = derive_lock_keys(SITE_KEY, LOCK, test_key=True)
OTHER_KEYS = derive_lock_keys(SITE_KEY, OTHER_LOCK, test_key=True)
HOLDER = 4242
NOT_BEFORE = 1767258000  # 2026-01-01 09:00 UTC
NOT_AFTER = 1767261600  # 10:00
EPOCH = 3
VISIT = NOT_BEFORE + 600  # lock clock during the visit
LOCK_NONCE = bytes.fromhex("00112233445566778899aabbccddeeff")
HOLDER_NONCE = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf")
EDGE_NONCE = bytes.fromhex("e0e1e2e3e4e5e6e7e8e9eaebecedeeef")

Case = dict[str, Any]


def _mint(
    token_id: int,
    *,
    lock_id: int = LOCK,
    rights: int = RIGHT_UNLOCK | RIGHT_LOCK,
    epoch: int = EPOCH,
) -> tuple[bytes, bytes]:
    authority = TokenAuthority(
        SITE_KEY, epochs={lock_id: epoch}, new_token_id=lambda: token_id, test_key=True
    )
    t = authority.issue(
        holder_id=HOLDER,
        lock_id=lock_id,
        not_before_s=NOT_BEFORE,
        not_after_s=NOT_AFTER,
        rights=rights,
    )
    return t.token, t.session_key


TOKEN, SESSION = _mint(0x0A0B0C0D)


def _flip(data: bytes, index: int, bit: int = 0) -> bytes:
    b = bytearray(data)
    b[index] ^= 1 << bit
    return bytes(b)


def _op_case(adapter: Any, name: str, op: str, args: dict[str, Any], expect: str | None) -> Case:
    # expect: an error reason, or None for a result.
    try:
        result = adapter.op(op, args)
    except ProtocolError as e:
        assert expect == e.reason, f"{name}: expected {expect}, got error {e.reason}"
        return {"name": name, "op": op, "args": args, "error": e.reason}
    assert expect is None, f"{name}: expected error {expect}, got {result!r}"
    return {"name": name, "op": op, "args": args, "result": result}


def _hex_case(adapter: Any, name: str, data: bytes, expect: str | None = None) -> Case:
    try:
        fields = adapter.decode(data)
    except ProtocolError as e:
        assert expect == e.reason, f"{name}: expected {expect}, got error {e.reason}"
        return {"name": name, "hex": data.hex(), "error": e.reason}
    assert expect is None, f"{name}: expected error {expect}"
    assert adapter.encode(fields) == data, name
    return {"name": name, "hex": data.hex(), "fields": fields}


# --- hmac ---------------------------------------------------------------------

RFC4231 = [  # (key, data, HMAC-SHA-256 from RFC 4231 section 4, bytes kept)
    (
        "0b" * 20,
        b"Hi There".hex(),
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        32,
    ),
    (
        b"Jefe".hex(),
        b"what do ya want for nothing?".hex(),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        32,
    ),
    (
        "aa" * 20,
        "dd" * 50,
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
        32,
    ),
    (
        bytes(range(1, 26)).hex(),
        "cd" * 50,
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
        32,
    ),
    ("0c" * 20, b"Test With Truncation".hex(), "a3b6167473100ee06e0c796c2955552b", 16),
    (
        "aa" * 131,
        b"Test Using Larger Than Block-Size Key - Hash Key First".hex(),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        32,
    ),
    (
        "aa" * 131,
        b"This is a test using a larger than block-size key and a larger than block-size data."
        b" The key needs to be hashed before being used by the HMAC algorithm.".hex(),
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
        32,
    ),
]


def hmac_cases() -> list[Case]:
    cases: list[Case] = []
    for i, (key, data, mac, n) in enumerate(RFC4231, 1):
        std = std_hmac.new(bytes.fromhex(key), bytes.fromhex(data), sha256).hexdigest()
        assert std[: 2 * n] == mac, f"RFC 4231 case {i} transcribed wrong"
        args: dict[str, Any] = {"key": key, "data": data}
        if n != 32:
            args["bytes"] = n
        cases.append({"name": f"rfc4231_case_{i}", "op": "hmac", "args": args, "result": mac})
    cases.append(
        {
            "name": "empty_key_and_message",
            "op": "hmac",
            "args": {"key": "", "data": ""},
            "result": std_hmac.new(b"", b"", sha256).hexdigest(),
        }
    )
    for name, a, b, same in (
        ("equal_same", "00ff10", "00ff10", True),
        ("equal_last_byte_differs", "00ff10", "00ff11", False),
        ("equal_first_bit_differs", "80ff10", "00ff10", False),
        ("equal_length_differs", "00ff10", "00ff", False),
        ("equal_empty", "", "", True),
    ):
        cases.append({"name": name, "op": "equal", "args": {"a": a, "b": b}, "result": same})
    return cases


# --- token --------------------------------------------------------------------


def token_cases() -> list[Case]:
    a = vec_token
    key = KEYS.token_key.hex()
    opened = a.op("open", {"key": key, "token": TOKEN.hex(), "lock_id": LOCK})
    fields = {k: v for k, v in opened.items() if k != "tag"}
    body = a.encode(fields)
    max_fields = {
        "token_id": 0xFFFFFFFF,
        "holder_id": 0xFFFFFFFF,
        "lock_id": 0xFFFFFFFF,
        "not_before_s": 0,
        "not_after_s": 0xFFFFFFFF,
        "rights": 0x0F,
        "epoch": 0xFFFFFFFF,
    }
    cases = [
        _hex_case(a, "visit_token_body", body),
        _hex_case(a, "body_fields_at_their_limits", a.encode(max_fields)),
        _hex_case(a, "body_empty", b"", "truncated"),
        _hex_case(a, "body_one_byte_short", body[:-1], "truncated"),
        _hex_case(a, "body_one_byte_long", body + b"\x00", "too_long"),
        _hex_case(a, "body_no_rights", body[:20] + b"\x00" + body[21:], "bad_value"),
        _hex_case(a, "body_reserved_right_bit", body[:20] + b"\x13" + body[21:], "bad_value"),
        _hex_case(a, "body_token_id_zero", bytes(4) + body[4:], "bad_value"),
        _hex_case(a, "body_holder_id_zero", body[:4] + bytes(4) + body[8:], "bad_value"),
        _hex_case(a, "body_lock_id_zero", body[:8] + bytes(4) + body[12:], "bad_value"),
        _hex_case(
            a,
            "body_window_ends_before_it_starts",
            body[:12] + body[16:20] + body[12:16] + body[20:],
            "bad_value",
        ),
    ]
    cases.append(_op_case(a, "sealed_visit_token", "seal", {"key": key, "token": fields}, None))
    assert cases[-1]["result"] == TOKEN.hex()
    sealed = TOKEN.hex()
    for name, data, expect in (
        ("check_sealed_visit_token", TOKEN, None),
        ("check_empty", b"", "truncated"),
        ("check_version_1", b"\x01" + TOKEN[1:], "bad_version"),
        ("check_one_byte_short", TOKEN[:-1], "truncated"),
        ("check_one_byte_long", TOKEN + b"\x00", "too_long"),
    ):
        cases.append(_op_case(a, name, "check", {"token": data.hex()}, expect))
    open_args = {"key": key, "token": sealed, "lock_id": LOCK}
    cases.append(_op_case(a, "open_visit_token", "open", open_args, None))
    # Nothing of the fields is in the clear: no field's bytes appear in the token.
    for field in (HOLDER, NOT_BEFORE, NOT_AFTER, LOCK):
        assert field.to_bytes(4, "big") not in TOKEN, field
    cases.append(_op_case(a, "session_key_of_visit_token", "session_key", open_args, None))
    assert cases[-1]["result"] == SESSION.hex()

    def verify(name: str, expect: str | None, **over: Any) -> None:
        args = {
            "key": key,
            "token": sealed,
            "lock_id": LOCK,
            "now_s": VISIT,
            "epoch": EPOCH,
            "right": RIGHT_UNLOCK,
        }
        args.update(over)
        cases.append(_op_case(a, name, "verify", args, expect))

    verify("verify_ok_during_visit", None)
    verify("verify_ok_lock_right", None, right=RIGHT_LOCK)
    verify("verify_ok_older_lock_epoch", None, epoch=EPOCH - 1)
    verify("verify_ok_skew_before_window", None, now_s=NOT_BEFORE - 60)
    verify("verify_not_yet_valid_past_skew", "not_yet_valid", now_s=NOT_BEFORE - 61)
    verify("verify_ok_skew_after_window", None, now_s=NOT_AFTER + 60)
    verify("verify_expired_past_skew", "expired", now_s=NOT_AFTER + 61)
    verify("verify_expired_no_skew", "expired", now_s=NOT_AFTER + 1, skew_s=0)
    # Another lock's key cannot open it at all: bad_tag, not wrong_lock.
    verify("verify_at_other_lock", "bad_tag", lock_id=OTHER_LOCK, key=OTHER_KEYS.token_key.hex())
    verify("verify_revoked", "revoked", epoch=EPOCH + 1)
    verify("verify_no_read_audit_right", "no_right", right=RIGHT_READ_AUDIT)
    verify("verify_tag_bit_flipped", "bad_tag", token=_flip(TOKEN, 16, 7).hex())
    verify("verify_sealed_holder_bit_flipped", "bad_tag", token=_flip(TOKEN, 22, 0).hex())
    verify("verify_sealed_window_bit_flipped", "bad_tag", token=_flip(TOKEN, 35, 4).hex())
    verify("verify_other_locks_key", "bad_tag", key=OTHER_KEYS.token_key.hex())
    verify("verify_truncated", "truncated", token=TOKEN[:30].hex())
    return cases


# --- handshake ----------------------------------------------------------------

LOCK_CONFIG = {
    "lock_id": LOCK,
    "token_key": KEYS.token_key.hex(),
    "edge_key": KEYS.edge_key.hex(),
    "audit_key": KEYS.audit_key.hex(),
    "epoch": EPOCH,
    "relay_bound_ms": 500,
    "skew_s": 60,
    "max_refusals": 3,
    "max_connections": 4,
}


class Script:
    """Builds a lock scenario step by step, running a live lock alongside."""

    def __init__(self, **over: Any) -> None:
        self.config = dict(LOCK_CONFIG, **over)
        self.lock: LockVerifier = vec_handshake._verifier(self.config)[0]
        self.conns: dict[int, Connection] = {}
        self.steps: list[dict[str, Any]] = []
        self.statuses: list[str] = []
        self.actions: list[str] = []

    def _conn(self, conn: int, now_ms: int) -> Connection:
        if conn not in self.conns:
            self.conns[conn] = self.lock.connect(now_ms)
        return self.conns[conn]

    def _step(self, step: dict[str, Any], conn: int) -> None:
        if conn:
            step["conn"] = conn
        self.steps.append(step)

    def challenge(self, nonce: bytes, now_ms: int, clock_s: int = VISIT, conn: int = 0) -> bytes:
        self._step({"challenge": nonce.hex(), "now_ms": now_ms, "clock_s": clock_s}, conn)
        return self.lock.challenge(self._conn(conn, now_ms), nonce, now_ms, clock_s)

    def refused_challenge(self, nonce: bytes, now_ms: int, conn: int = 0) -> str:
        self._step({"challenge": nonce.hex(), "now_ms": now_ms, "clock_s": VISIT}, conn)
        try:
            self.lock.challenge(self._conn(conn, now_ms), nonce, now_ms, VISIT)
        except ProtocolError as e:
            self.statuses.append("refused:" + e.reason)
            return e.reason
        raise AssertionError("challenge accepted")

    def fault(self, code: int) -> None:
        self.steps.append({"fault": code})
        self.lock.mechanism_fault = code

    def restatus(self, status: str) -> None:
        self.steps.append({"restatus": status})

    def tick(self, now_ms: int) -> None:
        self.steps.append({"tick": now_ms})
        self.lock.tick(now_ms)

    def disconnect(self, conn: int) -> None:
        self.steps.append({"disconnect": conn})
        self.lock.disconnect(self.conns.pop(conn))

    def send(self, msg: bytes, now_ms: int, clock_s: int = VISIT, conn: int = 0) -> str:
        self._step({"respond": msg.hex(), "now_ms": now_ms, "clock_s": clock_s}, conn)
        v = self.lock.respond(self._conn(conn, now_ms), msg, now_ms, clock_s)
        self.statuses.append(v.status)
        self.actions.append(ACTION_NAMES[v.action])
        return v.status

    def case(self, name: str, expect: list[str], actions: list[str] | None = None) -> Case:
        assert self.statuses == expect, f"{name}: {self.statuses} != {expect}"
        if actions is not None:
            assert self.actions == actions, f"{name}: {self.actions} != {actions}"
        return _op_case(
            vec_handshake, name, "lock", {"lock": self.config, "steps": self.steps}, None
        )


def _request(
    challenge: bytes,
    op: int = RIGHT_UNLOCK,
    token: bytes = TOKEN,
    session: bytes = SESSION,
    nonce: bytes = HOLDER_NONCE,
) -> bytes:
    return HolderSession(token, session, LOCK).request(challenge, op, nonce)


def _command(challenge: bytes, cmd: int, value: int, key: bytes = KEYS.edge_key) -> bytes:
    return EdgeSession(key, LOCK).command(challenge, cmd, value, EDGE_NONCE, now_s=VISIT)


def handshake_cases() -> list[Case]:
    a = vec_handshake
    cases: list[Case] = []

    # The full transcript, lock side and holder side.
    s = Script()
    ch = s.challenge(LOCK_NONCE, 1000)
    req = _request(ch)
    s.send(req, 1080)
    cases.append(s.case("transcript_unlock_lock_side", ["ok"], ["open"]))
    reply = bytes.fromhex(cases[-1]["result"]["steps"][1]["reply"])
    holder_args = {
        "token": TOKEN.hex(),
        "session_key": SESSION.hex(),
        "lock_id": LOCK,
        "challenge": ch.hex(),
        "op": RIGHT_UNLOCK,
        "holder_nonce": HOLDER_NONCE.hex(),
        "reply": reply.hex(),
    }
    cases.append(_op_case(a, "transcript_unlock_holder_side", "holder", holder_args, None))
    assert cases[-1]["result"]["request"] == req.hex()
    cases.append(
        _op_case(
            a,
            "holder_rejects_forged_result",
            "holder",
            dict(holder_args, reply=_flip(reply, 19).hex()),
            "bad_tag",
        )
    )
    cases.append(
        _op_case(
            a,
            "holder_rejects_result_for_other_op",
            "holder",
            dict(holder_args, op=RIGHT_LOCK),
            "bad_value",
        )
    )
    cases.append(
        _op_case(
            a,
            "holder_reads_notice_as_unauthenticated",
            "holder",
            dict(holder_args, reply=hs.Notice(2, "rate_limited").encode().hex()),
            None,
        )
    )
    other_ch = hs.Challenge(OTHER_LOCK, VISIT, EPOCH, LOCK_NONCE).encode()
    cases.append(
        _op_case(
            a,
            "holder_refuses_other_locks_challenge",
            "holder",
            dict(holder_args, challenge=other_ch.hex()),
            "wrong_lock",
        )
    )

    # Message codecs.
    cases += [
        _hex_case(a, "challenge", ch),
        _hex_case(a, "request_unlock", req),
        _hex_case(a, "result_ok", reply),
        _hex_case(a, "notice_wrong_lock", hs.Notice(2, "wrong_lock").encode()),
        _hex_case(a, "notice_for_empty_message", hs.Notice(0, "truncated").encode()),
        _hex_case(a, "notice_clock_stale", hs.Notice(2, "clock_stale").encode()),
        _hex_case(a, "command_time_set", _command(ch, CMD_TIME_SET, VISIT)),
        _hex_case(a, "command_epoch_set", _command(ch, CMD_EPOCH_SET, EPOCH + 1)),
        _hex_case(a, "empty_message", b"", "truncated"),
        _hex_case(a, "unknown_type", b"\x0a" + bytes(29), "unknown_type"),
        _hex_case(a, "challenge_request", CHALLENGE_REQUEST),
        _hex_case(a, "challenge_request_version_1", b"\x08\x01", "bad_version"),
        _hex_case(a, "challenge_request_long", CHALLENGE_REQUEST + b"\x00", "too_long"),
        _hex_case(a, "notice_mechanism_fault", hs.Notice(2, "mechanism_fault").encode()),
        _hex_case(a, "notice_unprovisioned", hs.Notice(8, "unprovisioned").encode()),
        _hex_case(a, "challenge_short", ch[:-1], "truncated"),
        _hex_case(a, "challenge_version_1", ch[:1] + b"\x01" + ch[2:], "bad_version"),
        _hex_case(a, "request_long", req + b"\x00", "too_long"),
        _hex_case(a, "request_two_ops", req[:1] + b"\x03" + req[2:], "bad_value"),
        _hex_case(a, "request_no_op", req[:1] + b"\x00" + req[2:], "bad_value"),
        _hex_case(a, "request_reserved_op", req[:1] + b"\x10" + req[2:], "bad_value"),
        _hex_case(
            a,
            "command_unknown",
            _command(ch, CMD_TIME_SET, 1)[:1] + b"\x03" + bytes(52),
            "bad_value",
        ),
        _hex_case(a, "result_unknown_status", reply[:3] + b"\xc8" + reply[4:], "bad_value"),
        _hex_case(a, "result_command_op_3", b"\x03\x05\x03\x00" + bytes(16), "bad_value"),
        _hex_case(a, "notice_unknown_status", b"\x04\x02\x14", "bad_value"),
    ]

    # Replay: a challenge answers once, on its own connection.
    s = Script()
    ch = s.challenge(LOCK_NONCE, 1000)
    req = _request(ch)
    s.send(req, 1080)
    s.send(req, 1100)
    cases.append(s.case("replay_same_challenge", ["ok", "replay"], ["open", "drop"]))

    s = Script()
    ch = s.challenge(LOCK_NONCE, 1000)
    old = _request(ch)
    s.send(old, 1080)
    s.challenge(bytes(range(16)), 5000)
    s.send(old, 5050)
    cases.append(s.case("replay_old_request_after_new_challenge", ["ok", "replay"]))

    s = Script()
    ch = s.challenge(LOCK_NONCE, 1000)
    s.send(_request(ch)[:-1] + b"\x00", 1050)  # a guess: the connection is dropped
    s.send(_request(ch), 1060)  # the same connection: refused unread
    s.send(_request(ch), 1080, conn=1)  # the right proof, another connection: used up
    expect = ["bad_proof", "rate_limited", "replay"]
    cases.append(s.case("one_attempt_per_challenge", expect, ["drop", "drop", "drop"]))

    s = Script()
    ch = s.challenge(LOCK_NONCE, 1000, conn=1)  # a relay's connection
    s.send(_request(ch), 1050, conn=0)  # answered on another connection
    cases.append(s.case("answer_on_another_connection", ["replay"]))

    s = Script()
    s.challenge(LOCK_NONCE, 1000)
    s.refused_challenge(LOCK_NONCE, 1010, conn=1)  # the RNG repeated an outstanding nonce
    s.tick(2000)
    s.refused_challenge(LOCK_NONCE, 2010, conn=2)  # ... or a recent one
    expect = ["refused:replay", "refused:replay"]
    cases.append(s.case("repeated_challenge_nonce_refused", expect))

    # Relay bound.
    s = Script()
    ch = s.challenge(LOCK_NONCE, 1000)
    s.send(_request(ch), 1500)
    ch = s.challenge(bytes(range(16)), 2000)
    s.send(_request(ch), 2501)
    cases.append(s.case("relay_bound_500ms_inclusive", ["ok", "too_late"], ["open", "refuse"]))

    s = Script()
    ch = s.challenge(LOCK_NONCE, 0x3FFFFF00)  # ticks_ms about to wrap
    s.send(_request(ch), 0x40)
    cases.append(s.case("relay_bound_across_ticks_wrap", ["ok"]))

    # Time window, by the lock's clock.
    for name, clock, status in (
        ("expired_by_lock_clock", NOT_AFTER + 61, "expired"),
        ("not_yet_valid_by_lock_clock", NOT_BEFORE - 61, "not_yet_valid"),
        ("skew_allowance_at_window_end", NOT_AFTER + 60, "ok"),
    ):
        s = Script()
        ch = s.challenge(LOCK_NONCE, 1000, clock)
        s.send(_request(ch), 1080, clock)
        cases.append(s.case(name, [status]))

    # Another lock's token, forged token, wrong proof, missing right.
    other_token, _ = _mint(77, lock_id=OTHER_LOCK)
    s = Script()
    ch = s.challenge(LOCK_NONCE, 1000)
    forged = hs.Request(RIGHT_UNLOCK, LOCK_NONCE, HOLDER_NONCE, other_token, bytes(16)).encode()
    s.send(forged, 1050)
    cases.append(s.case("token_for_other_lock", ["bad_tag"], ["drop"]))

    s = Script()
    ch = s.challenge(LOCK_NONCE, 1000)
    req = _request(ch)
    s.send(req[:34] + _flip(req[34:76], 30) + req[76:], 1050)  # a sealed window bit
    cases.append(s.case("token_tampered", ["bad_tag"]))

    s = Script()
    ch = s.challenge(LOCK_NONCE, 1000)
    s.send(_request(ch, session=bytes(range(1, 33))), 1050)  # token copied, key guessed
    cases.append(s.case("stolen_token_without_session_key", ["bad_proof"], ["drop"]))

    s = Script()
    ch = s.challenge(LOCK_NONCE, 1000)
    s.send(_request(ch, op=RIGHT_READ_AUDIT), 1050)
    cases.append(s.case("no_read_audit_right", ["no_right"], ["refuse"]))

    # Revocation epoch.
    s = Script(epoch=EPOCH + 1)
    ch = s.challenge(LOCK_NONCE, 1000)
    s.send(_request(ch), 1050)
    cases.append(s.case("revoked_by_epoch", ["revoked"]))

    new_token, new_session = _mint(0x0A0B0C0E, epoch=EPOCH + 1)
    s = Script()
    ch = s.challenge(LOCK_NONCE, 1000)
    s.send(_request(ch, token=new_token, session=new_session), 1050)
    ch = s.challenge(bytes(range(16)), 2000)
    s.send(_request(ch), 2050)
    cases.append(s.case("newer_token_raises_epoch_and_revokes_older", ["ok", "revoked"]))

    # Failures are charged to their connection: junk drops it, refusals add up.
    s = Script()
    s.send(b"", 1000, conn=1)
    s.send(b"\x0a\x00", 1001, conn=2)
    s.send(bytes([0x01]) + bytes(29), 1002, conn=3)  # a challenge sent to the lock
    expect = ["truncated", "unknown_type", "unknown_type"]
    cases.append(s.case("junk_messages", expect, ["drop", "drop", "drop"]))

    s = Script()
    for i in range(3):
        ch = s.challenge(bytes([i + 1]) * 16, 1000 + 100 * i)
        s.send(_request(ch, op=RIGHT_READ_AUDIT), 1050 + 100 * i)
    expect = ["no_right"] * 3
    cases.append(s.case("three_refusals_drop_the_connection", expect, ["refuse", "refuse", "drop"]))

    s = Script()
    for i in range(3):  # a prober, one connection per try
        s.send(bytes([0x02, 0x01]), 1000 + i, conn=10 + i)
        ch = s.challenge(bytes([0x70 + i]) * 16, 1100 + i, conn=20 + i)
        s.send(_request(ch, session=bytes(range(1, 33))), 1110 + i, conn=20 + i)
    ch = s.challenge(LOCK_NONCE, 1200)
    s.send(_request(ch), 1250)  # the real holder, during the probing
    ch = s.challenge(bytes(range(16)), 1300, conn=5)
    s.send(_command(ch, CMD_EPOCH_SET, EPOCH), 1320, conn=5)  # and the edge
    expect = ["truncated", "bad_proof"] * 3 + ["ok", "ok"]
    cases.append(s.case("probing_connections_do_not_block_others", expect))

    stale = audit.encode_ack(lock_key(KEYS.edge_key), LOCK, 1, bytes(16))
    s = Script()
    for i in range(4):
        s.send(stale, 1001 + i)  # the lock wrote nothing: authentic, refused, not charged
    ch = s.challenge(LOCK_NONCE, 1005)
    s.send(_request(ch), 1010)
    expect = ["bad_value"] * 4 + ["ok"]
    cases.append(s.case("stale_acks_are_not_charged", expect, ["refuse"] * 4 + ["open"]))

    # Edge commands.
    s = Script()
    ch = s.challenge(LOCK_NONCE, 1000)
    time_set = _command(ch, CMD_TIME_SET, VISIT + 5)
    s.send(time_set, 1040)
    cases.append(s.case("transcript_time_set", ["ok"], ["set_time"]))
    reply = bytes.fromhex(cases[-1]["result"]["steps"][1]["reply"])
    edge_args = {
        "edge_key": KEYS.edge_key.hex(),
        "lock_id": LOCK,
        "challenge": ch.hex(),
        "cmd": CMD_TIME_SET,
        "value": VISIT + 5,
        "edge_nonce": EDGE_NONCE.hex(),
        "now_s": VISIT,
        "reply": reply.hex(),
    }
    cases.append(_op_case(a, "transcript_time_set_edge_side", "edge", edge_args, None))
    assert cases[-1]["result"]["command"] == time_set.hex()

    s = Script()
    ch = s.challenge(LOCK_NONCE, 1000)
    s.send(_command(ch, CMD_EPOCH_SET, EPOCH + 2), 1040)
    ch = s.challenge(bytes(range(16)), 2000)
    s.send(_command(ch, CMD_EPOCH_SET, EPOCH + 1), 2040)
    ch = s.challenge(bytes([7]) * 16, 3000)
    s.send(_request(ch), 3050)
    expect = ["ok", "bad_value", "revoked"]
    cases.append(s.case("epoch_set_then_lower_refused", expect, ["set_epoch", "refuse", "refuse"]))

    s = Script()
    ch = s.challenge(LOCK_NONCE, 1000)
    s.send(_command(ch, CMD_TIME_SET, 1, key=OTHER_KEYS.edge_key), 1040)
    ch = s.challenge(bytes(range(16)), 2000, conn=1)
    s.send(_command(ch, CMD_TIME_SET, VISIT), 2600, conn=1)
    cases.append(s.case("command_forged_then_late", ["bad_tag", "too_late"], ["drop", "refuse"]))
    cases += review_cases()
    cases += clock_floor_cases()
    cases += firmware_gap_cases()
    return cases


WRAP_MS = 1 << 30  # ticks_ms() period (ESP32)


def review_cases() -> list[Case]:
    # One case per attack the security reviews found (LOCK.md).
    cases: list[Case] = []
    s = Script()
    ch = s.challenge(LOCK_NONCE, 1000)
    s.tick(1501)  # the firmware's main loop: the challenge expires
    s.send(_request(ch), 1502)
    cases.append(s.case("challenge_expires_at_the_relay_bound", ["replay"]))

    s = Script()
    ch = s.challenge(LOCK_NONCE, 1000)
    s.tick(2000)
    late_s = VISIT + (WRAP_MS + 300) // 1000
    s.send(_request(ch), (1000 + WRAP_MS + 300) % WRAP_MS, late_s)
    cases.append(s.case("challenge_held_past_a_ticks_wrap", ["replay"]))

    s = Script()
    ch = s.challenge(LOCK_NONCE, 1000)
    s.send(_request(ch), (1000 + WRAP_MS + 300) % WRAP_MS, late_s)  # no tick ran
    ch = s.challenge(bytes(range(16)), 5000, late_s)
    s.send(_request(ch), 5100, late_s + 3)
    cases.append(s.case("lock_clock_moved_since_the_challenge", ["too_late", "too_late"]))

    s = Script()
    held = s.challenge(LOCK_NONCE, 1000, conn=1)
    ch = s.challenge(bytes(range(16)), 1000)
    s.send(_command(ch, CMD_TIME_SET, VISIT + 30), 1040)
    s.send(_request(held), 1050, VISIT + 30, conn=1)
    cases.append(s.case("time_set_drops_outstanding_challenges", ["ok", "replay"]))

    far_token, far_session = _mint(0x0A0B0C0F, epoch=EPOCH + 17)
    s = Script()
    ch = s.challenge(LOCK_NONCE, 1000)
    s.send(_request(ch, token=far_token, session=far_session), 1050)
    cases.append(s.case("token_epoch_too_far_ahead", ["bad_value"]))

    s = Script()
    ch = s.challenge(LOCK_NONCE, 1000, conn=9)  # the edge proves its key first
    s.send(_command(ch, CMD_EPOCH_SET, EPOCH), 1010, conn=9)
    for i in range(6):  # then a flood of new connections, each taking a challenge
        s.challenge(bytes([0x30 + i]) * 16, 1100 + i, conn=1 + i)
    ch = s.challenge(bytes(range(16)), 1200, conn=9)
    s.send(_command(ch, CMD_TIME_SET, VISIT), 1210, conn=9)
    s.send(b"\x02", 1310, conn=1)  # the oldest of the flood was evicted, not the edge
    expect = ["ok", "ok", "rate_limited"]
    cases.append(s.case("proven_session_survives_a_connection_flood", expect))

    s = Script()
    s.challenge(LOCK_NONCE, 1000, conn=1)  # a squatter
    ch = s.challenge(bytes(range(16)), 10900)
    s.tick(11001)  # conn 1 silent for 10 s: closed
    s.send(_request(ch), 10950)
    s.send(b"\x02", 11002, conn=1)
    cases.append(s.case("idle_connection_closed_by_tick", ["ok", "rate_limited"]))

    s = Script()
    ch = s.challenge(LOCK_NONCE, 1000)
    s.send(_request(ch, session=bytes(range(1, 33))), 1600)  # late and no proof
    cases.append(s.case("late_unproven_request_logs_no_holder", ["bad_proof"]))
    entry = audit.decode_entry(bytes.fromhex(cases[-1]["result"]["audit"][0]))
    assert (entry.holder_id, entry.token_id) == (0, 0)
    return cases


def clock_floor_cases() -> list[Case]:
    # The lock's clock must not go below the newest time it logged.
    cases: list[Case] = []
    floor = NOT_AFTER + 3600  # the lock had seen an hour after the visit ended
    s = Script(clock_floor_s=floor)
    ch = s.challenge(LOCK_NONCE, 1000)
    s.send(_request(ch), 1050)  # RTC came back at the visit's time: an expired token
    ch = s.challenge(bytes(range(16)), 2000)
    s.send(_command(ch, CMD_TIME_SET, VISIT), 2040)  # the edge says: it really is VISIT
    ch = s.challenge(bytes([7]) * 16, 3000)
    s.send(_request(ch), 3050)
    expect = ["clock_stale", "ok", "ok"]
    cases.append(
        s.case("stale_clock_refused_until_time_set", expect, ["refuse", "set_time", "open"])
    )

    s = Script(needs_time=True)  # persisted from before a reset
    ch = s.challenge(LOCK_NONCE, 1000)
    s.send(_request(ch), 1050)
    cases.append(s.case("needs_time_survives_a_reset", ["clock_stale"]))
    return cases


def _deny(epoch: int, version: int, tokens: list[int], holders: list[int]) -> bytes:
    return EdgeSession(KEYS.edge_key, LOCK).deny_list(epoch, version, tokens, holders)


def firmware_gap_cases() -> list[Case]:
    # What the lock firmware needed (issue 8): a challenge on request, statuses
    # for a faulty mechanism, a deny-list over the air, a RESULT restated.
    a = vec_handshake
    cases: list[Case] = []
    s = Script()
    s.send(CHALLENGE_REQUEST, 900)  # answered by the next challenge, nothing else
    ch = s.challenge(LOCK_NONCE, 1000)
    s.send(_request(ch), 1050)
    s.send(b"\x08\x01", 1100)  # another version: unauthenticated junk
    cases.append(
        s.case(
            "challenge_request_then_unlock",
            ["ok", "ok", "bad_version"],
            ["challenge", "open", "drop"],
        )
    )

    # A genuine deny-list names the holder: the holder's genuine token is revoked.
    deny_v2 = _deny(EPOCH, 2, [0x0BADBEEF], [HOLDER])
    args = {"edge_key": KEYS.edge_key.hex(), "lock_id": LOCK, "epoch": EPOCH, "version": 2}
    cases.append(
        _op_case(
            a,
            "deny_list_sealed",
            "deny_list",
            dict(args, tokens=[0x0BADBEEF], holders=[HOLDER]),
            None,
        )
    )
    assert bytes.fromhex(cases[-1]["result"]["message"]) == deny_v2
    assert HOLDER.to_bytes(4, "big") not in deny_v2  # sealed: no id in clear
    opened = {"edge_key": KEYS.edge_key.hex(), "lock_id": LOCK}
    cases.append(
        _op_case(a, "deny_list_opened", "open_deny_list", dict(opened, message=deny_v2.hex()), None)
    )
    for name, msg, reason in [
        ("deny_list_flipped", _flip(deny_v2, 30), "bad_tag"),
        ("deny_list_newer_epoch_in_clear", _flip(deny_v2, 4), "bad_tag"),
        (
            "deny_list_other_lock",
            EdgeSession(OTHER_KEYS.edge_key, LOCK).deny_list(EPOCH, 2, [], []),
            "bad_tag",
        ),
        ("deny_list_short", deny_v2[:-1], "bad_tag"),
        ("deny_list_truncated", deny_v2[:26], "truncated"),
    ]:
        cases.append(_op_case(a, name, "open_deny_list", dict(opened, message=msg.hex()), reason))

    s = Script()
    s.send(deny_v2, 900)
    ch = s.challenge(LOCK_NONCE, 1000)
    s.send(_request(ch), 1050)
    s.send(_deny(EPOCH, 1, [], []), 1100)  # older: refused, the list stays
    s.send(deny_v2, 1150)  # the same again: ok, not logged
    s.send(_flip(_deny(EPOCH, 3, [], []), 12), 1200)  # forged: dropped
    cases.append(
        s.case(
            "deny_list_revokes_and_only_a_newer_one_replaces_it",
            ["ok", "revoked", "bad_value", "ok", "bad_tag"],
            ["set_deny", "refuse", "refuse", "set_deny", "drop"],
        )
    )
    s = Script()
    s.send(deny_v2, 900)
    s.send(_deny(EPOCH + 1, 1, [], []), 950)  # a new epoch's list replaces any older epoch's
    ch = s.challenge(LOCK_NONCE, 1000)
    s.send(_request(ch), 1050)
    cases.append(
        s.case(
            "deny_list_of_a_newer_epoch_replaces",
            ["ok", "ok", "ok"],
            ["set_deny", "set_deny", "open"],
        )
    )

    # A faulty mechanism: unlocks refused before the motor runs; a lock request served.
    s = Script()
    s.fault(16)
    ch = s.challenge(LOCK_NONCE, 1000)
    s.send(_request(ch), 1050)
    ch = s.challenge(bytes(range(16)), 2000)
    s.send(_request(ch, op=RIGHT_LOCK), 2050)
    cases.append(
        s.case("mechanism_fault_refuses_unlock", ["mechanism_fault", "ok"], ["refuse", "lock"])
    )

    # The bolt did not get there: the same request's RESULT, restated.
    s = Script()
    ch = s.challenge(LOCK_NONCE, 1000)
    s.send(_request(ch), 1050)
    s.restatus("mechanism_fault")
    cases.append(s.case("restated_result_after_a_jam", ["ok"], ["open"]))
    restated = bytes.fromhex(cases[-1]["result"]["steps"][2]["restated"])
    holder = HolderSession(TOKEN, SESSION, LOCK)
    holder.request(ch, RIGHT_UNLOCK, HOLDER_NONCE)
    reply = holder.result(restated)
    assert (reply.status, reply.authenticated) == ("mechanism_fault", True)
    s = Script()
    s.send(b"", 1000)
    s.restatus("mechanism_fault")
    cases.append(s.case("no_restatement_of_a_notice", ["truncated"], ["drop"]))
    return cases


# --- audit --------------------------------------------------------------------


def _log_events() -> list[dict[str, Any]]:
    return [
        {"time_s": VISIT, "event": 1, "op": 1, "status": "ok", "holder_id": HOLDER, "token_id": 7},
        {"time_s": VISIT + 9, "event": 1, "op": 1, "status": "bad_tag"},
        {"time_s": VISIT + 30, "event": 2, "op": 1, "status": "ok", "arg": VISIT + 31},
        {"time_s": VISIT + 60, "event": 3, "op": 0, "status": "ok", "holder_id": HOLDER, "arg": 4},
        {
            "time_s": VISIT + 99,
            "event": 1,
            "op": 2,
            "status": "ok",
            "holder_id": HOLDER,
            "token_id": 7,
        },
    ]


def audit_cases() -> list[Case]:
    a = vec_audit
    base = {"audit_key": KEYS.audit_key.hex(), "lock_id": LOCK}
    cases = [_op_case(a, "log_five_events", "log", dict(base, events=_log_events()), None)]
    entries = [bytes.fromhex(e) for e in cases[0]["result"]]
    e1, e2, e3, e4, e5 = entries
    cases += [
        _hex_case(a, "entry_first", e1),
        _hex_case(a, "entry_unauthenticated_attempt", e2),
        _hex_case(a, "entry_seq_zero", bytes(4) + e1[4:], "bad_value"),
        _hex_case(a, "entry_unknown_event", e1[:8] + b"\x09" + e1[9:], "bad_value"),
        _hex_case(a, "entry_unknown_status", e1[:10] + b"\x63" + e1[11:], "bad_value"),
    ]
    seal_key = SealKey(KEYS.audit_key)
    two = audit_check.encode_batch([e1, e2], seal_key, LOCK)
    cases += batch_cases(base, [e1, e2], two)
    h5 = audit.entry_hash(e5)
    ack = audit.encode_ack(lock_key(KEYS.edge_key), LOCK, 5, h5)
    cases += [
        _hex_case(a, "ack_seq_5", ack),
        _hex_case(a, "ack_short", ack[:-1], "truncated"),
        _op_case(
            a,
            "ack_build",
            "ack",
            {"edge_key": KEYS.edge_key.hex(), "lock_id": LOCK, "seq": 5, "hash": h5.hex()},
            None,
        ),
        _op_case(
            a,
            "ack_open",
            "open_ack",
            {"edge_key": KEYS.edge_key.hex(), "lock_id": LOCK, "ack": ack.hex()},
            None,
        ),
        _op_case(
            a,
            "ack_for_other_lock",
            "open_ack",
            {"edge_key": KEYS.edge_key.hex(), "lock_id": OTHER_LOCK, "ack": ack.hex()},
            "bad_tag",
        ),
        _op_case(a, "hash_of_entry_1", "hash", {"entry": e1.hex()}, None),
    ]
    assert cases[-1]["result"] == e2[23:39].hex()

    def check(name: str, batch: list[bytes], expect: str | None, **over: Any) -> None:
        args = dict(base, next_seq=1, last_hash="00" * 16, entries=[e.hex() for e in batch])
        args.update(over)
        cases.append(_op_case(a, name, "check", args, expect))

    check("chain_whole", entries, None)
    check("chain_resumes_after_ack", [e3, e4, e5], None, next_seq=3, last_hash=e3[23:39].hex())
    check("chain_resent_entries_skipped", entries, None, next_seq=3, last_hash=e3[23:39].hex())
    check("chain_gap", [e1, e2, e4, e5], "gap")
    check("chain_missing_first", [e2, e3], "gap")
    check("chain_reordered", [e1, e3, e2, e4], "out_of_order")
    check("chain_duplicate_after_new", [e1, e2, e2], "out_of_order")
    check("chain_entry_modified", [e1, _flip(e2, 6), e3], "bad_tag")
    check("chain_entry_mac_forged", [e1, e2[:39] + bytes(16)], "bad_tag")
    check("chain_other_locks_key", entries, "bad_tag", audit_key=OTHER_KEYS.audit_key.hex())
    check("chain_fork_wrong_anchor", [e3], "bad_chain", next_seq=3, last_hash="11" * 16)
    check("chain_resent_entry_differs", [e2, e3], "bad_chain", next_seq=3, last_hash="22" * 16)
    check("chain_resent_only", [e1, e2], None, next_seq=3, last_hash=e3[23:39].hex())
    check("chain_truncated_entry", [e1[:54]], "truncated")
    cases += audit_review_cases(base, entries)
    return cases


def batch_cases(base: dict[str, Any], two: list[bytes], sealed: bytes) -> list[Case]:
    # Sealed AUDIT_BATCHes: the lock's, the edge's opening of them.
    a = vec_audit
    cases = [
        _op_case(
            a, "batch_of_two_sealed", "seal_batch", dict(base, entries=[e.hex() for e in two]), None
        ),
        _op_case(a, "batch_empty_sealed", "seal_batch", dict(base, entries=[]), None),
        _op_case(a, "batch_of_two_opened", "open_batch", dict(base, batch=sealed.hex()), None),
        _op_case(
            a,
            "batch_lock_builds_the_same_bytes",
            "batch",
            dict(base, events=_log_events()[:2], max_entries=2),
            None,
        ),
        _op_case(
            a,
            "batch_fits_free_memory",  # 2 KB reserve + one entry: a batch of one
            "batch",
            dict(base, events=_log_events(), mem_free=audit.BATCH_RESERVE_BYTES + 60),
            None,
        ),
    ]
    assert cases[0]["result"] == sealed.hex() == cases[3]["result"]
    assert cases[4]["result"][2:4] == "01"
    for e in two:  # no entry bytes in the clear
        assert e[11:19].hex() not in cases[0]["result"]
    for name, data, expect in (
        ("batch_bit_flipped", _flip(sealed, 40), "bad_tag"),
        ("batch_tag_flipped", _flip(sealed, 3), "bad_tag"),
        ("batch_count_too_high", sealed[:1] + b"\x03" + sealed[2:], "truncated"),
        ("batch_count_too_low", sealed[:1] + b"\x01" + sealed[2:], "too_long"),
        ("batch_header_only", sealed[:17], "truncated"),
        ("batch_not_a_batch", b"\x06" + sealed[1:], "unknown_type"),
    ):
        cases.append(_op_case(a, name, "open_batch", dict(base, batch=data.hex()), expect))
    cases.append(
        _op_case(
            a,
            "batch_of_other_lock",
            "open_batch",
            dict(base, batch=sealed.hex(), lock_id=OTHER_LOCK),
            "bad_tag",
        )
    )
    return cases


def audit_review_cases(base: dict[str, Any], entries: list[bytes]) -> list[Case]:
    a = vec_audit
    cases: list[Case] = []
    e1, e2, e3, e4, e5 = entries
    hashes = [audit.entry_hash(e) for e in entries]

    def log(name: str, events: list[dict[str, Any]], **over: Any) -> list[bytes]:
        cases.append(_op_case(a, name, "log", dict(base, events=events, **over), None))
        return [bytes.fromhex(e) for e in cases[-1]["result"]]

    def check(name: str, batch: list[bytes], expect: str | None, **over: Any) -> None:
        args = dict(base, next_seq=1, last_hash="00" * 16, entries=[e.hex() for e in batch])
        args.update(over)
        cases.append(_op_case(a, name, "check", args, expect))

    opening = {"time_s": VISIT, "event": 1, "op": 1, "status": "ok", "holder_id": HOLDER}
    failure = {"time_s": VISIT + 1, "event": 1, "op": 1, "status": "bad_tag"}
    log("log_failure_flood_is_summarised", [opening] + [failure] * 5, capacity=8)
    held = log("log_overflow_leaves_a_lost_marker", [opening] * 6, capacity=4)
    check("chain_lost_marker_accepted", held, None)
    first3 = [audit.entry_hash(e).hex() for e in _first_log(3)]
    check(
        "chain_lost_marker_for_entries_held",
        held[:1],
        None,
        next_seq=4,
        last_hash=first3[2],
        recent={"1": first3[0], "3": first3[2]},
    )
    check(
        "chain_lost_marker_for_other_entries",  # a restarted chain behind a marker
        held[:1],
        "restarted",
        next_seq=4,
        last_hash=first3[2],
        recent={"1": "11" * 16},
    )
    log("log_ack_prunes", [*_log_events(), {"ack": 2, "hash": hashes[1].hex()}])
    check("chain_gap_needs_resync", [e3, e4, e5], "gap")
    check("chain_gap_resync", [e3, e4, e5], None, resync=True)
    restarted = _first_log(2, time_s=VISIT + 999)
    recent = {"1": hashes[0].hex(), "5": hashes[4].hex()}
    after5 = {"next_seq": 6, "last_hash": hashes[4].hex(), "recent": recent}
    check("chain_restarted", restarted, "restarted", **after5)
    check("chain_restarted_resync", restarted, None, resync=True, **after5)
    check(
        "chain_old_entry_differs",
        [restarted[1]],
        "bad_chain",
        recent={"2": hashes[1].hex()},
        next_seq=6,
        last_hash=hashes[4].hex(),
    )
    check(
        "chain_old_entries_cannot_be_compared",
        [e1, e2],
        "bad_chain",
        next_seq=5,
        last_hash=hashes[3].hex(),
    )
    # A marker whose first lost entry has left the checker's memory: the
    # edge's durable store (lookup) decides; without it the batch is refused.
    wiped = _overflowed_log(time_s=VISIT + 999)  # a lock wiped and restarted
    after2 = {"next_seq": 3, "last_hash": first3[1], "recent": {"2": first3[1]}}
    check("chain_marker_unknown_entry_refused", wiped, "bad_chain", **after2)
    check("chain_marker_unknown_entry_refused_honest", held, "bad_chain", **after2)
    durable = {"1": first3[0]}
    check("chain_marker_durable_lookup_restart", wiped, "restarted", durable=durable, **after2)
    check("chain_marker_durable_lookup_overflow", held, None, durable=durable, **after2)
    return cases


def _overflowed_log(time_s: int) -> list[bytes]:
    # What a lock of capacity 4 holds after 6 openings: a lost marker for 1..3, then 4..6.
    log = audit.AuditLog(KEYS.audit_key, LOCK, capacity=4)
    for _ in range(6):
        log.append(time_s, 1, 1, "ok", holder_id=HOLDER)
    return log.entries


def _first_log(n: int, time_s: int = VISIT) -> list[bytes]:
    # Entries 1..n of a lock that logged n openings (nothing pruned).
    log = audit.AuditLog(KEYS.audit_key, LOCK, capacity=64)
    for _ in range(n):
        log.append(time_s, 1, 1, "ok", holder_id=HOLDER)
    return log.entries


def write(name: str, cases: list[Case]) -> None:
    names = [c["name"] for c in cases]
    assert len(names) == len(set(names)), f"duplicate names in {name}"
    doc = {"adapter": name, "cases": cases}
    (HERE / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{name}.json: {len(cases)} cases")


def main() -> None:
    write("hmac", hmac_cases())
    write("token", token_cases())
    write("handshake", handshake_cases())
    write("audit", audit_cases())


if __name__ == "__main__":
    main()
