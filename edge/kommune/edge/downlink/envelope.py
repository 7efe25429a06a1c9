"""The downlink envelope: a COSE_Sign1 message (RFC 9052 section 4.2) signed with
Ed25519 by the backend, holding one document for one agent or for a whole site.

Why COSE_Sign1 rather than a format of our own: it is the standard CBOR envelope for
exactly this (a payload, protected headers, one signature), so a backend can produce
it with any COSE library (pycose, go-cose, COSE-JAVA) as well as with our `sign`.

    18([                                      CBOR tag 18: COSE_Sign1
      h'A3 01 27 03 78.. 04 48..',            protected: bstr of the map
                                              {1: -8 (alg EdDSA), 3: CONTENT_TYPE, 4: kid}
      {},                                     unprotected: empty
      h'A8 ..',                               payload: bstr of the document map below
      h'..64 bytes..'                         Ed25519 over Sig_structure
    ])
    Sig_structure = ["Signature1", protected, h'', payload]   (RFC 9052 section 4.4)

The payload is a map with text keys, every one required, nothing else allowed:

    v           1 (this format)
    kind        "config" | "lamp-schedule" | "lock-epoch" | "deny-list" | "firmware"
    site        the site it is for
    agent       the agent it is for, or "*" for every agent of the site
    seq         the issuer's sequence number, 1..2^63-1, increasing per (site, kind)
    issued_ms   when it was signed, Unix time in milliseconds
    expires_ms  after this it must not be applied (> issued_ms)
    body        the document itself: a map with text keys (what it means is the
                consumer's business: the lock manager's, the lamp loop's, ...)

The envelope and the payload must be in deterministic CBOR: definite lengths, shortest
forms, map keys sorted length-first then bytewise (RFC 7049 section 3.9; what
`cbor2.dumps(..., canonical=True)` writes). The decoder re-encodes and compares, so one
document has exactly one encoding and its digest (SHA-256 of the payload bytes)
identifies it: the store tells "the same envelope again" from "another document with
the same seq" by it. Body values are null, booleans, integers, floats, text, bytes,
arrays and text-keyed maps, at most MAX_DEPTH deep; no tags.

`decode` is total: any bytes give an `Envelope` or raise `EnvelopeError` (with a
`reason`, see `Refusal`), nothing else. `Verifier.check` adds the signature, the
target and the clock: what the agent runs on every message.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

#: The kinds of document; each is one topic level (``.../down/<kind>``) and one stream
#: of the agent's decisions going north (``downlink/<kind>``).
KINDS: Final = ("config", "lamp-schedule", "lock-epoch", "deny-list", "firmware")
#: Targets every agent of the site.
ALL_AGENTS: Final = "*"
VERSION: Final = 1
#: COSE: tag of COSE_Sign1, header labels, and alg EdDSA.
COSE_SIGN1_TAG: Final = 18
_ALG, _CONTENT_TYPE, _KID = 1, 3, 4
_EDDSA = -8
CONTENT_TYPE: Final = "application/vnd.kommune.downlink+cbor"
#: Bytes of the key id: the start of SHA-256 over the raw 32-byte public key. Only
#: for messages ("signed by key 1a2b..., not ours"); verification never trusts it.
KID_BYTES: Final = 8
#: Larger envelopes are refused unread.
MAX_ENVELOPE_BYTES: Final = 64 * 1024
#: Nesting depth of the body.
MAX_DEPTH: Final = 16
MAX_SEQ: Final = (1 << 63) - 1
_FIELDS: Final = frozenset(("v", "kind", "site", "agent", "seq", "issued_ms", "expires_ms", "body"))


class Refusal(enum.StrEnum):
    """Why the agent refuses a downlink (the metric label and the log's `reason`)."""

    #: Not an envelope of this format (bad CBOR, missing field, not deterministic, ...).
    MALFORMED = "malformed"
    #: The signature does not verify with the backend key (another key, a changed byte).
    FORGED = "forged"
    #: For another site or agent, or on a topic of another kind.
    WRONG_TARGET = "wrong-target"
    #: Expired, older than max_age_s, or issued in the future (beyond the allowed skew).
    STALE = "stale"
    #: A lower seq than the one applied for its kind.
    REPLAYED = "replayed"
    #: The seq applied for its kind, but another document.
    CONFLICT = "conflict"


class EnvelopeError(ValueError):
    """A downlink that is refused: `reason` says which rule, the message says how."""

    def __init__(self, reason: Refusal, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Downlink:
    """A decoded document (its signature not yet checked unless `Verifier` gave it)."""

    kind: str
    site: str
    agent: str
    seq: int
    issued_ms: int
    expires_ms: int
    body: Mapping[str, Any]
    #: SHA-256 of the payload bytes: one document, one digest.
    digest: bytes


@dataclass(frozen=True, slots=True)
class Envelope:
    """An envelope taken apart: the document, and what its signature covers."""

    downlink: Downlink
    kid: bytes
    #: Sig_structure: the exact bytes the signature is over.
    signed: bytes
    signature: bytes


def key_id(public_key: Ed25519PublicKey) -> bytes:
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:KID_BYTES]


def _dumps(value: Any) -> bytes:
    return cbor2.dumps(value, canonical=True)


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    return _dumps(["Signature1", protected, b"", payload])


def sign(
    private_key: Ed25519PrivateKey,
    *,
    kind: str,
    site: str,
    agent: str,
    seq: int,
    issued_ms: int,
    expires_ms: int,
    body: Mapping[str, Any],
) -> bytes:
    """The envelope of one document, signed (the backend's side). ValueError if the
    document would not decode (so nothing unverifiable is ever signed)."""
    protected = _dumps(
        {_ALG: _EDDSA, _CONTENT_TYPE: CONTENT_TYPE, _KID: key_id(private_key.public_key())}
    )
    document = {
        "v": VERSION,
        "kind": kind,
        "site": site,
        "agent": agent,
        "seq": seq,
        "issued_ms": issued_ms,
        "expires_ms": expires_ms,
        "body": dict(body),
    }
    try:
        payload = _dumps(document)
    except (cbor2.CBOREncodeError, TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"the body cannot be CBOR: {exc}") from None
    signature = private_key.sign(_sig_structure(protected, payload))
    data = _dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [protected, {}, payload, signature]))
    try:
        decode(data)
    except EnvelopeError as exc:
        raise ValueError(str(exc)) from None
    return data


