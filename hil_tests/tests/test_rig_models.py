"""The rig's CPython parts on their own: peripheral models, the wire, flash images, profiles."""

from __future__ import annotations

import asyncio
import json
import math
import struct
import time
from pathlib import Path

import pytest

from kommune.hil import flash, profiles
from kommune.hil.board import rigwire
from kommune.hil.models.i2c import I2CWiring
from kommune.hil.models.magnetometer import MagneticScene, Qmc5883l
from kommune.hil.models.pins import IN, OPEN_DRAIN, OUT, PULL_UP, PinBank
from kommune.hil.models.watchdog import Watchdog
from kommune.hil.rigchannel import HandlerTable, RigFault, frame
from kommune.hil.uartlink import PacedLine

ESP32 = profiles.load("esp32")


def test_pin_levels_pulls_open_drain_and_input_events() -> None:
    events: list[tuple[int, int]] = []
    pins = PinBank(ESP32, lambda pin, level: events.append((pin, level)))
    assert pins.vm_init(4, IN, PULL_UP, None) == 1
    pins.drive(4, 0)
    pins.drive(4, 0)  # no change, no event
    pins.drive(4, None)  # released: the pull-up wins again
    assert events == [(4, 0), (4, 1)]

    assert pins.vm_init(2, OUT, None, 1) == 1
    pins.vm_write(2, 0)
    assert pins.level(2) == 0 and events[-1] == (4, 1)  # the VM knows what it wrote

    pins.vm_init(16, OPEN_DRAIN, None, 1)
    pins.drive(16, 0)  # another device pulls the shared line low
    assert pins.level(16) == 0 and events[-1] == (16, 0)

    with pytest.raises(RigFault, match="only be input"):
        pins.vm_init(36, OUT, None, None)
    with pytest.raises(RigFault, match="invalid pin"):
        pins.vm_init(20, IN, None, None)


def test_handler_table_answers_requests_and_refuses_unknown_kinds() -> None:
    table = HandlerTable()
    table.request(rigwire.ADC_READ, lambda p: b"\x01\x02")
    table.note(rigwire.WDT_FEED, lambda p: None)

    def refuse(p: bytes) -> bytes:
        raise RigFault.value_error("no such pin")

    table.request(rigwire.PIN_INIT, refuse)
    assert table.dispatch(rigwire.ADC_READ, b"") == frame(rigwire.REPLY, b"\x01\x02")
    assert table.dispatch(rigwire.WDT_FEED, b"") is None
    assert table.dispatch(rigwire.PIN_INIT, b"") == frame(
        rigwire.FAIL, struct.pack("<BH", rigwire.EXC_VALUEERROR, 0) + b"no such pin"
    )
    failed = table.dispatch(0x7E, b"")
    assert failed is not None and failed[0] == rigwire.FAIL and b"unknown frame kind" in failed
    with pytest.raises(ValueError, match="too long"):
        frame(rigwire.REPLY, bytes(70000))


def test_qmc5883l_registers_range_and_overflow() -> None:
    scene = MagneticScene(seed=3, noise_ut=0.0)
    chip = Qmc5883l(scene)
    wiring = I2CWiring()
    wiring.attach(22, 21, 0x0D, chip)
    assert wiring.vm_scan(22, 21) == b"\x0d"
    assert wiring.vm_xfer(22, 21, 0x0D, b"\x0d", 1) == b"\xff"
    with pytest.raises(RigFault):
        wiring.vm_xfer(22, 21, 0x1E, b"\x00", 1)

    wiring.vm_xfer(22, 21, 0x0D, b"\x09\x1d", 0)  # continuous, 200 Hz, 8 G
    x, y, z = struct.unpack("<hhh", wiring.vm_xfer(22, 21, 0x0D, b"\x00", 6))
    want = scene.expected_ut()
    assert (x, y, z) == tuple(math.floor(v * 30 + 0.5) for v in want)  # 3000 LSB/G

    scene.park_signature((0.0, 0.0, -400.0), ramp_s=0.0)  # far beyond the 2 G range
    wiring.vm_xfer(22, 21, 0x0D, b"\x09\x0d", 0)
    time.sleep(0.006)
    status = wiring.vm_xfer(22, 21, 0x0D, b"\x06", 1)[0]
    assert status & 0x03 == 0x03  # DRDY and OVL
    assert struct.unpack("<hhh", wiring.vm_xfer(22, 21, 0x0D, b"\x00", 6))[2] == -32768
    assert wiring.vm_xfer(22, 21, 0x0D, b"\x06", 1)[0] & 0x01 == 0  # reading the data cleared DRDY

    wiring.vm_xfer(22, 21, 0x0D, b"\x0a\x80", 0)  # soft reset: back to standby
    assert wiring.vm_xfer(22, 21, 0x0D, b"\x09", 1) == b"\x00"


