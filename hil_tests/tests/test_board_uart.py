"""The node-link UART: firmware bytes reach the pty the edge opens with pyserial,
both ways, no faster than the configured line carries them."""

from __future__ import annotations

import time

import pytest
import serial

from hil_tests.testing.fixtures import MakeBoard
from hil_tests.testing.repl import repl_exec
from kommune.hil.harness import Board

pytestmark = pytest.mark.micropython

# Firmware: an asyncio node that answers b"?" with a burst of N bytes, counts
# what it receives, and echoes lines starting with b">".
NODE = b"""
import asyncio, machine
BAUD, BITS, PARITY, STOP = %d, %d, %b, %d
uart = machine.UART(2, BAUD, bits=BITS, parity=PARITY, stop=STOP)
async def serve():
    r = asyncio.StreamReader(uart)
    w = asyncio.StreamWriter(uart, {})
    got = 0
    while True:
        data = await r.read(256)
        if data == b"?":
            w.write(bytes(range(48, 48 + 40)) * 12)   # 480 bytes
        elif data.startswith(b">"):
            while not data.endswith(b"\\n"):
                data += await r.read(256)
            w.write(b"echo " + data)
        else:
            got += len(data)
            if got >= 960:
                w.write(b"got %%d\\n" %% got)
                got = 0
        await w.drain()
asyncio.run(serve())
"""


def node(
    make_board: MakeBoard, baud: int = 9600, bits: int = 8, parity: int | None = None, stop: int = 1
) -> Board:
    return make_board(files={"main.py": NODE % (baud, bits, str(parity).encode(), stop)})


def sync(port: serial.Serial) -> None:
    """Wait until the firmware listens (bytes sent before it opens its UART are lost)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        port.write(b">sync\n")
        if port.readline() == b"echo >sync\n":
            port.reset_input_buffer()
            return
    raise AssertionError("the firmware never answered on the link")


def read_exactly(port: serial.Serial, n: int, timeout_s: float = 10.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout_s
    while len(data) < n and time.monotonic() < deadline:
        data += port.read(n - len(data))
    return data


def test_lines_cross_both_ways(make_board: MakeBoard) -> None:
    board = node(make_board, baud=115200)
    with serial.Serial(board.link, 115200, timeout=0.5) as port:
        sync(port)
        for line in (b">hello\n", b">" + bytes(range(1, 10)) + b"\xff\n"):
            port.write(line)
            assert port.readline() == b"echo " + line


@pytest.mark.parametrize(
    ("baud", "parity", "stop", "bits_per_char"), [(9600, None, 1, 10), (4800, 0, 2, 12)]
)
def test_the_line_paces_bytes_at_the_baud_rate(
    make_board: MakeBoard, baud: int, parity: int | None, stop: int, bits_per_char: int
) -> None:
    board = node(make_board, baud=baud, parity=parity, stop=stop)
    with serial.Serial(board.link, baud, timeout=0.5) as port:
        sync(port)

        # firmware -> edge: one request byte, 480 bytes back
        start = time.monotonic()
        port.write(b"?")
        burst = read_exactly(port, 480)
        took = time.monotonic() - start
        assert burst == bytes(range(48, 88)) * 12
        assert took >= (1 + 480) * bits_per_char / baud * 0.98

        # edge -> firmware: 960 bytes at once; the count comes back
        port.timeout = 10.0
        start = time.monotonic()
        port.write(b"x" * 960)
        assert port.readline() == b"got 960\n"
        took = time.monotonic() - start
        assert took >= (960 + 8) * bits_per_char / baud * 0.98


def test_uart_read_any_and_timeouts_from_the_repl(board: Board) -> None:
    repl_exec(board, "import machine\nu = machine.UART(2, 115200, timeout=50)")
    with serial.Serial(board.link, 115200, timeout=0.5) as port:
        port.write(b"first\nsecond")
        out = repl_exec(
            board,
            "import time\n"
            "for _ in range(500):\n    if u.any() == 12: break\n    time.sleep_ms(10)\n"
            "print(u.any(), u.readline(), u.read(3), u.read(), u.read())\n"
            "u.write(b'from firmware')\nu.flush()\nprint(u.txdone())",
        )
        assert out == "12 b'first\\n' b'sec' b'ond' None\nTrue\n"
        assert port.read(13) == b"from firmware"


def test_the_link_path_stays_across_reboots(make_board: MakeBoard) -> None:
    board = node(make_board, baud=115200)
    with serial.Serial(board.link, 115200, timeout=0.5) as port:
        sync(port)
        boots = board.boots
        board.power_cut()
        board.wait_booted(after=boots)
        sync(port)  # the same pty, a new VM behind it
        port.write(b">two\n")
        assert port.readline() == b"echo >two\n"


NOISY_SENDER = b"""
import machine, time
from kommune.protocols.lamp import SetLevel
from kommune.protocols.message import encode_frame_into
from kommune.protocols.frame import MAX_WIRE

uart = machine.UART(2, 115200)
buf = bytearray(MAX_WIRE)
msg = SetLevel()
time.sleep_ms(300)  # the test opens the port
for seq in range(FRAMES):
    msg.level = seq % 255
    msg.fade_ms = 10 * seq
    n = encode_frame_into(buf, msg, dst=0, src=0x0102, seq=seq)
    uart.write(b"\\x00" + buf[:n])  # a leading delimiter: noise cannot merge two frames
while not uart.txdone():
    time.sleep_ms(5)
print("sent", FRAMES)
"""


def test_node_link_frames_survive_a_noisy_line(make_board: MakeBoard) -> None:
    """Lost bytes and flipped bits on the wire cost frames, never a wrong frame or a crash."""
    from kommune.hil.firmware_files import protocol_files
    from kommune.protocols import lamp  # registers the lamp messages
    from kommune.protocols.frame import Frame
    from kommune.protocols.message import decode_frame
    from kommune.protocols.stream import StreamDecoder

    frames = 300
    main = NOISY_SENDER.replace(b"FRAMES", str(frames).encode())
    board = make_board("lamp", files={"main.py": main, **protocol_files()}, power_on=False)
    noise = board.link_noise(drop=0.002, flip=0.002, seed=7)
    received: list[tuple[int, int, int]] = []

    def on_frame(frame: Frame) -> None:
        msg = decode_frame(frame)
        assert isinstance(msg, lamp.SetLevel)
        received.append((frame.seq, msg.level, msg.fade_ms))

    decoder = StreamDecoder(on_frame)
    with serial.Serial(board.link, 115200, timeout=0.5) as link:
        board.power_on()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and f"sent {frames}" not in board.console_output():
            decoder.feed(link.read(4096))
        decoder.feed(link.read(4096))
    assert f"sent {frames}" in board.console_output()
    assert noise.dropped + noise.flipped > 0, "the line was not noisy"
    # Every frame that came out is one that was sent, intact; the damaged ones were counted.
    assert all(level == seq % 255 and fade == 10 * seq for seq, level, fade in received)
    assert len({seq for seq, _, _ in received}) == len(received)
    assert decoder.frames_bad > 0
    assert frames // 2 < len(received) < frames
