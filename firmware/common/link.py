# The node-link client: frames over machine.UART to and from the edge
# (protocols/README.md, "Node link framing"). Runs on the board.
#
# Receiving: one task reads the UART into a fixed buffer and feeds a
# StreamDecoder; each good frame is decoded into a pooled message (no
# allocation per frame for integer-only messages) and handed to `handler`,
# which returns ACKED or a nack code. Frames that ask for an answer get Ack or
# Nack; the answer is remembered (dedup.RecentFrames) and a retransmission
# (FLAG_RETRY) that was seen before gets the same answer without the handler
# running again.
#
# Sending: reliable messages (queued with send()) go one at a time with
# FLAG_ACK_REQUESTED and wait for the edge's Ack; no answer within the
# timeout: the same frame again with FLAG_RETRY, the timeout doubling up to
# max_backoff_ms (plus jitter), for as long as it takes. Nack(busy) is "retry
# later"; any other Nack drops the message. The first message queued (the
# Hello) is the first reliable frame on the wire, and nothing else reliable
# leaves before it is acked. Answers (Ack/Nack) and unreliable messages
# (send_now) go out at once.
import asyncio
import os
import sys
import time

from micropython import const

from kommune.protocols import frame as F
from kommune.protocols import runtime
from kommune.protocols.dedup import ACKED, UNSEEN, RecentFrames
from kommune.protocols.errors import ProtocolError
from kommune.protocols.message import Message, MessagePool, encode_frame_into
from kommune.protocols.stream import StreamDecoder

_RX_CHUNK = const(64)
_ZERO = b"\x00"  # a leading delimiter ends any line noise before a frame
_RELIABLE = const(0x01)  # FLAG_ACK_REQUESTED
_RETRY = const(0x02)  # FLAG_RETRY


def _ms() -> int:
    t: int = time.ticks_ms()  # type: ignore[assignment]  # an int on every port
    return t


