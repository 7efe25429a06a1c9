# Message payloads: one table-driven codec for every message, and the registry
# that maps a frame's type number to its message class.
#
# A message class lists its fields in _LAYOUT as (name, kind, lo, hi):
#   U8/U16/U32, I8/I16/I32   big-endian integer, value in lo..hi
#   RAW                      fixed-size bytes, lo == hi == size
#   BLOB                     u8 length, then that many bytes, length in lo..hi
#   TAIL                     the rest of the payload (last field), length in lo..hi
#   U16_LIST                 the rest as u16 values (last field), count in lo..hi
# Payloads are exact: a short one is TRUNCATED, a long one TOO_LONG; nothing is
# padded or cut. Integer fields decode into the preallocated instance with
# index arithmetic only, so decode() of an integer-only message allocates
# nothing on MicroPython (a bytes field allocates its copy).
from kommune.protocols.errors import (
    BAD_LENGTH,
    BAD_VALUE,
    TOO_LONG,
    TRUNCATED,
    UNKNOWN_TYPE,
    ProtocolError,
)
from kommune.protocols.frame import EDGE, MAX_PAYLOAD, MAX_WIRE, PAYLOAD_OFFSET, Frame, seal

# Field kinds; an integer kind is its width in bytes, negated when signed.
U8 = 1
U16 = 2
U32 = 4
I8 = -1
I16 = -2
I32 = -4
RAW = 16
BLOB = 17
TAIL = 18
U16_LIST = 19


def _u16_list(data: bytes | bytearray | memoryview, p: int, count: int) -> list[int]:
    # Outside Message.decode: a comprehension there would make its locals
    # closure cells, allocated on every call, even for integer-only messages.
    return [data[i] << 8 | data[i + 1] for i in range(p, p + 2 * count, 2)]


class Message:
    __hash__ = None  # type: ignore[assignment]  # mutable, so unhashable
    TYPE = 0
    # (name, kind, lo, hi) per field, in wire order
    _LAYOUT: tuple[tuple[str, int, int, int], ...] = ()

    def decode(
        self, data: bytes | bytearray | memoryview, start: int = 0, end: int = -1
    ) -> "Message":
        # Fills this message from data[start:end] (end < 0: to the end;
        # end <= len(data)). After a ProtocolError its fields are undefined.
        if end < 0:
            end = len(data)
        p = start
        for name, kind, lo, hi in self._LAYOUT:
            if kind < RAW:
                width = kind if kind > 0 else -kind
                if end - p < width:
                    raise ProtocolError(TRUNCATED, "%s needs %d bytes" % (name, width))
                v = 0
                for i in range(p, p + width):
                    v = (v << 8) | data[i]
                p += width
                if kind < 0 and v >= 1 << (8 * width - 1):
                    v -= 1 << (8 * width)
                if not lo <= v <= hi:
                    raise ProtocolError(BAD_VALUE, "%s=%d not in %d..%d" % (name, v, lo, hi))
                setattr(self, name, v)
                continue
            # variable size: find the length n, bound it, then copy
            if kind == BLOB:
                if p >= end:
                    raise ProtocolError(TRUNCATED, "%s length missing" % name)
                n = data[p]
                p += 1
                if n > end - p:
                    raise ProtocolError(TRUNCATED, "%s of %d bytes, %d left" % (name, n, end - p))
            else:
                n = end - p
                if kind == U16_LIST:
                    if n & 1:
                        raise ProtocolError(BAD_LENGTH, "%s: odd byte count %d" % (name, n))
                    n >>= 1
                elif kind == RAW and n > hi:
                    n = hi  # fixed size: what follows belongs to the next field
            if n < lo:
                raise ProtocolError(TRUNCATED, "%s: %d < %d" % (name, n, lo))
            if n > hi:
                raise ProtocolError(
                    TOO_LONG if kind != BLOB else BAD_LENGTH, "%s: %d > %d" % (name, n, hi)
                )
            if kind == U16_LIST:
                setattr(self, name, _u16_list(data, p, n))
                p += 2 * n
            else:
                setattr(self, name, bytes(data[p : p + n]))
                p += n
        if p != end:
            raise ProtocolError(TOO_LONG, "%d bytes after the last field" % (end - p))
        self._check()
        return self

    def _check(self) -> None:
        # Constraints across fields; a subclass raises ProtocolError(BAD_VALUE).
        return

    def encoded_size(self) -> int:
        # Encoded payload length in bytes.
        n = 0
        for name, kind, _, _ in self._LAYOUT:
            if kind < RAW:
                n += kind if kind > 0 else -kind
            elif kind == BLOB:
                n += 1 + len(getattr(self, name))
            elif kind == U16_LIST:
                n += 2 * len(getattr(self, name))
            else:
                n += len(getattr(self, name))
        return n

    def encode_into(self, buf: bytearray, offset: int = 0) -> int:
        # Writes the payload at buf[offset:]; returns the end offset.
        self._check()
        p = offset
        for name, kind, lo, hi in self._LAYOUT:
            v = getattr(self, name)
            if kind < RAW:
                if not isinstance(v, int) or not lo <= v <= hi:
                    raise ProtocolError(BAD_VALUE, "%s=%r not in %d..%d" % (name, v, lo, hi))
                width = kind if kind > 0 else -kind
                if v < 0:
                    v += 1 << (8 * width)
                for i in range(p + width - 1, p - 1, -1):
                    buf[i] = v & 0xFF
                    v >>= 8
                p += width
                continue
            if kind == U16_LIST:
                right_type = isinstance(v, list)
            else:
                right_type = isinstance(v, (bytes, bytearray))
            if not right_type:
                raise ProtocolError(BAD_VALUE, "%s: %r has the wrong type" % (name, v))
            n = len(v)
            if not lo <= n <= hi:
                raise ProtocolError(BAD_LENGTH, "%s: length %d not in %d..%d" % (name, n, lo, hi))
            if kind == BLOB:
                buf[p] = n
                p += 1
            if kind == U16_LIST:
                for x in v:
                    if not 0 <= x <= 0xFFFF:
                        raise ProtocolError(BAD_VALUE, "%s: %r not a u16" % (name, x))
                    buf[p] = x >> 8
                    buf[p + 1] = x & 0xFF
                    p += 2
            else:
                buf[p : p + n] = v
                p += n
        return p

    def to_bytes(self) -> bytes:
        # Every layout fits MAX_PAYLOAD (a test checks), and encode_into()
        # checks each field before writing it.
        buf = bytearray(MAX_PAYLOAD)
        return bytes(buf[: self.encode_into(buf)])

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> "Message":
        return cls().decode(data, 0, len(data))

    def fields(self) -> dict[str, object]:
        return {f[0]: getattr(self, f[0]) for f in self._LAYOUT}

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Message)
            and type(other) is type(self)
            and self.fields() == other.fields()
        )

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __repr__(self) -> str:
        parts = ["%s=%r" % (f[0], getattr(self, f[0])) for f in self._LAYOUT]
        return "%s(%s)" % (type(self).__name__, ", ".join(parts))


