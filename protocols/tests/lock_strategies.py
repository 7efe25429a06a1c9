"""Hypothesis strategies for the lock protocol: tokens, handshake and audit messages."""

from __future__ import annotations

from hypothesis import strategies as st

from kommune.protocols import audit
from kommune.protocols import handshake as hs
from kommune.protocols.lock_wire import (
    CMD_EPOCH_SET,
    CMD_TIME_SET,
    MSG_COMMAND,
    MSG_REQUEST,
    RIGHTS_ALL,
    STATUSES,
)
from kommune.protocols.token import TOKEN_BYTES, Token

U32 = 0xFFFF_FFFF
ids = st.integers(1, U32)
u32s = st.integers(0, U32)
# Lock keys: 32 bytes, never one repeated byte (the lock refuses those).
keys = st.binary(min_size=32, max_size=32).filter(lambda k: len(set(k)) > 1)
nonces = st.binary(min_size=16, max_size=16)
tags = st.binary(min_size=16, max_size=16)
ops = st.sampled_from([1, 2, 4, 8])
cmds = st.sampled_from([CMD_TIME_SET, CMD_EPOCH_SET])
statuses = st.sampled_from(STATUSES)


@st.composite
def tokens(draw: st.DrawFn) -> Token:
    start = draw(u32s)
    return Token(
        token_id=draw(ids),
        holder_id=draw(ids),
        lock_id=draw(ids),
        not_before_s=start,
        not_after_s=draw(st.integers(start, U32)),
        rights=draw(st.integers(1, RIGHTS_ALL)),
        epoch=draw(u32s),
    )


# Sealed tokens as a phone carries them: opaque, version byte 2.
sealed_tokens = st.binary(min_size=TOKEN_BYTES - 1, max_size=TOKEN_BYTES - 1).map(
    lambda b: b"\x02" + b
)


challenges = st.builds(hs.Challenge, ids, u32s, u32s, nonces)
requests = st.builds(hs.Request, ops, nonces, nonces, sealed_tokens, tags)
commands = st.builds(hs.Command, cmds, nonces, nonces, u32s, tags)
results = st.one_of(
    st.builds(hs.Result, st.just(MSG_REQUEST), ops, statuses, tags),
    st.builds(hs.Result, st.just(MSG_COMMAND), cmds, statuses, tags),
)
notices = st.builds(hs.Notice, st.integers(0, 255), statuses)
handshake_messages = st.one_of(challenges, requests, commands, results, notices)

entries = st.builds(
    audit.AuditEntry,
    seq=ids,
    time_s=u32s,
    event=st.integers(1, 7),
    op=st.integers(0, 255),
    status=statuses,
    holder_id=u32s,
    token_id=u32s,
    arg=u32s,
    prev_hash=tags,
    mac=tags,
)
acks = st.builds(audit.Ack, u32s, tags, tags)