class NodeLink:
    def __init__(
        self,
        uart: object,
        *,
        address: int,
        classes: list,
        handler: object,
        ack_timeout_ms: int = 300,
        max_backoff_ms: int = 4000,
        queue_size: int = 8,
    ) -> None:
        self._uart = uart
        self.address = address
        self.groups: list = []  # group ids (0..4094) whose frames this node takes
        self._handler = handler  # handler(msg) -> ACKED or a nack code
        pooled = [runtime.Ack, runtime.Nack]
        pooled.extend(classes)  # (MicroPython has no * in list displays)
        self._pool = MessagePool(pooled)
        self.decoder = StreamDecoder(self._on_frame)
        self._rxbuf = bytearray(_RX_CHUNK)
        self._tx = bytearray(F.MAX_WIRE)
        # A view of the tx buffer per frame length, made at its first use: writing a
        # frame then allocates nothing (a slice would make a new memoryview each time).
        self._views: list = [None] * (F.MAX_WIRE + 1)
        self._ack = runtime.Ack()
        self._nack = runtime.Nack()
        self._recent = RecentFrames(8)
        # A random first seq after every boot: frames of this boot never pass for
        # retransmissions of the last boot's.
        self._seq = (os.urandom(1)[0] << 8 | os.urandom(1)[0]) & 0xFFFF
        self.ack_timeout_ms = ack_timeout_ms
        self.max_backoff_ms = max_backoff_ms
        self._queue_size = queue_size
        self._queue: list = []  # reliable messages waiting their turn
        self._inflight: "Message | None" = None
        self._inflight_seq = 0
        self._answered = asyncio.Event()
        self._queued = asyncio.Event()
        self._answer_code = ACKED
        self.last_rx_ms = _ms()  # last frame from the edge (any frame: it lives)
        self.heard = False  # a frame from the edge since boot
        self.tx_frames = 0
        self.tx_retries = 0
        self.tx_dropped = 0  # reliable messages pushed out of a full queue
        self.tx_refused = 0  # reliable messages the edge nacked (not busy)
        self.rx_handler_errors = 0

    # -- sending ----------------------------------------------------------------------

    def send(self, msg: Message) -> None:
        # Queue msg to be sent reliably; a full queue forgets its oldest message.
        if len(self._queue) >= self._queue_size:
            self._queue.pop(0)
            self.tx_dropped += 1
        self._queue.append(msg)
        self._queued.set()

    def send_now(self, msg: Message) -> None:
        # msg once, at once, no ack asked (TimeRequest, answers).
        self._write(msg, F.EDGE, self._next_seq(), 0)

    def pending(self) -> int:
        return len(self._queue) + (1 if self._inflight is not None else 0)

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFF
        return self._seq

    def _write(self, msg: Message, dst: int, seq: int, flags: int) -> None:
        n = encode_frame_into(self._tx, msg, dst=dst, seq=seq, src=self.address, flags=flags)
        uart = self._uart
        uart.write(_ZERO)  # type: ignore[attr-defined]
        view = self._views[n]
        if view is None:
            view = self._views[n] = memoryview(self._tx)[:n]
        uart.write(view)  # type: ignore[attr-defined]
        self.tx_frames += 1

    def _backoff_ms(self, tries: int) -> int:
        t = self.ack_timeout_ms << min(tries, 8)
        t = min(t, self.max_backoff_ms)
        return t + (os.urandom(1)[0] * t >> 10)  # + up to 25 % jitter

    async def sender(self) -> None:
        while True:
            if not self._queue:
                self._queued.clear()
                await self._queued.wait()
                continue
            msg = self._queue.pop(0)
            seq = self._next_seq()
            self._inflight = msg
            self._inflight_seq = seq
            tries = 0
            while True:
                self._answered.clear()
                self._answer_code = ACKED
                self._write(msg, F.EDGE, seq, _RELIABLE | (_RETRY if tries else 0))
                try:
                    await asyncio.wait_for_ms(self._answered.wait(), self._backoff_ms(tries))
                except asyncio.TimeoutError:
                    tries += 1
                    self.tx_retries += 1
                    continue
                if self._answer_code == runtime.NACK_BUSY:
                    # The edge keeps nothing now: the same seq again, later.
                    tries += 1
                    self.tx_retries += 1
                    await asyncio.sleep_ms(self._backoff_ms(tries))
                    continue
                if self._answer_code != ACKED:
                    self.tx_refused += 1
                break
            self._inflight = None

    # -- receiving ----------------------------------------------------------------------

    async def receiver(self) -> None:
        reader = asyncio.StreamReader(self._uart)
        buf = self._rxbuf
        decoder = self.decoder
        while True:
            n = await reader.readinto(buf)
            if n:
                decoder.feed(buf, 0, n)

    def _on_frame(self, f: F.Frame) -> None:
        if f.src != F.EDGE:
            return  # another node's frame on a shared bus
        self.last_rx_ms = _ms()
        self.heard = True
        dst = f.dst
        if dst != self.address and not F.accepts(dst, self.address, self.groups):
            return
        t = f.msg_type
        # Two comparisons, not `in (...)`: that tuple would be built (allocated) per frame.
        if t == runtime.ACK or t == runtime.NACK:  # noqa: PLR1714
            self._on_answer(f)
            return
        ask = f.flags & _RELIABLE
        if ask and f.flags & _RETRY:
            before = self._recent.answer(f.src, f.seq)
            if before != UNSEEN:
                self._answer(f.seq, before)  # our answer was lost: the same again
                return
        try:
            code = self._handler(self._pool.decode(f))  # type: ignore[operator]
        except ProtocolError as e:
            code = runtime.nack_code(e)
        except MemoryError:
            code = runtime.NACK_NO_MEMORY
        except Exception as e:  # a bug in a handler: this frame is refused, the node goes on
            self.rx_handler_errors += 1
            sys.print_exception(e)
            code = runtime.NACK_INTERNAL
        if ask:
            self._answer(f.seq, code)
            if code != runtime.NACK_BUSY:
                self._recent.remember(f.src, f.seq, code)

    def _on_answer(self, f: F.Frame) -> None:
        try:
            msg = self._pool.decode(f)
        except ProtocolError:
            return
        if self._inflight is None or msg.acked_seq != self._inflight_seq:  # type: ignore[attr-defined]
            return  # an answer to a frame given up on, or a stray one
        self._answer_code = ACKED if f.msg_type == runtime.ACK else msg.code  # type: ignore[attr-defined]
        self._answered.set()

    def _answer(self, seq: int, code: int) -> None:
        if code == ACKED:
            self._ack.acked_seq = seq
            self._write(self._ack, F.EDGE, self._next_seq(), 0)
        else:
            self._nack.acked_seq = seq
            self._nack.code = code
            self._write(self._nack, F.EDGE, self._next_seq(), 0)

    # -- the tasks ------------------------------------------------------------------------

    def silent_ms(self) -> int:
        # How long the edge has said nothing.
        return time.ticks_diff(_ms(), self.last_rx_ms)
