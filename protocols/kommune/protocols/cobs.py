# COBS, Consistent Overhead Byte Stuffing (Cheshire & Baker, IEEE/ACM ToN
# 1999): removes every 0x00 from a packet so 0x00 can delimit packets on a
# byte stream. Each zero becomes a code byte giving the distance to the next
# zero; one code byte leads.
#
# Limited to packets of at most MAX_DATA (253) bytes: then no block reaches
# 254 bytes, so the 0xFF "no zero follows" code never occurs, the encoding is
# always exactly one byte longer than the data, and both directions work in
# place in one buffer with no allocation. A 0xFF code is therefore rejected.
from kommune.protocols.errors import BAD_ENCODING, TOO_LONG, TRUNCATED, ProtocolError

MAX_DATA = 253  # longest packet these functions encode
MAX_ENCODED = 254  # MAX_DATA + its code byte


def encode_in_place(buf: bytearray, n: int) -> int:
    # Encodes the n data bytes at buf[1:n+1] into buf[0:n+1]; returns n + 1.
    if n > MAX_DATA:
        raise ProtocolError(TOO_LONG, "COBS packet of %d bytes > %d" % (n, MAX_DATA))
    last = 0
    for i in range(1, n + 1):
        if buf[i] == 0:
            buf[last] = i - last
            last = i
    buf[last] = n + 1 - last
    return n + 1


def decode_in_place(buf: bytearray, start: int, end: int) -> int:
    # Decodes buf[start:end] in place; the data then lies at buf[start+1:start+1+k]
    # and k is returned. The caller has split the stream on 0x00, so only code
    # bytes are checked: each must be non-zero and land inside the packet.
    n = end - start
    if n <= 0:
        raise ProtocolError(TRUNCATED, "empty COBS packet")
    if n > MAX_ENCODED:
        raise ProtocolError(TOO_LONG, "COBS packet of %d bytes > %d" % (n, MAX_ENCODED))
    pos = start
    code = buf[pos]
    while True:
        if code == 0:
            raise ProtocolError(BAD_ENCODING, "zero byte inside a COBS packet")
        nxt = pos + code
        if nxt > end:
            raise ProtocolError(BAD_ENCODING, "COBS code at %d runs past the end" % (pos - start))
        if nxt == end:
            return n - 1
        code = buf[nxt]
        buf[nxt] = 0
        pos = nxt


def encode(data: bytes | bytearray | memoryview) -> bytes:
    # COBS of data, without the trailing delimiter.
    n = len(data)
    if n > MAX_DATA:
        raise ProtocolError(TOO_LONG, "COBS packet of %d bytes > %d" % (n, MAX_DATA))
    buf = bytearray(n + 1)
    buf[1:] = data
    encode_in_place(buf, n)
    return bytes(buf)


def decode(data: bytes | bytearray | memoryview) -> bytes:
    # Inverse of encode(); data must not contain the delimiter.
    buf = bytearray(data)
    if buf.find(b"\x00") >= 0:
        raise ProtocolError(BAD_ENCODING, "zero byte inside a COBS packet")
    k = decode_in_place(buf, 0, len(buf))
    return bytes(buf[1 : 1 + k])
