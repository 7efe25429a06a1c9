"""The stock mpremote against an emulated board's console, as against a USB board."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial

from hil_tests.testing.fixtures import MakeBoard
from hil_tests.testing.repl import board_repl, repl_exec, repl_start
from kommune.hil.harness import Board

pytestmark = pytest.mark.micropython

MPREMOTE = str(Path(sys.executable).with_name("mpremote"))


def mpremote(board: Board, *args: str, timeout_s: float = 30.0) -> str:
    proc = subprocess.run(
        [MPREMOTE, "connect", board.console, *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert proc.returncode == 0, f"mpremote {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc.stdout.replace("\r\n", "\n")


def test_mpremote_exec_cp_ls_run_and_soft_reset(board: Board, tmp_path: Path) -> None:
    assert mpremote(board, "exec", "print(6 * 7)") == "42\n"

    (tmp_path / "config.txt").write_text("lamp-17\n")
    mpremote(board, "fs", "cp", str(tmp_path / "config.txt"), ":config.txt")
    listing = mpremote(board, "fs", "ls")
    assert "config.txt" in listing and "boot.py" in listing

    (tmp_path / "job.py").write_text("print(open('config.txt').read().strip(), 'from flash')\n")
    assert mpremote(board, "run", str(tmp_path / "job.py")) == "lamp-17 from flash\n"

    # A soft reset loses RAM, keeps the chip's reset cause (power-on) and the flash.
    mpremote(board, "exec", "marker = 1")
    out = mpremote(
        board,
        "soft-reset",
        "+",
        "exec",
        "import machine; print('marker' in globals(), machine.reset_cause())",
    )
    assert out == "False 1\n"
    assert "soft" in board.reset_kinds


def test_a_copied_file_survives_a_power_cut_and_a_reset(board: Board, tmp_path: Path) -> None:
    (tmp_path / "keys.bin").write_bytes(bytes(range(256)) * 8)
    mpremote(board, "fs", "cp", str(tmp_path / "keys.bin"), ":keys.bin")

    boots = board.boots
    board.power_cut()
    board.wait_booted(after=boots)
    code = (
        "import hashlib, binascii\n"
        "print(binascii.hexlify(hashlib.sha256(open('keys.bin', 'rb').read()).digest()))"
    )
    want = hashlib.sha256(bytes(range(256)) * 8).hexdigest()
    assert want in mpremote(board, "exec", code)

    boots = board.boots
    board.reset()
    board.wait_booted(after=boots)
    assert want in mpremote(board, "exec", code)
    assert board.read_file("/keys.bin") == bytes(range(256)) * 8  # the host sees the same flash
    assert board.reset_kinds.count("power_on") == 2 and "reset_pin" in board.reset_kinds


def test_ctrl_c_interrupts_a_running_main_py(make_board: MakeBoard) -> None:
    main = b"""
import time
print("main running")
count = 0
while True:
    count += 1
    time.sleep_ms(10)
