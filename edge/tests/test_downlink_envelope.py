"""The downlink envelope: what `sign` makes `Verifier` accepts; forged, misaddressed,
stale and malformed envelopes are refused with their reason; the decoder is total."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from kommune.edge.downlink import envelope as E
from kommune.edge.downlink.envelope import EnvelopeError, Refusal, Verifier, decode, sign

NOW = 1_790_000_000_000
KEY = Ed25519PrivateKey.generate()  # made at test time: no key in the repository
OTHER = Ed25519PrivateKey.generate()


def envelope(key: Ed25519PrivateKey = KEY, **changes: Any) -> bytes:
    fields: dict[str, Any] = {
        "kind": "deny-list",
        "site": "nordby",
        "agent": "edge-1",
        "seq": 7,
        "issued_ms": NOW - 1000,
        "expires_ms": NOW + 3_600_000,
        "body": {"holders": ["h-17", "h-42"], "epoch": 3},
    }
    fields.update(changes)
    return sign(key, **fields)


VERIFIER = Verifier(KEY.public_key(), "nordby", "edge-1", max_age_ms=86_400_000)


def refusal(data: bytes, **kw: Any) -> EnvelopeError:
    with pytest.raises(EnvelopeError) as info:
        VERIFIER.check(data, kw.pop("now_ms", NOW), **kw)
    return info.value


def resign(payload: Any, key: Ed25519PrivateKey = KEY, **replace: Any) -> bytes:
    """An envelope signed correctly around any payload (bytes as given, or a value
    encoded canonically): for what `sign` itself refuses to make."""
    header = {1: -8, 3: E.CONTENT_TYPE, 4: E.key_id(key.public_key())}
    protected = replace.get("protected", cbor2.dumps(header, canonical=True))
    body = payload if isinstance(payload, bytes) else cbor2.dumps(payload, canonical=True)
    signature = key.sign(E._sig_structure(protected, body))
    parts = [protected, replace.get("unprotected", {}), body, signature]
    return cbor2.dumps(cbor2.CBORTag(18, parts), canonical=True)


def document(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "v": 1,
        "kind": "config",
        "site": "nordby",
        "agent": "*",
        "seq": 1,
        "issued_ms": NOW,
        "expires_ms": NOW + 1000,
        "body": {},
    }
    doc.update(changes)
    return doc


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"d": value}
    return value


# -- what is accepted --------------------------------------------------------------------


def test_a_signed_envelope_verifies_and_keeps_every_field() -> None:
    data = envelope()
    dl = VERIFIER.check(data, NOW, topic_kind="deny-list")
    assert (dl.kind, dl.site, dl.agent, dl.seq) == ("deny-list", "nordby", "edge-1", 7)
    assert (dl.issued_ms, dl.expires_ms) == (NOW - 1000, NOW + 3_600_000)
    assert dl.body == {"holders": ["h-17", "h-42"], "epoch": 3}
    # COSE_Sign1: tag 18 around [protected, {}, payload, signature].
    outer = cbor2.loads(data)
    assert outer.tag == 18 and len(outer.value) == 4
    assert cbor2.loads(outer.value[0]) == {1: -8, 3: E.CONTENT_TYPE, 4: decode(data).kid}
    # One document, one encoding: signing it again gives the same bytes (Ed25519 is
    # deterministic) and so the same digest.
    assert envelope() == data
    assert decode(envelope(seq=8)).downlink.digest != dl.digest


def test_a_site_wide_envelope_is_for_every_agent_of_the_site() -> None:
    dl = VERIFIER.check(envelope(agent="*"), NOW)
    assert dl.agent == "*"


def test_every_body_value_type_survives() -> None:
    body = {"n": None, "t": True, "i": -5, "big": 2**40, "f": 0.5, "s": "x", "b": b"\x00"}
    body["nested"] = {"list": [1, [2, {"deep": "er"}]]}
    assert VERIFIER.check(envelope(body=body), NOW).body == body


# -- refusals ----------------------------------------------------------------------------


def test_another_key_is_forged_and_the_message_names_both_keys() -> None:
    err = refusal(envelope(OTHER))
    assert err.reason is Refusal.FORGED
    assert E.key_id(KEY.public_key()).hex() in str(err)
    assert E.key_id(OTHER.public_key()).hex() in str(err)


@pytest.mark.parametrize("where", ["signature", "body"])
def test_a_flipped_byte_is_forged(where: str) -> None:
    data = bytearray(envelope())
    # The last byte is the signature's; "h-42" is in the signed body (still valid CBOR
    # after the flip: only the signature can tell).
    index = len(data) - 1 if where == "signature" else data.index(b"h-42") + 3
    data[index] ^= 0x01
    assert refusal(bytes(data)).reason is Refusal.FORGED


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"site": "sentrum"}, "for site 'sentrum'"),
        ({"agent": "edge-2"}, "for agent 'edge-2'"),
    ],
)
def test_another_site_or_agent_is_the_wrong_target(changes: dict[str, str], words: str) -> None:
    err = refusal(envelope(**changes))
    assert err.reason is Refusal.WRONG_TARGET and words in str(err)


def test_a_document_on_another_kinds_topic_is_the_wrong_target() -> None:
    err = refusal(envelope(), topic_kind="config")
    assert err.reason is Refusal.WRONG_TARGET
    assert str(err) == "a deny-list document on the config topic"


@pytest.mark.parametrize(
    ("changes", "now_ms", "words"),
    [
        ({"issued_ms": NOW - 10_000, "expires_ms": NOW - 5_000}, NOW, "expired 5 s ago"),
        ({"issued_ms": NOW, "expires_ms": NOW + 1}, NOW + 1, "expired 0 s ago"),
        ({"issued_ms": NOW + 301_000, "expires_ms": NOW + 900_000}, NOW, "301 s in the future"),
        (
            {"issued_ms": NOW - 90_000_000, "expires_ms": NOW + 1000},
            NOW,
            "issued 90000 s ago, more than max_age_s 86400",
        ),
    ],
)
def test_stale_envelopes(changes: dict[str, int], now_ms: int, words: str) -> None:
    err = refusal(envelope(**changes), now_ms=now_ms)
    assert err.reason is Refusal.STALE and words in str(err)


def test_a_little_clock_skew_is_allowed() -> None:
    assert VERIFIER.check(envelope(issued_ms=NOW + 299_000), NOW).seq == 7


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "envelope: not CBOR"),
        (b"\xa0", "not a COSE_Sign1"),
        (envelope() + b"\x00", "not deterministic CBOR (or bytes after its end)"),
        (resign(document(extra=1)), "unknown 'extra'"),
        (resign({k: v for k, v in document().items() if k != "seq"}), "missing seq"),
        (resign(document(v=2)), "version 2 is not 1"),
        (resign(document(kind="reboot")), "'reboot' is not one of"),
        (resign(document(seq=0)), "seq: expected an integer 1.."),
        (resign(document(seq=True)), "seq: expected an integer"),
        (resign(document(expires_ms=NOW)), "is not after issued_ms"),
        (resign(document(body=[1])), "body: not a map"),
        (resign(document(body={"x": float("nan")})), "NaN or infinity"),
        (resign(document(body={"x": cbor2.CBORTag(300, 0)})), "tags are not allowed"),
        (resign(document(body={1: 2})), "a map key that is not text"),
        (resign(document(body=_deep(20))), "nested deeper than 16"),
        (resign(b"\xbf\xff"), "payload: not deterministic CBOR"),
        (resign(document(), unprotected={1: -8}), "unprotected header must be an empty map"),
        (
            resign(document(), protected=cbor2.dumps({1: -7, 3: E.CONTENT_TYPE, 4: b"12345678"})),
            "not EdDSA",
        ),
        (b"\xd2\x84\x40\xa0\x40\x41\x00", "signature must be 64 bytes"),
        (b"\x00" * (E.MAX_ENVELOPE_BYTES + 1), "more than 65536"),
    ],
)
def test_malformed_envelopes_say_what_is_wrong(data: bytes, words: str) -> None:
    err = refusal(data)
    assert err.reason is Refusal.MALFORMED
    assert words in str(err), str(err)
    assert "\n" not in str(err)


def test_sign_refuses_what_would_not_verify() -> None:
    with pytest.raises(ValueError, match="kind: 'reboot'"):
        envelope(kind="reboot")
    with pytest.raises(ValueError, match="a map key that is not text"):
        envelope(body={1: "x"})
    with pytest.raises(ValueError, match="the body cannot be CBOR"):
        envelope(body={"x": object()})


# -- totality ----------------------------------------------------------------------------

GOOD = envelope()


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_decode_or_raise_envelope_error(data: bytes) -> None:
    try:
        decode(data)
    except EnvelopeError as err:
        assert isinstance(err.reason, Refusal)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(GOOD) - 1), st.integers(1, 255), st.sampled_from(["xor", "cut", "add"]))
def test_a_changed_envelope_is_refused_never_crashes(index: int, mask: int, how: str) -> None:
    data = bytearray(GOOD)
    if how == "xor":
        data[index] ^= mask
    elif how == "cut":
        del data[index:]
    else:
        data.insert(index, mask)
    with pytest.raises(EnvelopeError) as info:
        VERIFIER.check(bytes(data), NOW)
    assert info.value.reason in (Refusal.MALFORMED, Refusal.FORGED)


_CBOR_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=4) | st.integers(-3, 8), inner, max_size=4)
        | st.builds(cbor2.CBORTag, st.integers(0, 300), inner)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(_CBOR_VALUES, _CBOR_VALUES, st.binary(max_size=70))
def test_any_cbor_in_a_cose_shape_decodes_or_raises_envelope_error(
    header: Any, payload: Any, signature: bytes
) -> None:
    try:
        protected = cbor2.dumps(header, canonical=True)
        body = cbor2.dumps(payload, canonical=True)
        data = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, body, signature]), canonical=True)
    except Exception:
        return  # hypothesis made something cbor2 cannot encode: nothing to decode
    try:
        decode(data)
    except EnvelopeError:
        pass
