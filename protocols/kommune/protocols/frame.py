# Node-link frame: header, payload and CRC, COBS-encoded and ended by 0x00.
#
# Raw frame (before COBS), big-endian; the README has the full table:
#   0 version | 1 flags | 2-3 src | 4-5 dst | 6-7 seq | 8 type | 9 len |
#   10.. payload (len bytes, <= 240) | CRC-16/CCITT-FALSE over all before it
# The CRC is the last two bytes in every version, so a receiver checks it
# before it trusts (or rejects) the version byte.
#
# Hot path: a Frame made once is refilled by decode_in_place() from a buffer
# the caller owns; its payload stays in that buffer (payload_buf[payload_start:
# payload_end]), so decoding allocates nothing.
from kommune.protocols.cobs import decode_in_place as _cobs_decode
from kommune.protocols.cobs import encode_in_place as _cobs_encode
from kommune.protocols.crc16 import crc16
from kommune.protocols.errors import (
    BAD_CRC,
    BAD_ENCODING,
    BAD_LENGTH,
    BAD_VALUE,
    BAD_VERSION,
    TOO_LONG,
    TRUNCATED,
    ProtocolError,
)

try:
    from micropython import const
except ImportError:  # CPython: const() is the identity
    const = int  # type: ignore[assignment]

VERSION = 1
HEADER_SIZE = 10
CRC_SIZE = 2
MAX_PAYLOAD = 240
MIN_RAW = HEADER_SIZE + CRC_SIZE  # an empty payload
MAX_RAW = MIN_RAW + MAX_PAYLOAD  # 252
MAX_ENCODED = MAX_RAW + 1  # COBS adds one code byte: 253
MAX_WIRE = MAX_ENCODED + 1  # and the 0x00 delimiter: 254
DELIMITER = 0x00
# In a frame buffer the COBS code byte comes first, so the payload starts here.
PAYLOAD_OFFSET = 1 + HEADER_SIZE

# Addresses (16 bits): the edge, nodes, groups, broadcast.
EDGE = 0x0000  # the link's coordinator (the edge agent)
FIRST_NODE = 0x0001
LAST_NODE = 0xEFFE
UNASSIGNED = 0xEFFF  # a node that has not been provisioned yet
GROUP_BASE = 0xF000  # 0xF000 + group id (0..4094)
MAX_GROUP = 0x0FFE
BROADCAST = 0xFFFF

# Flags.
FLAG_ACK_REQUESTED = 0x01  # the receiver answers with ACK or NACK (unicast only)
FLAG_RETRY = 0x02  # a retransmission: same seq, same content as before
_RESERVED_FLAGS = const(0xFC)


def group_address(group: int) -> int:
    if not 0 <= group <= MAX_GROUP:
        raise ProtocolError(BAD_VALUE, "group %d not in 0..%d" % (group, MAX_GROUP))
    return GROUP_BASE + group


def is_unicast(addr: int) -> bool:
    return 0 <= addr < GROUP_BASE


def is_group(addr: int) -> bool:
    return GROUP_BASE <= addr < BROADCAST


def group_of(addr: int) -> int:
    # The group id of a group address, -1 for any other address.
    return addr - GROUP_BASE if GROUP_BASE <= addr < BROADCAST else -1


def accepts(dst: int, me: int, groups: list[int] | tuple[int, ...] = ()) -> bool:
    # Whether a node with address `me`, member of `groups`, takes a frame to `dst`.
    if dst in (me, BROADCAST):
        return True
    return GROUP_BASE <= dst < BROADCAST and (dst - GROUP_BASE) in groups


def _check_routing(flags: int, src: int, dst: int) -> None:
    # The header rules beyond field widths; shared by encoder and decoder.
    if flags & _RESERVED_FLAGS:
        raise ProtocolError(BAD_VALUE, "reserved flag bits set: 0x%02x" % flags)
    if src >= GROUP_BASE:
        raise ProtocolError(BAD_VALUE, "source 0x%04x is not a unicast address" % src)
    if flags & FLAG_ACK_REQUESTED and dst >= GROUP_BASE:
        # Acks from a whole group at once would collide on a multi-drop bus.
        raise ProtocolError(BAD_VALUE, "ack requested from group/broadcast 0x%04x" % dst)


def seal(
    buf: bytearray,
    msg_type: int,
    payload_len: int,
    *,
    dst: int,
    src: int,
    seq: int,
    flags: int = 0,
    version: int = VERSION,
) -> int:
    # Finishes a frame whose payload the caller wrote at buf[PAYLOAD_OFFSET:]:
    # header, CRC, COBS in place, delimiter. Returns the wire length; the
    # wire bytes are buf[:length]. buf needs MAX_WIRE bytes for any payload.
    if not 0 <= payload_len <= MAX_PAYLOAD:
        raise ProtocolError(TOO_LONG, "payload of %d bytes > %d" % (payload_len, MAX_PAYLOAD))
    if not (0 <= version <= 0xFF and 0 <= msg_type <= 0xFF and 0 <= flags <= 0xFF):
        raise ProtocolError(BAD_VALUE, "version, type or flags not a byte")
    if not (0 <= src <= 0xFFFF and 0 <= dst <= 0xFFFF and 0 <= seq <= 0xFFFF):
        raise ProtocolError(BAD_VALUE, "src, dst or seq not 16 bits")
    _check_routing(flags, src, dst)
    buf[1] = version
    buf[2] = flags
    buf[3] = src >> 8
    buf[4] = src & 0xFF
    buf[5] = dst >> 8
    buf[6] = dst & 0xFF
    buf[7] = seq >> 8
    buf[8] = seq & 0xFF
    buf[9] = msg_type
    buf[10] = payload_len
    end = PAYLOAD_OFFSET + payload_len
    crc = crc16(buf, 1, end)
    buf[end] = crc >> 8
    buf[end + 1] = crc & 0xFF
    n = _cobs_encode(buf, end + 1)
    buf[n] = DELIMITER
    return n + 1