def _malformed(message: str) -> EnvelopeError:
    return EnvelopeError(Refusal.MALFORMED, message)


def _loads(data: bytes, what: str) -> Any:
    """CBOR that must be deterministic: the one encoding of what it decodes to."""
    try:
        value = cbor2.loads(data)
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise _malformed(f"{what}: not CBOR ({exc})") from None
    try:
        again = _dumps(value)
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError):
        again = None
    if again != data:
        raise _malformed(f"{what}: not deterministic CBOR (or bytes after its end)")
    return value


def _check_value(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _malformed(f"body: nested deeper than {MAX_DEPTH}")
    if value is None or isinstance(value, bool | int | str | bytes):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _malformed("body: NaN or infinity")
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check_value(item, depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _malformed(f"body: a map key that is not text ({key!r:.40})")
            _check_value(item, depth + 1)
        return
    raise _malformed(f"body: a value of type {type(value).__name__} (tags are not allowed)")


def _text(doc: Mapping[str, Any], name: str) -> str:
    value = doc[name]
    if not isinstance(value, str) or not value:
        raise _malformed(f"{name}: expected text, got {value!r:.40}")
    return value


def _int(doc: Mapping[str, Any], name: str, low: int, high: int) -> int:
    value = doc[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _malformed(f"{name}: expected an integer {low}..{high}, got {value!r:.40}")
    return value


def _document(payload: bytes) -> Downlink:
    doc = _loads(payload, "payload")
    if not isinstance(doc, Mapping):
        raise _malformed("payload: not a map")
    keys = set(doc)
    if keys != _FIELDS:
        missing = sorted(_FIELDS - {k for k in keys if isinstance(k, str)})
        extra = sorted(repr(k) for k in keys - _FIELDS)
        raise _malformed(
            "payload: "
            + "; ".join(
                p
                for p in (
                    f"missing {', '.join(missing)}" if missing else "",
                    f"unknown {', '.join(extra)}" if extra else "",
                )
                if p
            )
        )
    if doc["v"] != VERSION or isinstance(doc["v"], bool):
        raise _malformed(f"v: version {doc['v']!r:.20} is not {VERSION}")
    kind = _text(doc, "kind")
    if kind not in KINDS:
        raise _malformed(f"kind: {kind!r:.40} is not one of {', '.join(KINDS)}")
    site = _text(doc, "site")
    agent = _text(doc, "agent")
    seq = _int(doc, "seq", 1, MAX_SEQ)
    issued = _int(doc, "issued_ms", 0, MAX_SEQ)
    expires = _int(doc, "expires_ms", 0, MAX_SEQ)
    if expires <= issued:
        raise _malformed(f"expires_ms {expires} is not after issued_ms {issued}")
    body = doc["body"]
    if not isinstance(body, Mapping):
        raise _malformed("body: not a map")
    _check_value(body, 1)
    digest = hashlib.sha256(payload).digest()
    return Downlink(kind, site, agent, seq, issued, expires, body, digest)


def decode(data: bytes) -> Envelope:
    """Take an envelope apart without checking its signature; `EnvelopeError` (reason
    MALFORMED) for anything that is not one. Total."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _malformed(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_ENVELOPE_BYTES:
        raise _malformed(f"{len(data)} bytes, more than {MAX_ENVELOPE_BYTES}")
    outer = _loads(data, "envelope")
    if not isinstance(outer, cbor2.CBORTag) or outer.tag != COSE_SIGN1_TAG:
        raise _malformed("envelope: not a COSE_Sign1 (CBOR tag 18)")
    parts = outer.value
    if not isinstance(parts, list | tuple) or len(parts) != 4:
        raise _malformed("envelope: COSE_Sign1 is an array of 4")
    protected, unprotected, payload, signature = parts
    if not isinstance(protected, bytes) or not isinstance(payload, bytes):
        raise _malformed("envelope: protected header and payload must be byte strings")
    if not isinstance(unprotected, Mapping) or unprotected:
        raise _malformed("envelope: the unprotected header must be an empty map")
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise _malformed("envelope: the signature must be 64 bytes (Ed25519)")
    header = _loads(protected, "protected header")
    if not isinstance(header, Mapping) or set(header) != {_ALG, _CONTENT_TYPE, _KID}:
        raise _malformed("protected header: expected exactly alg (1), content type (3), kid (4)")
    if header[_ALG] != _EDDSA or isinstance(header[_ALG], bool):
        raise _malformed(f"protected header: alg {header[_ALG]!r:.20} is not EdDSA (-8)")
    if header[_CONTENT_TYPE] != CONTENT_TYPE:
        raise _malformed(f"protected header: content type is not {CONTENT_TYPE}")
    kid = header[_KID]
    if not isinstance(kid, bytes) or len(kid) != KID_BYTES:
        raise _malformed(f"protected header: kid must be {KID_BYTES} bytes")
    downlink = _document(payload)
    return Envelope(downlink, kid, _sig_structure(protected, payload), signature)


@dataclass(frozen=True, slots=True)
class Verifier:
    """The agent's checks of one envelope, in this order: it decodes (MALFORMED), its
    signature verifies with `public_key` (FORGED), it is for this site and agent and
    came on its kind's topic (WRONG_TARGET), and the clock allows it (STALE): not
    expired, issued at most `max_age_ms` ago and at most `max_skew_ms` in the future.
    Replays and conflicts need what was applied: the store checks those."""

    public_key: Ed25519PublicKey
    site: str
    agent: str
    max_age_ms: int
    max_skew_ms: int = 5 * 60 * 1000

    def check(self, data: bytes, now_ms: int, *, topic_kind: str | None = None) -> Downlink:
        envelope = decode(data)
        try:
            self.public_key.verify(envelope.signature, envelope.signed)
        except InvalidSignature:
            ours = key_id(self.public_key)
            whose = "" if envelope.kid == ours else f" (signed by key {envelope.kid.hex()})"
            raise EnvelopeError(
                Refusal.FORGED, f"the signature does not verify with key {ours.hex()}{whose}"
            ) from None
        dl = envelope.downlink
        if dl.site != self.site:
            raise EnvelopeError(Refusal.WRONG_TARGET, f"for site {dl.site!r}, not {self.site!r}")
        if dl.agent not in (self.agent, ALL_AGENTS):
            raise EnvelopeError(Refusal.WRONG_TARGET, f"for agent {dl.agent!r}, not {self.agent!r}")
        if topic_kind is not None and topic_kind != dl.kind:
            raise EnvelopeError(
                Refusal.WRONG_TARGET, f"a {dl.kind} document on the {topic_kind} topic"
            )
        if now_ms >= dl.expires_ms:
            ago = (now_ms - dl.expires_ms) / 1000
            raise EnvelopeError(Refusal.STALE, f"expired {ago:.0f} s ago")
        if dl.issued_ms > now_ms + self.max_skew_ms:
            ahead = (dl.issued_ms - now_ms) / 1000
            raise EnvelopeError(Refusal.STALE, f"issued {ahead:.0f} s in the future")
        if now_ms - dl.issued_ms > self.max_age_ms:
            age = (now_ms - dl.issued_ms) / 1000
            limit = self.max_age_ms // 1000
            raise EnvelopeError(
                Refusal.STALE, f"issued {age:.0f} s ago, more than max_age_s {limit}"
            )
        return dl
