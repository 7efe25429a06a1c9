# Incremental node-link receiver: feed it bytes as they arrive (UART reads,
# socket chunks, any split), get whole frames back through a callback.
#
# Packets end at 0x00. Each is decoded in place in one bounded buffer into one
# reused Frame, so a good frame allocates nothing. A bad packet (bad CRC, bad
# COBS, too long, ...) is counted and dropped, and decoding resumes at the next
# 0x00: feed() never raises for any input. Empty packets (0x00 0x00) are
# ignored, so a sender may also put a 0x00 *before* each frame, which ends any
# line noise in front of it instead of letting the noise spoil the frame.
from kommune.protocols.errors import TOO_LONG, ProtocolError
from kommune.protocols.frame import MAX_ENCODED, Frame

TYPE_CHECKING = False
if TYPE_CHECKING:  # only the type checkers see this import
    from collections.abc import Callable


class StreamDecoder:
    def __init__(self, on_frame: "Callable[[Frame], object]") -> None:
        # on_frame(frame) gets this decoder's one Frame, valid until it returns;
        # keep frame.copy() if you need it longer. Not re-entrant.
        self._on_frame = on_frame
        self.frame = Frame()
        self._buf = bytearray(MAX_ENCODED)
        self._n = 0  # bytes of the current packet; MAX_ENCODED + 1 = overflowed
        self.frames_ok = 0
        self.frames_bad = 0
        self.bytes_dropped = 0
        self.errors: dict[str, int] = {}  # reason -> count
        self.last_error = ""

    def feed(self, data: bytes | bytearray | memoryview, start: int = 0, end: int = -1) -> int:
        # Consumes data[start:end] (end < 0: to the end); returns how many
        # frames it delivered. Raises only what on_frame raises (the bytes
        # after that frame are then not consumed).
        if end < 0:
            end = len(data)
        buf = self._buf
        n = self._n
        delivered = 0
        for i in range(start, end):
            b = data[i]
            if b:
                if n < MAX_ENCODED:
                    buf[n] = b
                    n += 1
                else:
                    n = MAX_ENCODED + 1
                    self.bytes_dropped += 1
                continue
            if n == 0:
                continue
            self._n = 0
            if n > MAX_ENCODED:
                self._reject(TOO_LONG, MAX_ENCODED)
                n = 0
                continue
            try:
                self.frame.decode_in_place(buf, 0, n)
            except ProtocolError as e:
                self._reject(e.reason, n)
                n = 0
                continue
            n = 0
            self.frames_ok += 1
            delivered += 1
            self._on_frame(self.frame)
        self._n = n
        return delivered

    def reset(self) -> None:
        # Drops a partial packet (e.g. after the link was reopened).
        self.bytes_dropped += min(self._n, MAX_ENCODED)
        self._n = 0

    def _reject(self, reason: str, nbytes: int) -> None:
        self.frames_bad += 1
        self.bytes_dropped += nbytes
        self.errors[reason] = self.errors.get(reason, 0) + 1
        self.last_error = reason
