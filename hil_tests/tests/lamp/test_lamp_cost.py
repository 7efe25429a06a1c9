"""What the node runtime costs in the real VM: time and heap per command frame received
and answered (none: decoding is in place, the answer is encoded into a fixed buffer), and
the lamp's heap while it runs."""

from __future__ import annotations

import time

import pytest
from lamp_rig import PROFILE, EdgeEnd, firmware_files, start_lamp

from hil_tests.testing.fixtures import MakeBoard
from hil_tests.testing.repl import repl_exec
from kommune.protocols import lamp as L
from kommune.protocols import runtime

pytestmark = pytest.mark.micropython

# 1000 SetLevel frames, each asking for an ack, through NodeLink's receive path into a
# handler, each answered with an Ack written to a UART that counts bytes.
BENCH = """
import gc, time
from common.link import NodeLink
from kommune.protocols import frame, lamp, message
class Uart:
    def __init__(self):
        self.n = 0
    def write(self, b):
        self.n += len(b)
count = [0]
def handle(msg):
    count[0] += msg.level
    return 0
uart = Uart()
link = NodeLink(uart, address=18, classes=[lamp.SetLevel], handler=handle)
N = 1000
wire = bytearray(20 * N)
tmp = bytearray(frame.MAX_WIRE)
msg = lamp.SetLevel()
at = 0
for i in range(N):
    msg.level = i % 255
    msg.fade_ms = i
    n = message.encode_frame_into(tmp, msg, dst=18, seq=i, flags=frame.FLAG_ACK_REQUESTED)
    wire[at:at + n] = tmp[:n]
    at += n
link.decoder.feed(wire, 0, 40)  # warm up (first-use allocations)
gc.collect()
gc.disable()
free = gc.mem_free()
t0 = time.ticks_us()
link.decoder.feed(wire, 40, at)
dt = time.ticks_diff(time.ticks_us(), t0)
used = free - gc.mem_free()
gc.enable()
print(link.decoder.frames_ok, link.tx_frames, dt, used)
"""


def test_a_command_frame_costs_microseconds_and_no_heap(make_board: MakeBoard) -> None:
    files = {k: v for k, v in firmware_files().items() if k != "/main.py"}
    board = make_board("bench", PROFILE, files=files)
    frames_ok, answered, took_us, heap = (int(x) for x in repl_exec(board, BENCH).split())
    frames = frames_ok - 2  # the warm-up took two
    per_frame_us = took_us / frames
    per_frame_b = heap / frames
    print(f"SetLevel received + acked: {per_frame_us:.0f} us, {per_frame_b:.1f} B heap per frame")
    assert answered == frames_ok
    assert per_frame_b <= 4  # nothing, give or take the odd bookkeeping word
    assert per_frame_us < 2000


def test_the_running_lamp_keeps_its_heap_and_feeds_its_watchdog(make_board: MakeBoard) -> None:
    lamp = start_lamp(make_board)
    with EdgeEnd(lamp.board.link) as edge:
        edge.wait_for(runtime.Hello)
        heap = []
        for _ in range(3):
            for level in range(0, 255, 5):
                edge.command(L.SetLevel(level=level, fade_ms=level))
            since = time.monotonic()
            edge.command(runtime.Request(msg_type=runtime.STATUS))
            heap.append(edge.wait_for(runtime.Status, after=since))
        free, low = heap[-1].heap_free, heap[-1].heap_min_free
        print(f"lamp heap (64-bit VM bytes): free {free} B after a collection, lowest {low} B")
        assert free > 100_000
        assert free >= heap[0].heap_free - 2_000, "no leak over 150 commands"
        assert low > 10_000  # the low point before the collector runs
    # The watchdog runs with the configured timeout and is fed (every 250 ms).
    dog = lamp.board.emulated.hw.watchdog
    timeout_ms, feeds = lamp.board.call(lambda: (dog.timeout_ms, dog.feeds))
    assert timeout_ms == 3000 and feeds >= 2
