"""`kommune emulate`: ports for humans and scripts, clean exit on Ctrl-C, one-line errors."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial

from hil_tests.testing.processes import descendants, running
from kommune.hil import flash, profiles
from kommune.hil.children import spawn_ready, start_ready, stop, stop_sync

pytestmark = pytest.mark.micropython

KOMMUNE = str(Path(sys.executable).with_name("kommune"))


def test_emulate_blank_json_console_and_clean_interrupt(tmp_path: Path) -> None:
    image = tmp_path / "board.img"
    proc, ports = start_ready(
        [KOMMUNE, "emulate", "--blank", "--json", "--flash", str(image)],
        what="kommune emulate",
        stderr=subprocess.PIPE,
    )
    try:
        assert set(ports) >= {"console", "link", "flash", "pid"}
        vm_pids = descendants(proc.pid)
        assert ports["pid"] in vm_pids
        with serial.Serial(ports["console"], 115200, timeout=0.2) as console:
            console.write(b"\r\x03print('board', 6 * 7)\r")
            seen = b""
            deadline = time.monotonic() + 10
            while b"board 42" not in seen and time.monotonic() < deadline:
                seen += console.read(256)
        assert b"board 42" in seen
        with serial.Serial(ports["link"], 9600, timeout=0.2):
            pass  # the node link opens like any serial port
    finally:
        _, err = stop_sync(proc, sig=signal.SIGINT, sig_wait_s=20)
    assert proc.returncode == 0, err
    assert not [pid for pid in vm_pids if running(pid)], "VM processes outlived kommune emulate"
    # --flash keeps the image: formatted on first boot, readable on the host.
    assert flash.list_files(image, profiles.load("esp32").flash) == ["/boot.py"]


def test_emulate_human_output(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [KOMMUNE, "emulate", "--blank"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(5)]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    text = "".join(lines)
    assert "console  /dev/pts/" in text and "link     /dev/pts/" in text and "(temporary)" in text
    assert proc.returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nowhere"], "unknown node 'nowhere'"),
        (["lamp", "--blank"], "NODE and --blank exclude each other"),
        ([], "give NODE"),
        (["--blank", "--board", "esp8266"], "unknown board 'esp8266'"),
        (["--blank", "--flash", "/no/such/dir/x.img"], "does not exist"),
        (["--blank", "--format"], "--format is for an image given with --flash"),
    ],
)
def test_emulate_errors_are_one_line(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [KOMMUNE, "emulate", *args], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


ADVERTISE = """
import bluetooth
ble = bluetooth.BLE()
ble.active(True)
name = b"emulated-lock"
ble.gap_advertise(50_000, b"\\x02\\x01\\x06" + bytes((len(name) + 1, 0x09)) + name)
print("advertising", ble.config("mac")[1].hex())
"""


def _repl_exec(console: str, code: str) -> str:
    from mpremote.transport_serial import SerialTransport

    repl = SerialTransport(console, baudrate=115200)
    try:
        repl.enter_raw_repl(soft_reset=False)
        out: bytes = repl.exec(code)
        repl.exit_raw_repl()
    finally:
        repl.close()
    return out.decode()


async def test_emulate_radio_is_reachable_from_a_phone_host() -> None:
    """A newcomer's path: emulate, advertise from the REPL, find the board with bleak."""
    from bleak import BleakScanner

    from kommune.edge.ble import BleakScannerBumble

    proc, ports = await spawn_ready(
        [KOMMUNE, "emulate", "--blank", "--json"],
        what="kommune emulate",
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        radio = ports["radio"]
        assert radio["host"].startswith("tcp-client:127.0.0.1:")
        out = await asyncio.to_thread(_repl_exec, ports["console"], ADVERTISE)
        mac = radio["address"].replace(":", "").lower()
        assert f"advertising {mac}" in out
        device = await BleakScanner.find_device_by_name(
            "emulated-lock", timeout=10.0, backend=BleakScannerBumble, transport=radio["host"]
        )
        assert device is not None
        assert device.address == radio["address"]
    finally:
        proc.send_signal(signal.SIGINT)
        await stop(proc, grace_s=20.0)
    assert proc.returncode == 0
