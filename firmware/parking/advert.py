# The parking node's advertisement: non-connectable, flags + manufacturer
# data (company 0xFFFF, the test id; a product uses its own):
#   "KP" | version 1 | node id u16 BE | the 8-byte report (parking_report)
# 20 bytes of the 31. The node id is the radio's addressing (a LoRaWAN
# DevAddr would be); the report's tag covers it.
import struct

from common import adv
from micropython import const

COMPANY_ID = const(0xFFFF)
MAGIC = b"KP"
VERSION = const(1)


def payload(node_id: int, report: bytes) -> bytes:
    data = MAGIC + struct.pack(">BH", VERSION, node_id) + report
    return adv.payload(manufacturer=(COMPANY_ID, data))