def test_vehicle_signatures_are_seeded_and_fade() -> None:
    a, b = MagneticScene(seed=11), MagneticScene(seed=11)
    assert a.park("car").signature == b.park("car").signature
    neighbour = MagneticScene(seed=11).park("car", scale=0.2)
    assert abs(neighbour.signature[2]) < abs(a.vehicles[0].signature[2])

    scene = MagneticScene(seed=1, noise_ut=0.0)
    car = scene.park_signature((0.0, 0.0, -30.0), ramp_s=1.0)
    start = car.arrived
    assert scene.expected_ut(start)[2] == pytest.approx(scene.earth_ut[2] - 0.05 * 5)
    assert scene.expected_ut(start + 0.5)[2] == pytest.approx(scene.expected_ut(start)[2] - 15.0)
    assert scene.expected_ut(start + 2.0)[2] == pytest.approx(scene.expected_ut(start)[2] - 30.0)


async def test_paced_line_is_never_faster_than_the_baud_rate() -> None:
    received: list[tuple[float, bytes]] = []
    loop = asyncio.get_running_loop()
    line = PacedLine(lambda: 10 / 9600, lambda data: received.append((loop.time(), data)))
    task = asyncio.create_task(line.run())
    try:
        start = loop.time()
        line.put(bytes(200))
        await asyncio.wait_for(line.idle.wait(), 5)
        await asyncio.sleep(0)
        total = sum(len(d) for _, d in received)
        assert total == 200
        # at every delivery, no more bytes than the line could have carried
        count = 0
        for at, data in received:
            count += len(data)
            assert count * 10 / 9600 <= at - start + 1e-6
    finally:
        task.cancel()


async def test_watchdog_expires_unless_fed() -> None:
    fired: list[float] = []
    loop = asyncio.get_running_loop()
    wdt = Watchdog(loop, lambda: fired.append(loop.time()))
    start = loop.time()
    wdt.start(100)
    for _ in range(4):
        await asyncio.sleep(0.05)
        wdt.feed()
    assert not fired
    await asyncio.sleep(0.2)
    assert len(fired) == 1 and fired[0] - start >= 0.3 and not wdt.running


def test_flash_images_round_trip_and_refuse_garbage(tmp_path: Path) -> None:
    image = tmp_path / "f.img"
    geometry = ESP32.flash
    flash.format_with_files(image, geometry, {"main.py": b"print(1)\n", "lib/a/b.py": b"x = 1\n"})
    flash.write_files(image, geometry, {"config.json": b"{}"})
    assert flash.list_files(image, geometry) == ["/config.json", "/lib/a/b.py", "/main.py"]
    assert flash.read_file(image, geometry, "/lib/a/b.py") == b"x = 1\n"

    image.write_bytes(bytes(geometry.size))  # zeros: not littlefs
    with pytest.raises(flash.FlashError, match="does not mount"):
        flash.list_files(image, geometry)
    image.write_bytes(b"short")
    with pytest.raises(flash.FlashError, match="bytes"):
        flash.ensure_image(image, geometry)


def test_profiles_extend_and_fail_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parking = profiles.load("esp32-parking")
    assert parking.heap_kb == ESP32.heap_kb and parking.devices[0].model == "qmc5883l"
    assert "esp32" in profiles.available()
    with pytest.raises(profiles.BoardProfileError, match="unknown board"):
        profiles.load("z80")
    monkeypatch.setattr(profiles, "BOARDS_DIR", tmp_path)
    (tmp_path / "bad.json").write_text(json.dumps({"name": "bad"}))
    with pytest.raises(profiles.BoardProfileError, match="malformed"):
        profiles.load("bad")
    (tmp_path / "loop.json").write_text(json.dumps({"extends": "loop"}))
    with pytest.raises(profiles.BoardProfileError, match="loop"):
        profiles.load("loop")


def test_node_firmware_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kommune.hil import firmware_files

    (tmp_path / "firmware" / "lamp" / "app").mkdir(parents=True)
    (tmp_path / "firmware" / "lamp" / "main.py").write_text("import app.run\n")
    (tmp_path / "firmware" / "lamp" / "app" / "run.py").write_text("")
    (tmp_path / "firmware" / "common").mkdir()
    (tmp_path / "firmware" / "common" / "scheduler.py").write_text("")
    (tmp_path / "firmware" / "parking").mkdir()
    (tmp_path / "protocols").mkdir()
    (tmp_path / "protocols" / "frame.py").write_text("")
    monkeypatch.setattr(firmware_files, "FIRMWARE_ROOT", tmp_path / "firmware")
    monkeypatch.setattr(firmware_files, "PROTOCOLS_PACKAGE", tmp_path / "protocols")

    assert firmware_files.nodes() == ["lamp", "parking"]
    assert sorted(firmware_files.node_files("lamp")) == [
        "/app/run.py",
        "/lib/common/scheduler.py",
        "/lib/kommune/protocols/frame.py",
        "/main.py",
    ]
    with pytest.raises(firmware_files.FirmwareError, match=r"no main\.py"):
        firmware_files.node_files("parking")
    with pytest.raises(firmware_files.FirmwareError, match="unknown node"):
        firmware_files.node_files("boards")
