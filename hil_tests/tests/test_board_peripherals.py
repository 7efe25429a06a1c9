"""Pins, PWM, ADC, I2C (a magnetometer under a parking bay), RTC and timers,
driven and observed from the test through the board's peripheral models."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from hil_tests.testing.fixtures import MakeBoard
from hil_tests.testing.repl import repl_exec
from hil_tests.testing.waiting import wait_until
from kommune.hil.harness import Board
from kommune.hil.models.magnetometer import MagneticScene

pytestmark = pytest.mark.micropython


# A button on GPIO4 (pull-up, pressed = low) toggles a lamp on GPIO2 and steps
# a PWM dimmer on GPIO25; the IRQ handler only sets a ThreadSafeFlag, the
# asyncio task does the work -- the firmware sleeps in asyncio between presses.
BUTTON_NODE = b"""
import asyncio, machine
lamp = machine.Pin(2, machine.Pin.OUT, value=0)
button = machine.Pin(4, machine.Pin.IN, machine.Pin.PULL_UP)
dimmer = machine.PWM(machine.Pin(25), freq=20000, duty_u16=0)
pressed = asyncio.ThreadSafeFlag()
button.irq(lambda p: pressed.set(), machine.Pin.IRQ_FALLING)
async def main():
    level = 0
    while True:
        await pressed.wait()
        lamp.value(not lamp.value())
        level = min(65535, level + 16384)
        dimmer.duty_u16(level)
