# What the parking node keeps in flash (formats: README.md):
#   /node/identity.json  {"address": 301, "hw_rev": 1, "parking_key": "<64 hex>"}
#   /parking/seq.bin     u32 seq ceiling, then its complement (big-endian)
#   /parking/calib.json  {"baseline": [x, y, z], "t_ref": degC, "k": [kx, ky, kz]}
import binascii
import json
import struct

from common import files
from micropython import const

IDENTITY_PATH = "/node/identity.json"
SEQ_PATH = "/parking/seq.bin"
CALIB_PATH = "/parking/calib.json"
_KEY_BYTES = const(32)
_MAX_NODE = const(0xEFFE)
# Seqs are reserved in blocks: one flash write per SEQ_BLOCK reports, and a
# reboot skips at most the rest of a block (never reuses a seq).
SEQ_BLOCK = const(32)
MAX_SEQ = const(0x1FFFFF)


def identity(path: str = IDENTITY_PATH) -> "tuple[int, bytes, str]":
    # (node id, report key, "") or (0, b"", why the node is unprovisioned).
    raw = files.read(path)
    if raw is None:
        return 0, b"", "no identity"
    try:
        doc = json.loads(raw)
        node = int(doc["address"])
        key = binascii.unhexlify(doc["parking_key"])
    except (ValueError, KeyError, TypeError):
        return 0, b"", "identity malformed"
    if not 1 <= node <= _MAX_NODE:
        return 0, b"", "bad node id"
    if len(key) != _KEY_BYTES or key == bytes(_KEY_BYTES) or len(set(key)) == 1:
        return 0, b"", "bad key"
    return node, bytes(key), ""


class SeqStore:
    def __init__(self, path: str = SEQ_PATH) -> None:
        self.path = path
        self.ceiling = 0
        raw = files.read(path)
        if raw is not None and len(raw) == 8:
            n, check = struct.unpack(">II", raw)
            if n ^ check == 0xFFFFFFFF:
                self.ceiling = n
        # Every seq below the stored ceiling may have been sent before this boot.
        self.next = self.ceiling

    def take(self) -> int:
        # The next seq, its block reserved in flash first (OSError: none sent).
        seq = self.next
        if seq > MAX_SEQ:
            raise OverflowError("report seqs used up: re-provision the node")
        if seq >= self.ceiling:
            ceiling = min(seq + SEQ_BLOCK, MAX_SEQ + 1)
            files.ensure_dir("/parking")
            files.write_atomic(self.path, struct.pack(">II", ceiling, ceiling ^ 0xFFFFFFFF))
            self.ceiling = ceiling
        self.next = seq + 1
        return seq


def load_calibration(path: str = CALIB_PATH) -> "dict | None":
    raw = files.read(path)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def save_calibration(doc: dict, path: str = CALIB_PATH) -> None:
    files.ensure_dir("/parking")
    files.write_atomic(path, json.dumps(doc).encode())