class Frame:
    __hash__ = None  # type: ignore[assignment]  # mutable, so unhashable

    def __init__(
        self,
        msg_type: int = 0,
        payload: bytes | bytearray | memoryview = b"",
        *,
        dst: int = BROADCAST,
        src: int = EDGE,
        seq: int = 0,
        flags: int = 0,
        version: int = VERSION,
    ) -> None:
        self.version = version
        self.flags = flags
        self.src = src
        self.dst = dst
        self.seq = seq
        self.msg_type = msg_type
        # The payload is payload_buf[payload_start:payload_end]; after
        # decode_in_place() that is the caller's buffer, valid until it is reused.
        self.payload_buf = payload
        self.payload_start = 0
        self.payload_end = len(payload)

    def payload(self) -> bytes:
        # A copy of the payload (allocates; the hot path reads payload_buf).
        return bytes(self.payload_buf[self.payload_start : self.payload_end])

    def ack_requested(self) -> bool:
        return bool(self.flags & FLAG_ACK_REQUESTED)

    def copy(self) -> "Frame":
        # A Frame that owns its payload, for keeping beyond the next decode.
        return Frame(
            self.msg_type,
            self.payload(),
            dst=self.dst,
            src=self.src,
            seq=self.seq,
            flags=self.flags,
            version=self.version,
        )

    def encode_into(self, buf: bytearray) -> int:
        # Wire bytes into buf (>= MAX_WIRE bytes); returns their length.
        n = self.payload_end - self.payload_start
        if not 0 <= n <= MAX_PAYLOAD:
            raise ProtocolError(TOO_LONG, "payload of %d bytes > %d" % (n, MAX_PAYLOAD))
        src = self.payload_buf
        base = PAYLOAD_OFFSET - self.payload_start
        for i in range(self.payload_start, self.payload_end):
            buf[base + i] = src[i]
        return seal(
            buf,
            self.msg_type,
            n,
            dst=self.dst,
            src=self.src,
            seq=self.seq,
            flags=self.flags,
            version=self.version,
        )

    def to_bytes(self) -> bytes:
        # Wire bytes: COBS(raw frame) followed by the 0x00 delimiter.
        buf = bytearray(MAX_WIRE)
        n = self.encode_into(buf)
        return bytes(buf[:n])

    def decode_in_place(self, buf: bytearray, start: int, end: int) -> "Frame":
        # Fills this Frame from the COBS packet buf[start:end] (no delimiter,
        # no 0x00 inside), decoding it in place. Raises ProtocolError.
        if end - start > MAX_ENCODED:
            raise ProtocolError(TOO_LONG, "frame of %d bytes > %d" % (end - start, MAX_ENCODED))
        raw_len = _cobs_decode(buf, start, end)
        if raw_len < MIN_RAW:
            raise ProtocolError(TRUNCATED, "frame of %d bytes < %d" % (raw_len, MIN_RAW))
        h = start + 1  # the raw frame starts after the COBS code byte
        crc_at = h + raw_len - CRC_SIZE
        if crc16(buf, h, crc_at) != (buf[crc_at] << 8 | buf[crc_at + 1]):
            raise ProtocolError(BAD_CRC, "")
        if buf[h] != VERSION:
            raise ProtocolError(
                BAD_VERSION, "frame version %d, this side speaks %d" % (buf[h], VERSION)
            )
        n = buf[h + 9]
        if n != raw_len - MIN_RAW:
            raise ProtocolError(BAD_LENGTH, "length field %d, payload %d" % (n, raw_len - MIN_RAW))
        flags = buf[h + 1]
        src = buf[h + 2] << 8 | buf[h + 3]
        dst = buf[h + 4] << 8 | buf[h + 5]
        seq = buf[h + 6] << 8 | buf[h + 7]
        msg_type = buf[h + 8]
        _check_routing(flags, src, dst)
        self.version = VERSION
        self.flags = flags
        self.src = src
        self.dst = dst
        self.seq = seq
        self.msg_type = msg_type
        self.payload_buf = buf
        self.payload_start = h + HEADER_SIZE
        self.payload_end = crc_at
        return self

    @classmethod
    def from_bytes(cls, wire: bytes | bytearray | memoryview) -> "Frame":
        # One frame's wire bytes, with or without its trailing delimiter. The
        # returned Frame owns a copy of them. Raises ProtocolError.
        buf = bytearray(wire)
        end = len(buf)
        if end and buf[end - 1] == DELIMITER:
            end -= 1
        if end == 0:
            raise ProtocolError(TRUNCATED, "empty frame")
        if end > MAX_ENCODED:
            raise ProtocolError(TOO_LONG, "frame of %d bytes > %d" % (end, MAX_ENCODED))
        zero = buf.find(b"\x00")
        if 0 <= zero < end:
            raise ProtocolError(BAD_ENCODING, "delimiter inside a frame at %d" % zero)
        return cls().decode_in_place(buf, 0, end)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Frame)
            and self.version == other.version
            and self.flags == other.flags
            and self.src == other.src
            and self.dst == other.dst
            and self.seq == other.seq
            and self.msg_type == other.msg_type
            and self.payload() == other.payload()
        )

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __repr__(self) -> str:
        return "Frame(type=0x%02x, src=0x%04x, dst=0x%04x, seq=%d, flags=0x%02x, payload=%r)" % (
            self.msg_type,
            self.src,
            self.dst,
            self.seq,
            self.flags,
            self.payload(),
        )
