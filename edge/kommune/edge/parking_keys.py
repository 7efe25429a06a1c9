"""Per-bay parking report keys, derived from the site key like the lock keys.

Each parking sensor gets one 32-byte key, HKDF-SHA-256 of the site key with the info
label b"kommune/v1/parking/report/" + node id (u32, big-endian): the flash of one
sensor reveals neither the site key nor another sensor's key, and the key does one
job (the tag of protocols/kommune/protocols/parking_report.py).

    key = parking_key(site_key, 301)      # for /node/identity.json and the edge's key file
"""

from __future__ import annotations

from kommune.edge.keys import KeyMaterialError, check_site_key, hkdf_sha256

PARKING_KEY_BYTES = 32
_INFO_PREFIX = b"kommune/v1/parking/report/"
#: Node-link unicast addresses (protocols/README.md, "Addresses"): a bay's node id.
_MIN_NODE = 0x0001
_MAX_NODE = 0xEFFE


def parking_key_info(node_id: int) -> bytes:
    """HKDF info label: b"kommune/v1/parking/report/" + node id (u32, big-endian)."""
    if not _MIN_NODE <= node_id <= _MAX_NODE:
        raise KeyMaterialError(f"parking node id {node_id} is not in {_MIN_NODE}..{_MAX_NODE}")
    return _INFO_PREFIX + node_id.to_bytes(4, "big")


def parking_key(site_key: bytes, node_id: int, *, test_key: bool = False) -> bytes:
    """The report key of parking sensor `node_id` (test_key: see keys.check_site_key)."""
    info = parking_key_info(node_id)
    checked = check_site_key(site_key, test_key=test_key)
    return hkdf_sha256(checked, info=info, length=PARKING_KEY_BYTES)
