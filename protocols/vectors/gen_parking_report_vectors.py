"""Writes protocols/vectors/parking_report.json, the parking report's golden vectors.

Run only after a deliberate change of the report's bytes, then review the diff:

    .venv/bin/python protocols/vectors/gen_parking_report_vectors.py

The keys are derived from the published test site key (keys.PUBLISHED_TEST_KEYS) with
kommune.edge.parking_keys; every tag is computed here independently with the standard
library's hmac and checked against the implementation before it is written.
"""

from __future__ import annotations

import hmac as std_hmac
import json
import sys
from hashlib import sha256
from pathlib import Path
from typing import Any

from kommune.edge.parking_keys import parking_key
from kommune.protocols import parking_report as pr
from kommune.protocols.errors import ProtocolError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vec_parking_report as adapter

HERE = Path(__file__).resolve().parent
# TEST-ONLY: the golden vectors' site key (keys.PUBLISHED_TEST_KEYS).
SITE_KEY = bytes(range(0x10, 0x30))
NODE = 301
OTHER_NODE = 302
KEY = parking_key(SITE_KEY, NODE, test_key=True)
OTHER_KEY = parking_key(SITE_KEY, OTHER_NODE, test_key=True)

Case = dict[str, Any]


def independent_report(
    key: bytes, node: int, state: int, seq: int, code: int, *, hb: bool
) -> bytes:
    head = (state << 30 | int(hb) << 29 | seq << 8 | code).to_bytes(4, "big")
    mac = std_hmac.new(key, pr.CONTEXT + node.to_bytes(2, "big") + head, sha256).digest()
    return head + mac[:4]


def _op(name: str, op: str, args: dict[str, Any], expect: str | None = None) -> Case:
    """A case whose result (or error) is what the implementation gives now; `expect` is
    the error the case exists to show (None: it must succeed)."""
    try:
        result = adapter.op(op, args)
    except ProtocolError as e:
        assert e.reason == expect, f"{name}: expected {expect}, got {e.reason}"
        return {"name": name, "op": op, "args": args, "error": e.reason}
    assert expect is None, f"{name}: expected error {expect}, got {result!r}"
    return {"name": name, "op": op, "args": args, "result": result}


def _report(state: int, seq: int, duration_s: int, heartbeat: bool = False) -> dict[str, Any]:
    return {
        "key": KEY.hex(),
        "node": NODE,
        "state": state,
        "seq": seq,
        "duration_s": duration_s,
        "heartbeat": heartbeat,
    }


def cases() -> list[Case]:
    out: list[Case] = []
    good = [
        ("occupied_after_free_2h", pr.OCCUPIED, 42, 7200, False),
        ("free_after_occupied_95s", pr.FREE, 43, 95, False),
        ("heartbeat_unknown", pr.UNKNOWN, 44, 0, True),
        ("first_report", pr.FREE, 0, 0, False),
        ("max_seq_saturated_duration", pr.OCCUPIED, pr.MAX_SEQ, 10**7, True),
    ]
    for name, state, seq, duration_s, hb in good:
        case = _op("encode_" + name, "encode", _report(state, seq, duration_s, hb))
        wire = bytes.fromhex(case["result"])
        code = pr.duration_code(duration_s)
        assert wire == independent_report(KEY, NODE, state, seq, code, hb=hb), name
        out.append(case)
        verify = {"key": KEY.hex(), "node": NODE, "hex": wire.hex()}
        out.append(_op("verify_" + name, "verify", verify))
    wire = bytes.fromhex(out[0]["result"])
    bad = [
        ("verify_flipped_state_bit", KEY, NODE, bytes([wire[0] ^ 0x40]) + wire[1:], "bad_tag"),
        (
            "verify_flipped_seq_bit",
            KEY,
            NODE,
            wire[:2] + bytes([wire[2] ^ 1]) + wire[3:],
            "bad_tag",
        ),
        ("verify_flipped_tag_bit", KEY, NODE, wire[:7] + bytes([wire[7] ^ 0x80]), "bad_tag"),
        ("verify_other_node", KEY, OTHER_NODE, wire, "bad_tag"),
        ("verify_other_key", OTHER_KEY, NODE, wire, "bad_tag"),
        ("verify_truncated", KEY, NODE, wire[:7], "truncated"),
        ("verify_empty", KEY, NODE, b"", "truncated"),
        ("verify_too_long", KEY, NODE, wire + b"\x00", "too_long"),
        (
            "verify_state_3_with_good_tag",
            KEY,
            NODE,
            independent_report(KEY, NODE, 3, 42, 0, hb=False),
            "bad_value",
        ),
    ]
    for name, key, node, data, expect in bad:
        out.append(_op(name, "verify", {"key": key.hex(), "node": node, "hex": data.hex()}, expect))
    out.append(_op("decode_unauthenticated", "decode", {"hex": wire.hex()}))
    out.append(_op("encode_state_3", "encode", _report(3, 1, 0), "bad_value"))
    out.append(_op("encode_seq_over_21_bits", "encode", _report(0, pr.MAX_SEQ + 1, 0), "bad_value"))
    for seconds in (0, 15, 16, 31, 32, 95, 3600, 7200, 86400, pr.MAX_CODED_S, 10**9):
        out.append(_op(f"duration_code_{seconds}", "duration_code", {"seconds": seconds}))
    for code in (0, 0x10, 0x1F, 0x7C, 0xFF):
        out.append(_op(f"code_duration_s_{code}", "code_duration_s", {"code": code}))
    out.append(_op("code_256", "code_duration_s", {"code": 256}, "bad_value"))
    return out


def document() -> dict[str, Any]:
    return {"adapter": "parking_report", "cases": cases()}


def main() -> None:
    text = json.dumps(document(), indent=1) + "\n"
    (HERE / "parking_report.json").write_text(text)
    print(f"wrote {HERE / 'parking_report.json'}")


if __name__ == "__main__":
    main()
