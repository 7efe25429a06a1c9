"""The token authority: mints access tokens for staff phones.

A token lets one holder operate one lock during one time window with some
rights, at the lock's current revocation epoch. The authority keeps that epoch
per lock and mints only at it; it only goes up (`revoke_all`), and the lock
accepts a token at most `lock_verifier.MAX_EPOCH_STEP` epochs ahead of its
own. The token is sealed (its fields encrypted and authenticated) under the
lock's token key, so the phone carries an opaque blob it cannot read and
nobody learns a visit's holder or window from the air. The holder also gets a
session key, which the lock re-derives from the token, so the lock stores
nothing per holder. Layout and security argument: protocols/LOCK.md.

The byte layout comes from `kommune.protocols.token` (one source of truth);
the seal (SIV on HMAC-SHA-256, `kommune.protocols.seal`) and the session key
are computed here with `cryptography`'s HMAC, an implementation independent
of the lock's `kommune.protocols.hmac_sha256`. The tests check that the two
agree byte for byte.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes, hmac

from kommune.edge.keys import check_site_key, derive_lock_key
from kommune.protocols import token as tokens
from kommune.protocols.errors import ProtocolError
from kommune.protocols.lock_wire import TAG_BYTES, VERSION
from kommune.protocols.seal import ENC_KEY_LABEL

#: A visit token should cover a visit or a shift; a week is the most we mint.
DEFAULT_MAX_WINDOW_S = 7 * 24 * 3600


class TokenAuthorityError(ValueError):
    """A token request the authority refuses (one line, for the CLI)."""


@dataclass(frozen=True)
class IssuedToken:
    """A minted token: the sealed bytes for the phone, the session key it must keep
    secret, and the fields in clear for the phone's own use (finding the lock,
    checking the window before connecting): they never go on the air."""

    token: bytes
    session_key: bytes = field(repr=False)
    token_id: int
    holder_id: int
    lock_id: int
    not_before_s: int
    not_after_s: int
    rights: int
    epoch: int


def _random_token_id() -> int:
    return secrets.randbelow(0xFFFF_FFFF) + 1  # 1..2**32-1; 0 means "none" in audit entries


def _hmac_sha256(key: bytes, *parts: bytes) -> bytes:
    mac = hmac.HMAC(key, hashes.SHA256())
    for part in parts:
        mac.update(part)
    return mac.finalize()


def _seal_body(token_key: bytes, body: bytes) -> tuple[bytes, bytes]:
    """(sealed token, tag): SIV on HMAC-SHA-256 under the lock's token key.

    tag = HMAC(token key, "TOK2" || version || body)[:16]; the body is XORed
    with HMAC(HMAC(token key, "ENC2"), tag || u32(0)) (25 bytes: one block).
    """
    head = bytes((VERSION,))
    tag = _hmac_sha256(token_key, tokens.TAG_LABEL, head, body)[:TAG_BYTES]
    enc_key = _hmac_sha256(token_key, ENC_KEY_LABEL)
    stream = b""
    for block in range((len(body) + 31) // 32):
        stream += _hmac_sha256(enc_key, tag, block.to_bytes(4, "big"))
    sealed = bytes(b ^ k for b, k in zip(body, stream, strict=False))
    return head + tag + sealed, tag


class TokenAuthority:
    """Mints tokens under the per-lock token keys derived from one site key."""

    def __init__(
        self,
        site_key: bytes,
        *,
        epochs: Mapping[int, int] | None = None,
        max_window_s: int = DEFAULT_MAX_WINDOW_S,
        new_token_id: Callable[[], int] = _random_token_id,
        test_key: bool = False,
    ) -> None:
        # test_key: accept a published test site key (vectors and tests only).
        self._test_key = test_key
        self._site_key = check_site_key(site_key, test_key=test_key)
        self.max_window_s = max_window_s
        self._new_token_id = new_token_id
        # lock_id -> current revocation epoch (0 until set); the keystore
        # persists it and hands it back here.
        self._epochs: dict[int, int] = {}
        for lock_id, epoch in (epochs or {}).items():
            self.set_epoch(lock_id, epoch)

    def epoch(self, lock_id: int) -> int:
        """The revocation epoch tokens for lock_id are minted at."""
        return self._epochs.get(lock_id, 0)

    def set_epoch(self, lock_id: int, epoch: int) -> None:
        """Restore a lock's epoch (from the keystore); it never goes down."""
        if not 0 <= epoch <= 0xFFFF_FFFF:
            raise TokenAuthorityError(f"epoch {epoch} is not a u32")
        current = self.epoch(lock_id)
        if epoch < current:
            raise TokenAuthorityError(
                f"epoch {epoch} < lock {lock_id}'s epoch {current}: that would un-revoke"
            )
        self._epochs[lock_id] = epoch

    def revoke_all(self, lock_id: int) -> int:
        """Revoke every token of lock_id: the epoch goes up by one; returns it.

        Re-issue the live tokens afterwards. A lock follows by an edge epoch-set
        COMMAND, or by the first new token (at most MAX_EPOCH_STEP behind).
        """
        epoch = self.epoch(lock_id) + 1
        self.set_epoch(lock_id, epoch)
        return epoch

    def issue(
        self,
        *,
        holder_id: int,
        lock_id: int,
        not_before_s: int,
        not_after_s: int,
        rights: int,
    ) -> IssuedToken:
        """A token for holder_id on lock_id, valid not_before_s..not_after_s (site time),
        at the lock's current epoch (`epoch(lock_id)`): never a caller's."""
        if not_after_s - not_before_s > self.max_window_s:
            raise TokenAuthorityError(
                f"window of {not_after_s - not_before_s} s exceeds the {self.max_window_s} s limit"
            )
        epoch = self.epoch(lock_id)
        token_id = self._new_token_id()
        draft = tokens.Token(
            token_id=token_id,
            holder_id=holder_id,
            lock_id=lock_id,
            not_before_s=not_before_s,
            not_after_s=not_after_s,
            rights=rights,
            epoch=epoch,
        )
        try:
            body = tokens.encode_body(draft)
        except ProtocolError as e:
            raise TokenAuthorityError(f"cannot mint this token: {e}") from e
        token_key = derive_lock_key(self._site_key, "token", lock_id, test_key=self._test_key)
        token, tag = _seal_body(token_key, body)
        session_key = _hmac_sha256(
            token_key, tokens.SESSION_LABEL, token_id.to_bytes(4, "big"), tag
        )
        return IssuedToken(
            token=token,
            session_key=session_key,
            token_id=token_id,
            holder_id=holder_id,
            lock_id=lock_id,
            not_before_s=not_before_s,
            not_after_s=not_after_s,
            rights=rights,
            epoch=epoch,
        )


def parse_rights(text: str) -> int:
    """The rights bitmask for names such as "unlock,read-audit" (`kommune token issue`)."""
    by_name = dict(tokens.RIGHT_NAMES)
    mask = 0
    for name in (n.strip() for n in text.split(",")):
        if name not in by_name:
            known = ", ".join(by_name)
            raise TokenAuthorityError(f"unknown right {name!r}; known rights: {known}")
        mask |= by_name[name]
    return mask


def rights_text(rights: int) -> str:
    """The rights bitmask as names, e.g. "unlock,lock"."""
    return tokens.rights_text(rights)
