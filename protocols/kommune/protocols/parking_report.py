# The authenticated parking report: 8 bytes a battery parking node broadcasts
# (in a BLE advertisement's manufacturer data, or as a LoRaWAN/NB-IoT payload)
# and the edge verifies. Layout (big-endian; protocols/README.md, "Parking
# report"):
#
#   0..3  head  u32: state (bits 31-30) | heartbeat (bit 29) | seq (bits 28-8)
#               | duration code (bits 7-0)
#   4..7  tag   HMAC-SHA-256(key, CONTEXT + node id u16 + head)[:4]
#
# `key` is the node's own report key (HKDF from the site key,
# kommune.edge.parking_keys); the node id is not sent in the 8 bytes (the
# radio's framing carries it) but the tag covers it. seq is 21 bits, counts
# every new report (event or heartbeat) and never goes back: the edge keeps
# the last one it accepted per node and refuses any report not above it.
# The duration is log-coded in one byte (duration_code / code_duration_s).
from kommune.protocols.errors import BAD_TAG, BAD_VALUE, TOO_LONG, TRUNCATED, ProtocolError
from kommune.protocols.hmac_sha256 import HmacKey, equal

try:
    from micropython import const
except ImportError:  # CPython: const() is the identity
    const = int  # type: ignore[assignment]

REPORT_BYTES = const(8)
TAG_BYTES = const(4)
MAX_SEQ = const(0x1FFFFF)  # 21 bits
MAX_NODE = const(0xFFFF)
# Bay states (as parking.Occupancy); 3 is not a state.
FREE = const(0)
OCCUPIED = const(1)
UNKNOWN = const(2)
# Domain separation: the tag of a parking report is never the tag of anything else.
CONTEXT = b"kommune/v1/parking-report"
# The largest duration a code says exactly; longer saturates to code 0xFF.
MAX_CODED_S = const(507904)  # (16 + 15) << 14, ~5.9 days


def duration_code(seconds: int) -> int:
    # Seconds -> one byte, rounding down: code e<<4 | m means m s for e == 0,
    # else (16 + m) << (e - 1) s; steps are at most 1/16 (6 %) of the value.
    if seconds < 0:
        raise ProtocolError(BAD_VALUE, "negative duration")
    if seconds < 16:
        return seconds
    e = 1
    while seconds >> (e - 1) > 31:
        e += 1
    if e > 15:
        return 0xFF
    return e << 4 | ((seconds >> (e - 1)) - 16)


def code_duration_s(code: int) -> int:
    # The shortest duration that has `code` (0..255).
    if not 0 <= code <= 0xFF:
        raise ProtocolError(BAD_VALUE, "duration code %d" % code)
    e = code >> 4
    m = code & 0x0F
    return m if e == 0 else (16 + m) << (e - 1)


class Report:
    # A report's fields; duration_s is what the code says (rounded down).
    __hash__ = None  # type: ignore[assignment]  # mutable, so unhashable

    def __init__(
        self, *, state: int = FREE, seq: int = 0, duration_s: int = 0, heartbeat: bool = False
    ) -> None:
        self.state = state
        self.seq = seq
        self.duration_s = duration_s
        self.heartbeat = heartbeat

    def head(self) -> bytes:
        # The 4 head bytes; ProtocolError(bad_value) for a field out of range.
        if not FREE <= self.state <= UNKNOWN:
            raise ProtocolError(BAD_VALUE, "state %d" % self.state)
        if not 0 <= self.seq <= MAX_SEQ:
            raise ProtocolError(BAD_VALUE, "seq %d" % self.seq)
        word = self.state << 30 | self.seq << 8 | duration_code(self.duration_s)
        if self.heartbeat:
            word |= 1 << 29
        return word.to_bytes(4, "big")

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Report)
            and self.state == other.state
            and self.seq == other.seq
            and self.duration_s == other.duration_s
            and self.heartbeat == other.heartbeat
        )

    def __repr__(self) -> str:
        return "Report(state=%d, seq=%d, duration_s=%d, heartbeat=%s)" % (
            self.state,
            self.seq,
            self.duration_s,
            self.heartbeat,
        )


def _node_bytes(node_id: int) -> bytes:
    if not 0 <= node_id <= MAX_NODE:
        raise ProtocolError(BAD_VALUE, "node id %d" % node_id)
    return node_id.to_bytes(2, "big")


def tag(key: HmacKey, node_id: int, head: "bytes | memoryview") -> bytes:
    return key.digest(CONTEXT, _node_bytes(node_id), head)[:TAG_BYTES]


def encode(key: HmacKey, node_id: int, report: Report) -> bytes:
    # The 8 report bytes.
    head = report.head()
    return head + tag(key, node_id, head)


def decode(data: "bytes | bytearray | memoryview") -> Report:
    # The fields, NOT authenticated (for logs and tests): use verify().
    if len(data) < REPORT_BYTES:
        raise ProtocolError(TRUNCATED, "%d of 8 bytes" % len(data))
    if len(data) > REPORT_BYTES:
        raise ProtocolError(TOO_LONG, "%d bytes, a report is 8" % len(data))
    word = int.from_bytes(bytes(data[:4]), "big")
    state = word >> 30
    if state > UNKNOWN:
        raise ProtocolError(BAD_VALUE, "state %d" % state)
    return Report(
        state=state,
        seq=(word >> 8) & MAX_SEQ,
        duration_s=code_duration_s(word & 0xFF),
        heartbeat=bool(word >> 29 & 1),
    )


def verify(key: HmacKey, node_id: int, data: "bytes | bytearray | memoryview") -> Report:
    # The report if its tag is right for this node and key, else
    # ProtocolError: truncated / too_long / bad_tag / bad_value (in this
    # order: nothing unauthenticated is interpreted). Replay is the caller's
    # check (seq above the last one accepted).
    if len(data) < REPORT_BYTES:
        raise ProtocolError(TRUNCATED, "%d of 8 bytes" % len(data))
    if len(data) > REPORT_BYTES:
        raise ProtocolError(TOO_LONG, "%d bytes, a report is 8" % len(data))
    raw = bytes(data)
    if not equal(tag(key, node_id, raw[:4]), raw[4:]):
        raise ProtocolError(BAD_TAG, "report tag")
    return decode(raw)