asyncio.run(main())
"""


def wait_for_dimmer_steps(board: Board, steps: int) -> None:
    wait_until(lambda: len(board.pwm_history(25)) == steps)


def test_button_irq_wakes_asyncio_and_drives_lamp_and_dimmer(make_board: MakeBoard) -> None:
    board = make_board(files={"main.py": BUTTON_NODE})
    wait_until(lambda: board.pwm(25) is not None)  # main.py is up
    assert board.pins.level(4) == 1  # the pull-up holds the idle button high
    for press in range(1, 4):
        board.pins.drive(4, 0)
        wait_for_dimmer_steps(board, press + 1)
        board.pins.drive(4, 1)
    lamp = [level for _, level in board.pins.history(2)]
    assert lamp == [0, 1, 0, 1]
    duties = [s.duty_u16 for s in board.pwm_history(25)]
    assert duties == [0, 16384, 32768, 49152]
    assert {s.freq_hz for s in board.pwm_history(25)} == {20000}


def test_pin_levels_both_ways_and_irq_during_sleep(board: Board) -> None:
    out = repl_exec(
        board,
        "import machine, time\n"
        "p = machine.Pin(5, machine.Pin.IN)\n"
        "edges = []\n"
        "both = machine.Pin.IRQ_RISING | machine.Pin.IRQ_FALLING\n"
        "p.irq(lambda pin: edges.append(pin.value()), both)\n"
        "o = machine.Pin(13, machine.Pin.OUT)\n"
        "o.on()\n"
        "print(p.value())",
    )
    assert out == "0\n"
    assert board.pins.level(13) == 1
    board.pins.drive(5, 1)
    board.pins.drive(5, 0)
    board.pins.drive(5, 1)
    # The handlers run while the firmware sleeps, in order.
    assert repl_exec(board, "time.sleep_ms(50)\nprint(edges, p.value())") == "[1, 0, 1] 1\n"


def test_invalid_pins_and_pwm_limits(board: Board) -> None:
    out = repl_exec(
        board,
        "import machine\n"
        "for fn in (lambda: machine.Pin(20),\n"
        "           lambda: machine.Pin(36, machine.Pin.OUT),\n"
        "           lambda: machine.ADC(machine.Pin(5)),\n"
        "           lambda: machine.PWM(machine.Pin(4), freq=0)):\n"
        "    try:\n"
        "        fn()\n"
        "    except ValueError as e:\n"
        "        print('ValueError', e)\n"
        "outs = (0, 2, 4, 5, 12, 13, 14, 15, 16, 17, 18, 19, 21, 22, 23, 25)\n"
        "pwms = [machine.PWM(machine.Pin(p), freq=1000, duty_u16=1) for p in outs]\n"
        "try:\n"
        "    machine.PWM(machine.Pin(26), freq=1000)\n"
        "except ValueError as e:\n"
        "    print('ValueError', e)",
    )
    assert out.splitlines() == [
        "ValueError invalid pin",
        "ValueError pin can only be input",
        "ValueError invalid Pin for ADC",
        "ValueError freq must be > 0",
        "ValueError out of PWM channels",
    ]


def test_adc_reads_the_voltage_through_the_attenuator(board: Board) -> None:
    board.set_voltage(34, 1.2)
    out = repl_exec(
        board,
        "import machine\n"
        "a = machine.ADC(machine.Pin(34), atten=machine.ADC.ATTN_11DB)\n"
        "print(a.read_uv(), a.read_u16())\n"
        "a.atten(machine.ADC.ATTN_0DB)\n"
        "print(a.read_u16())",
    )
    uv, raw, clipped = (int(x) for x in out.split())
    assert abs(uv - 1_200_000) < 20_000  # 2 mV noise
    assert abs(raw - 1.2 / 2.45 * 65535) < 600
    assert clipped == 65535  # 1.2 V is over the 0 dB range (0.95 V)


QMC_READ = (
    "import machine, struct, time\n"
    "i2c = machine.I2C(0, scl=machine.Pin(22), sda=machine.Pin(21))\n"
    "i2c.writeto_mem(0x0D, 0x0B, b'\\x01')\n"
    "i2c.writeto_mem(0x0D, 0x09, b'\\x0d')  # continuous, 200 Hz, 2 G, OSR 512\n"
    "def field(n=20):\n"
    "    s = [0, 0, 0]\n"
    "    for _ in range(n):\n"
    "        while not i2c.readfrom_mem(0x0D, 0x06, 1)[0] & 1:\n"
    "            time.sleep_ms(1)\n"
    "        for i, v in enumerate(struct.unpack('<hhh', i2c.readfrom_mem(0x0D, 0x00, 6))):\n"
    "            s[i] += v\n"
    "    return [round(v / n / 120, 1) for v in s]  # uT\n"
)


def field_ut(board: Board) -> list[float]:
    return [float(v) for v in repl_exec(board, "print(*field())").split()]


def test_magnetometer_sees_a_car_park_and_leave(make_board: MakeBoard) -> None:
    board = make_board(profile="esp32-parking")
    repl_exec(board, QMC_READ)
    assert (
        repl_exec(board, "print(i2c.scan(), i2c.readfrom_mem(0x0D, 0x0D, 1))") == "[13] b'\\xff'\n"
    )

    scene: MagneticScene = board.device("magnetometer").scene
    empty = field_ut(board)
    assert all(abs(a - b) < 0.3 for a, b in zip(empty, board.call(scene.expected_ut), strict=True))

    board.call(scene.park_signature, (3.0, -2.0, -30.0), ramp_s=0.0)
    parked = field_ut(board)
    delta = [p - e for p, e in zip(parked, empty, strict=True)]
    assert all(abs(d - want) < 0.5 for d, want in zip(delta, (3.0, -2.0, -30.0), strict=True))

    board.call(scene.leave)
    time.sleep(1.6)  # the default ramp
    left = field_ut(board)
    assert all(abs(a - b) < 0.5 for a, b in zip(left, empty, strict=True))

    # Temperature drift: the offset moves with the chip's temperature.
    board.call(setattr, scene, "temperature_c", 45.0)
    hot = field_ut(board)
    assert abs((hot[2] - left[2]) - 0.05 * 25) < 0.4
    assert (
        repl_exec(board, "print(struct.unpack('<h', i2c.readfrom_mem(0x0D, 0x07, 2))[0])")
        == "4500\n"
    )


def test_i2c_without_a_device_is_enodev(board: Board) -> None:
    out = repl_exec(
        board,
        "import machine\n"
        "i2c = machine.SoftI2C(scl=machine.Pin(22), sda=machine.Pin(21))\n"
        "print(i2c.scan())\n"
        "try:\n"
        "    i2c.readfrom(0x0D, 1)\n"
        "except OSError as e:\n"
        "    print(e.errno)",
    )
    assert out == "[]\n19\n"


def test_rtc_unique_id_and_timer(boards: Callable[..., list[Board]]) -> None:
    first, second = boards(2)
    code = "import machine, binascii\nprint(binascii.hexlify(machine.unique_id()).decode())"
    ids = {repl_exec(b, code) for b in (first, second)}
    assert len(ids) == 2 and all(len(i.strip()) == 12 for i in ids)
    assert first.console != second.console and first.link != second.link

    out = repl_exec(
        first,
        "import machine, time\n"
        "rtc = machine.RTC()\n"
        "print(rtc.datetime()[0])\n"
        "rtc.datetime((2026, 11, 27, 4, 12, 30, 0, 0))\n"
        "print(time.gmtime()[:5])\n"
        "ticks = []\n"
        "t = machine.Timer(0)\n"
        "t.init(period=20, callback=lambda t: ticks.append(1))\n"
        "time.sleep_ms(210)\n"
        "t.deinit()\n"
        "print(9 <= len(ticks) <= 11)",
    )
    assert out == "2000\n(2026, 11, 27, 12, 30)\nTrue\n"
