"""The parking sensor's advertisement (firmware/parking/advert.py): manufacturer data
under company 0xFFFF (the test id) = "KP" | version 1 | node id u16 BE | 8-byte report."""

from __future__ import annotations

from collections.abc import Mapping

from kommune.protocols.parking_report import REPORT_BYTES

COMPANY_ID = 0xFFFF
MAGIC = b"KP"
VERSION = 1
_HEAD_BYTES = 5  # magic, version, node id


def parse_advert(manufacturer_data: Mapping[int, bytes]) -> tuple[int, bytes] | None:
    """(node id, report bytes) if this is a parking advert of our version, else None.
    The report is not verified here."""
    data = manufacturer_data.get(COMPANY_ID)
    if data is None or len(data) != _HEAD_BYTES + REPORT_BYTES:
        return None
    if data[:2] != MAGIC or data[2] != VERSION:
        return None
    return int.from_bytes(data[3:5], "big"), bytes(data[5:])