# type number -> message class; filled by the message modules as they load.
REGISTRY: dict[int, type[Message]] = {}


def register(*classes: type[Message]) -> None:
    # Adds message classes to REGISTRY, each type number once.
    for cls in classes:
        t = cls.TYPE
        if not 1 <= t <= 0xFF or t in REGISTRY:
            raise ValueError("message type 0x%02x invalid or taken" % t)
        REGISTRY[t] = cls


def message_class(msg_type: int) -> type[Message]:
    cls = REGISTRY.get(msg_type)
    if cls is None:
        raise ProtocolError(UNKNOWN_TYPE, "message type 0x%02x" % msg_type)
    return cls


def decode_frame(frame: Frame) -> Message:
    # A new message from a decoded frame (allocates; see MessagePool).
    msg = message_class(frame.msg_type)()
    return msg.decode(frame.payload_buf, frame.payload_start, frame.payload_end)


class MessagePool:
    # One reusable instance per message type: decode() refills and returns it,
    # so a node's receive loop allocates nothing for integer-only messages.
    # The instance is valid until the next frame of the same type (and holds
    # undefined fields after that frame raised ProtocolError).
    def __init__(self, classes: list[type[Message]] | None = None) -> None:
        if classes is None:
            classes = list(REGISTRY.values())
        self._by_type: dict[int, Message] = {}
        for cls in classes:
            self._by_type[cls.TYPE] = cls()

    def decode(self, frame: Frame) -> Message:
        msg = self._by_type.get(frame.msg_type)
        if msg is None:
            raise ProtocolError(UNKNOWN_TYPE, "message type 0x%02x" % frame.msg_type)
        return msg.decode(frame.payload_buf, frame.payload_start, frame.payload_end)


def encode_frame_into(
    buf: bytearray, msg: Message, *, dst: int, seq: int, src: int = EDGE, flags: int = 0
) -> int:
    # The wire bytes of msg in one frame, into buf (>= MAX_WIRE bytes); returns
    # their length.
    end = msg.encode_into(buf, PAYLOAD_OFFSET)
    return seal(buf, msg.TYPE, end - PAYLOAD_OFFSET, dst=dst, src=src, seq=seq, flags=flags)


def encode_frame(msg: Message, *, dst: int, seq: int, src: int = EDGE, flags: int = 0) -> bytes:
    buf = bytearray(MAX_WIRE)
    n = encode_frame_into(buf, msg, dst=dst, seq=seq, src=src, flags=flags)
    return bytes(buf[:n])
