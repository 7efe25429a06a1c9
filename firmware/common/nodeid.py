# Who the node is and which boot this is: the identity file written at
# provisioning, the boot counter in flash, the reset cause as the Hello says it.
#
#   /node/identity.json  {"address": 18, "hw_rev": 1}  (no file: UNASSIGNED, 0)
#   /node/boot.bin       u16 boot count, then its complement (4 bytes,
#                        big-endian), replaced atomically at every boot
import json
import struct

from common import files
from kommune.protocols import frame

IDENTITY_PATH = "/node/identity.json"
BOOT_PATH = "/node/boot.bin"


def identity(path: str = IDENTITY_PATH) -> "tuple[int, int]":
    # (node address, board revision); UNASSIGNED if not provisioned.
    raw = files.read(path)
    try:
        doc = json.loads(raw) if raw is not None else {}
        address = int(doc.get("address", frame.UNASSIGNED))
        hw_rev = int(doc.get("hw_rev", 0))
    except (ValueError, TypeError, AttributeError):
        return frame.UNASSIGNED, 0
    if not frame.FIRST_NODE <= address <= frame.UNASSIGNED or not 0 <= hw_rev <= 255:
        return frame.UNASSIGNED, 0
    return address, hw_rev


def next_boot(path: str = BOOT_PATH) -> int:
    # Counts this boot in flash and returns the new count (wraps at 65536). A
    # missing or damaged file counts from 0; a flash that cannot be written
    # still boots (the count is then the old one + 1, not kept).
    raw = files.read(path)
    count = 0
    if raw is not None and len(raw) == 4:
        n, check = struct.unpack(">HH", raw)
        if n ^ check == 0xFFFF:
            count = n
    count = (count + 1) & 0xFFFF
    try:
        files.ensure_dir("/node")
        files.write_atomic(path, struct.pack(">HH", count, count ^ 0xFFFF))
    except OSError:
        pass
    return count


def reset_cause(machine_cause: int) -> int:
    # machine.reset_cause() -> Hello.reset_cause: MicroPython's numbering
    # (PWRON 1, HARD 2, WDT 3, DEEPSLEEP 4, SOFT 5) is the protocol's.
    return machine_cause if 1 <= machine_cause <= 6 else 0
