"""The token authority: minted tokens are sealed, open and verify on the lock, and
agree byte for byte with the lock's own HMAC and seal implementation."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kommune.edge.keys import LockKeys, derive_lock_keys
from kommune.edge.token_authority import (
    DEFAULT_MAX_WINDOW_S,
    IssuedToken,
    TokenAuthority,
    TokenAuthorityError,
    parse_rights,
    rights_text,
)
from kommune.hil.paths import VECTORS_DIR
from kommune.protocols import token as T
from kommune.protocols.audit import AuditLog
from kommune.protocols.errors import BAD_TAG, ProtocolError
from kommune.protocols.lock_client import HolderSession
from kommune.protocols.lock_verifier import LockVerifier
from kommune.protocols.lock_wire import RIGHT_LOCK, RIGHT_READ_AUDIT, RIGHT_UNLOCK
from kommune.protocols.seal import SealKey

SITE = bytes(range(0x10, 0x30))  # the published test site key (test_key=True below)
OTHER_SITE = hashlib.sha256(b"another site, test only").digest()
START = 1_767_258_000


def _authority(**kw: object) -> TokenAuthority:
    return TokenAuthority(SITE, test_key=True, **kw)  # type: ignore[arg-type]


def _keys(lock_id: int = 1017) -> LockKeys:
    return derive_lock_keys(SITE, lock_id, test_key=True)


def _issue(authority: TokenAuthority, **over: int) -> IssuedToken:
    args = {
        "holder_id": 4242,
        "lock_id": 1017,
        "not_before_s": START,
        "not_after_s": START + 3600,
        "rights": RIGHT_UNLOCK | RIGHT_LOCK,
    }
    args.update(over)
    return authority.issue(**args)


ids = st.integers(1, 2**32 - 1)


@given(
    st.tuples(ids, ids, ids),
    st.integers(0, 2**32 - 1 - DEFAULT_MAX_WINDOW_S),
    st.integers(0, DEFAULT_MAX_WINDOW_S),
    st.integers(1, 15),
)
def test_minted_token_matches_the_lock_implementation(
    token_holder_lock: tuple[int, int, int], start: int, length: int, rights: int
) -> None:
    token_id, holder, lock = token_holder_lock
    # cryptography's HMAC (authority) and hashlib-only HMAC (lock) agree.
    authority = _authority(epochs={lock: 5}, new_token_id=lambda: token_id)
    issued = authority.issue(
        holder_id=holder,
        lock_id=lock,
        not_before_s=start,
        not_after_s=start + length,
        rights=rights,
    )
    key = SealKey(_keys(lock).token_key)
    tok = T.verify(issued.token, key, lock, now_s=start, epoch=5, right=0)
    assert (tok.token_id, tok.holder_id, tok.rights) == (token_id, holder, rights)
    assert T.seal_token(key, tok) == issued.token
    assert T.session_key(key, tok) == issued.session_key


def test_golden_token_is_what_the_authority_mints() -> None:
    doc = json.loads((VECTORS_DIR / "token.json").read_text())
    case = next(c for c in doc["cases"] if c["name"] == "sealed_visit_token")
    f = case["args"]["token"]
    authority = _authority(epochs={f["lock_id"]: f["epoch"]}, new_token_id=lambda: f["token_id"])
    issued = authority.issue(
        holder_id=f["holder_id"],
        lock_id=f["lock_id"],
        not_before_s=f["not_before_s"],
        not_after_s=f["not_after_s"],
        rights=f["rights"],
    )
    assert issued.token.hex() == case["result"]
    assert (issued.holder_id, issued.not_after_s) == (f["holder_id"], f["not_after_s"])


def test_a_phone_opens_the_lock_with_an_issued_token() -> None:
    issued = _issue(_authority(epochs={1017: 3}))
    lk = _keys()
    lock = LockVerifier(1017, lk.token_key, lk.edge_key, 3, AuditLog(lk.audit_key, 1017))
    holder = HolderSession(issued.token, issued.session_key, issued.lock_id)
    conn = lock.connect(1000)
    challenge = lock.challenge(conn, b"n" * 16, 1000, START + 60)
    request = holder.request(challenge, RIGHT_UNLOCK, b"h" * 16)
    verdict = lock.respond(conn, request, 1050, START + 60)
    assert verdict.ok
    assert holder.result(verdict.reply).ok


def test_another_sites_token_does_not_open_the_lock() -> None:
    issued = _issue(TokenAuthority(OTHER_SITE))
    key = SealKey(_keys().token_key)
    with pytest.raises(ProtocolError, match=BAD_TAG):
        T.authenticate(issued.token, key, 1017)


def test_token_ids_are_random_and_nonzero() -> None:
    authority = _authority()
    ids = {_issue(authority).token_id for _ in range(32)}
    assert len(ids) == 32 and 0 not in ids


@pytest.mark.parametrize(
    "over",
    [
        {"not_after_s": START + DEFAULT_MAX_WINDOW_S + 1},
        {"not_after_s": START - 1},
        {"rights": 0},
        {"rights": 0x10},
        {"holder_id": 0},
        {"lock_id": 0},
    ],
)
def test_bad_requests_are_refused(over: dict[str, int]) -> None:
    with pytest.raises(TokenAuthorityError):
        _issue(_authority(), **over)


def test_window_limit_is_configurable() -> None:
    authority = _authority(max_window_s=600)
    _issue(authority, not_after_s=START + 600)
    with pytest.raises(TokenAuthorityError, match="601 s exceeds the 600 s limit"):
        _issue(authority, not_after_s=START + 601)


def test_no_authority_without_a_real_site_key() -> None:
    with pytest.raises(ValueError):
        TokenAuthority(bytes(32))
    with pytest.raises(ValueError, match="published test key"):
        TokenAuthority(SITE)  # only with test_key=True


def test_session_key_is_never_printed() -> None:
    issued = _issue(_authority())
    assert issued.session_key.hex() not in repr(issued)
    assert "session_key" not in repr(issued)


def test_rights_by_name() -> None:
    assert parse_rights("unlock") == RIGHT_UNLOCK
    assert parse_rights("unlock, read-audit") == RIGHT_UNLOCK | RIGHT_READ_AUDIT
    assert rights_text(parse_rights("admin,lock")) == "lock,admin"
    with pytest.raises(TokenAuthorityError, match="unknown right 'open'"):
        parse_rights("unlock,open")


def test_the_authority_mints_only_at_the_lock_epoch() -> None:
    # Reviewer: a caller-given epoch (a typo, or 2**32 - 1) revoked every
    # live token for good. Now the authority owns the epoch; it only goes up.
    authority = _authority(epochs={1017: 3})
    assert _issue(authority).epoch == 3 and _issue(authority, lock_id=1018).epoch == 0
    assert authority.revoke_all(1017) == 4 and _issue(authority).epoch == 4
    with pytest.raises(TokenAuthorityError, match="un-revoke"):
        authority.set_epoch(1017, 3)
    with pytest.raises(TokenAuthorityError, match="not a u32"):
        authority.set_epoch(1017, 2**32)
    authority.set_epoch(1017, 9)
    assert authority.epoch(1017) == 9