"""
    board = make_board(files={"main.py": main})
    deadline = time.monotonic() + 10
    while "main running" not in board.console_output():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # Ctrl-C stops main.py and leaves its globals, as on a board ...
    assert repl_exec(board, "print(count > 0)") == "True\n"
    # ... and mpremote's soft reset comes back in the raw REPL without
    # starting main.py again, so the REPL answers.
    assert mpremote(board, "exec", "print('count' in globals())") == "False\n"


def test_ctrl_c_is_data_when_the_firmware_disables_it(board: Board) -> None:
    with board_repl(board) as repl:
        repl.exec_raw_no_follow(
            "import micropython, sys\n"
            "micropython.kbd_intr(-1)\n"
            "got = sys.stdin.buffer.read(3)\n"
            "micropython.kbd_intr(3)\n"
            "print(got)"
        )
        time.sleep(0.2)
        repl.serial.write(b"a\x03b")
        out, err = repl.follow(10)
    assert (out, err) == (b"b'a\\x03b'\n", b"")


def test_reboot_text_on_the_console(board: Board) -> None:
    with serial.Serial(board.console, 115200, timeout=0.2) as port:
        port.reset_input_buffer()
        boots = board.boots
        board.reset()
        board.wait_booted(after=boots)
        seen = b""
        for _ in range(25):
            seen += port.read(4096)
            if seen.endswith(b">>> "):
                break
        port.write(b"\x04")  # Ctrl-D at the friendly REPL: a soft reboot
        for _ in range(25):
            seen += port.read(4096)
            if b"MPY: soft reboot" in seen and seen.endswith(b">>> "):
                break
    text = seen.decode(errors="replace")
    assert "rst:0x1 (POWERON_RESET)" in text
    assert text.index("rst:0x1") < text.index("MPY: soft reboot") < text.rindex(">>> ")


def test_the_firmware_gets_the_real_boards_free_heap(board: Board) -> None:
    # The 64-bit VM's heap is sized in 32-bit words, so the firmware can hold
    # as many objects as on the ESP32; the emulation's own modules are extra.
    out = mpremote(
        board, "exec", "import gc, sys\ngc.collect()\nprint(gc.mem_free(), sys.maxsize > 2**32)"
    )
    free, wide = out.split()
    free_kb_32bit = int(free) / (2 if wide == "True" else 1) / 1024
    assert 0.95 * board.profile.heap_kb <= free_kb_32bit <= 1.1 * board.profile.heap_kb


def _read_until(console: serial.Serial, text: bytes, timeout_s: float = 5.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout_s
    while text not in seen and time.monotonic() < deadline:
        seen += console.read(256)
    return seen


def test_typing_ahead_while_code_runs_is_not_lost(board: Board) -> None:
    """A line typed while the REPL runs code is read once the REPL is back, as on a board."""
    with serial.Serial(board.console, 115200, timeout=0.1) as console:
        console.write(b"\r")
        assert b">>> " in _read_until(console, b">>> ")
        console.write(b"import time; time.sleep_ms(300); print('slept')\r")
        assert b"import time" in _read_until(console, b"import time")
        console.write(b"print(6 * 7)\r")  # typed while the sleep runs
        out = _read_until(console, b"\n42\n")
    assert b"slept" in out
    assert b"\n42\n" in out


def test_ctrl_c_stops_a_program_started_with_mpremote_run(board: Board, tmp_path: Path) -> None:
    # mpremote sends `run` scripts in raw-paste mode, where the unix port does not
    # switch its terminal back while the code runs: Ctrl-C must still interrupt it.
    (tmp_path / "loop.py").write_text(
        "import time\nprint('looping')\nwhile True:\n    time.sleep(1)\n"
    )
    run = subprocess.Popen(
        [MPREMOTE, "connect", board.console, "run", str(tmp_path / "loop.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert run.stdout is not None
        assert run.stdout.readline().strip() == b"looping"
    finally:
        run.send_signal(signal.SIGINT)  # mpremote leaves; the program runs on, as on a board
        run.communicate(timeout=10)
    boots = board.boots
    # The next mpremote's Ctrl-C stops the program (`resume`: no soft reset,
    # so only the interrupt can free the REPL), and the REPL answers.
    assert mpremote(board, "resume", "exec", "print(6 * 7)", timeout_s=20) == "42\n"
    assert "KeyboardInterrupt" in board.console_output()
    assert board.boots == boots  # interrupted, not rebooted


def test_ctrl_c_as_code_ends_never_kills_the_vm(board: Board) -> None:
    # A Ctrl-C that arrives just as a program ends must reach either the program
    # (KeyboardInterrupt) or the prompt (a byte), never the port's default SIGINT
    # action, which ends the VM: sweep it across the end of many short programs.
    with board_repl(board) as repl:
        for i in range(150):
            repl.exec_raw_no_follow(f"for _ in range({i % 15} * 40): pass\nprint({i})")
            time.sleep((i % 7) / 2000)
            repl.serial.write(b"\x03")
            repl.follow(10)
            repl.serial.write(b"\x01")  # a fresh raw prompt whatever the Ctrl-C did
            repl.read_until(1, b"raw REPL; CTRL-B to exit\r\n", timeout_overall=10)
        assert repl.exec("print('alive')") == b"alive\n"
    assert board.boots == 1 and board.reset_kinds == ["power_on"]


@pytest.mark.parametrize("trial", range(20))
def test_the_raw_repl_right_after_a_soft_reset_shows_one_banner(board: Board, trial: int) -> None:
    # After a soft reset in the raw REPL the board comes back in it; a client
    # that connects at once must get exactly one raw-REPL banner for its own
    # Ctrl-A, or mpremote reads the second one as its raw-paste answer.
    boots = board.boots
    repl_start(board, "import machine\nmachine.soft_reset()")
    board.wait_booted(after=boots)
    time.sleep(trial / 2000)  # connect at a different moment of the reboot each time
    assert repl_exec(board, "print('once')") == "once\n"
