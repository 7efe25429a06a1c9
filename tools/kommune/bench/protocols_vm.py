"""The workload of `kommune bench protocols`, runnable under MicroPython and CPython.

One "frame" is the typical hot-path frame: an edge -> lamp SetLevel (ack
requested) encoded through the full frame codec into a preallocated buffer,
then fed byte by byte through a StreamDecoder and decoded into a pooled
SetLevel, exactly as a lamp node receives it.

Under the VM: `micropython protocols_vm.py [N]` (MICROPYPATH=protocols) prints
{"frames_per_s": ..., "alloc_bytes_per_decode": ...} as one JSON line.
"""

import gc
import json
import sys
import time

from kommune.protocols import frame, lamp, message
from kommune.protocols.stream import StreamDecoder

LAMP_ADDRESS = 0x0012


class RoundTrip:
    def __init__(self) -> None:
        self.buf = bytearray(frame.MAX_WIRE)
        self.command = lamp.SetLevel(level=200, fade_ms=1500)
        self.pool = message.MessagePool([lamp.SetLevel])
        self.decoder = StreamDecoder(self._on_frame)
        self.received = lamp.SetLevel()
        self.seq = 0

    def _on_frame(self, f: frame.Frame) -> None:
        got = self.pool.decode(f)
        if isinstance(got, lamp.SetLevel):
            self.received = got

    def encode(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFF
        return message.encode_frame_into(
            self.buf,
            self.command,
            dst=LAMP_ADDRESS,
            seq=self.seq,
            flags=frame.FLAG_ACK_REQUESTED,
        )

    def once(self) -> None:
        n = self.encode()
        if self.decoder.feed(self.buf, 0, n) != 1:
            raise RuntimeError("frame did not decode")

    def frames_per_s(self, n: int, repeats: int = 3) -> float:
        best_ns = 0
        for _ in range(repeats):
            t0 = time.time_ns()
            for _ in range(n):
                self.once()
            dt = time.time_ns() - t0
            if best_ns == 0 or dt < best_ns:
                best_ns = dt
        return n * 1e9 / max(best_ns, 1)

    def alloc_bytes_per_decode(self, n: int = 100) -> float:
        # MicroPython only: heap bytes allocated per received lamp command.
        mem_alloc = getattr(gc, "mem_alloc", None)
        if mem_alloc is None:
            return -1.0
        wire = bytes(self.buf[: self.encode()])
        self.decoder.feed(wire)  # warm up: first-call effects are not per frame
        ok_before = self.decoder.frames_ok
        gc.collect()
        gc.disable()
        try:
            before: int = mem_alloc()
            for _ in range(n):
                self.decoder.feed(wire)
            after: int = mem_alloc()
        finally:
            gc.enable()
        if self.decoder.frames_ok - ok_before != n or self.received != self.command:
            raise RuntimeError("decode failed during the allocation run")
        return float(after - before) / n


def main(argv: list[str]) -> None:
    n = int(argv[1]) if len(argv) > 1 else 2000
    rt = RoundTrip()
    rt.once()
    result = {
        "frames_per_s": rt.frames_per_s(n),
        "alloc_bytes_per_decode": rt.alloc_bytes_per_decode(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv)
