"""A board UART wired to a pty (the node link the edge opens with pyserial).

Bytes cross at the pace of the line: the firmware's configured baud rate and
frame (start bit, data bits, parity, stop bits), in both directions. The VM's
side is one socket per UART (see board/buses.py); it is replaced when the VM
restarts, while the pty path stays the same.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from kommune.hil.ptys import ClientPort

#: The firmware's write() stops being accepted beyond this many unsent bytes.
TX_BUFFER = 4096
#: Deliver in batches of at least this long, not one wake-up per byte.
TICK_S = 0.004


class PacedLine:
    """One direction of a UART: bytes go out no faster than the line carries them."""

    def __init__(self, char_seconds: Callable[[], float], out: Callable[[bytes], object]) -> None:
        self._char_seconds = char_seconds
        self._out = out
        self.pending = bytearray()
        self._wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self._progress = asyncio.Event()  # set whenever bytes went out
        self.carried = 0

    def put(self, data: bytes) -> None:
        self.pending += data
        self.idle.clear()
        self._wake.set()

    def clear(self) -> None:
        self.pending.clear()
        self._progress.set()

    async def wait_below(self, count: int) -> None:
        """Wait until fewer than `count` bytes are waiting for the line."""
        while len(self.pending) >= count:
            self._progress.clear()
            await self._progress.wait()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.pending:
                self.idle.set()
                self._wake.clear()
                await self._wake.wait()
            start = loop.time()
            sent = 0
            while self.pending:
                char_s = self._char_seconds()
                due = int((loop.time() - start) / char_s) - sent
                if due > 0:
                    chunk = bytes(self.pending[:due])
                    del self.pending[:due]
                    self._out(chunk)
                    sent += len(chunk)
                    self.carried += len(chunk)
                    self._progress.set()
                    if not self.pending:
                        break
                batch = max(1, int(TICK_S / char_s))
                wait = start + (sent + batch) * char_s - loop.time()
                await asyncio.sleep(max(0.0005, wait))


class LineNoise:
    """Seeded line faults on bytes as they cross: dropped bytes and flipped bits.

    `drop` is the chance a byte is lost (a framing error the receiver
    discards); `flip` the chance a byte arrives with one bit inverted (noise
    the UART cannot see). Both 0.0 is a clean line.
    """

    def __init__(self, drop: float = 0.0, flip: float = 0.0, seed: int = 0) -> None:
        if not (0.0 <= drop <= 1.0 and 0.0 <= flip <= 1.0):
            raise ValueError("drop and flip are probabilities in 0..1")
        self.drop = drop
        self.flip = flip
        self._random = random.Random(seed)
        self.dropped = 0
        self.flipped = 0

    def apply(self, data: bytes) -> bytes:
        if not (self.drop or self.flip):
            return data
        out = bytearray()
        for byte in data:
            if self._random.random() < self.drop:
                self.dropped += 1
                continue
            error = 0
            if self._random.random() < self.flip:
                error = 1 << self._random.randrange(8)
                self.flipped += 1
            out.append(byte ^ error)
        return bytes(out)


class UartLink:
    def __init__(self, loop: asyncio.AbstractEventLoop, uart_id: int) -> None:
        self.uart_id = uart_id
        self._loop = loop
        self._port = ClientPort()
        self.path = self._port.path
        self.baudrate = 115200
        self.bits = 8
        self.parity: int | None = None
        self.stop = 1
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.noise = LineNoise()
        self.tx = PacedLine(self.char_seconds, self._to_client)  # firmware -> pty
        self.rx = PacedLine(self.char_seconds, self._to_vm)  # pty -> firmware
        self._tasks = [loop.create_task(self.tx.run()), loop.create_task(self.rx.run())]
        self._ended: set[asyncio.Task[None]] = set()  # cancelled reader tasks
        loop.add_reader(self._port.master, self._on_client)

    def char_seconds(self) -> float:
        bits = 1 + self.bits + (0 if self.parity is None else 1) + self.stop
        return bits / self.baudrate

    def configure(self, baudrate: int, bits: int, parity: int | None, stop: int) -> None:
        if baudrate <= 0 or bits not in (5, 6, 7, 8) or stop not in (1, 2):
            raise ValueError("invalid UART frame")
        self.baudrate, self.bits, self.parity, self.stop = baudrate, bits, parity, stop

    def set_noise(self, drop: float = 0.0, flip: float = 0.0, seed: int = 0) -> LineNoise:
        """Faults on this line from now on, both directions (0, 0: clean again)."""
        self.noise = LineNoise(drop, flip, seed)
        return self.noise

    def tx_done(self) -> bool:
        return not self.tx.pending

    # -- the VM's socket ----------------------------------------------------

    def attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.detach()
        self._writer = writer
        self._reader_task = self._loop.create_task(self._from_vm(reader))

    def detach(self) -> None:
        """The VM is gone: what was in the UART's FIFOs is lost."""
        if self._reader_task is not None:
            self._reader_task.cancel()
            self._ended.add(self._reader_task)  # awaited by aclose
            self._reader_task.add_done_callback(self._ended.discard)
            self._reader_task = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.tx.clear()
        self.rx.clear()

    async def _from_vm(self, reader: asyncio.StreamReader) -> None:
        while True:
            await self.tx.wait_below(TX_BUFFER)
            data = await reader.read(TX_BUFFER)
            if not data:
                return
            self.tx.put(data)

    def _to_vm(self, data: bytes) -> None:
        data = self.noise.apply(data)
        if data and self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)

    def _to_client(self, data: bytes) -> None:
        data = self.noise.apply(data)
        if data:
            self._port.write(data)

    # -- the client's pty ---------------------------------------------------

    def _on_client(self) -> None:
        data = self._port.read(65536)
        if data and self._writer is not None:
            self.rx.put(data)

    async def aclose(self) -> None:
        self.detach()
        self._loop.remove_reader(self._port.master)
        tasks = [*self._tasks, *self._ended]
        for task in tasks:
            task.cancel()
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._port.close()
