"""`kommune emulate` with bad input, a busy image, Ctrl-C at any moment and SIGKILL:
a clear line and nothing lost, quiet interrupts, nothing left behind."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hil_tests.testing.processes import cmdline, descendants, running
from kommune.hil import flash, profiles

pytestmark = pytest.mark.micropython

KOMMUNE = str(Path(sys.executable).with_name("kommune"))
GEOMETRY = profiles.load("esp32").flash
#: "Within a second or two" (the boot timeout that hid these causes was 30 s), with
#: room for the command's own start-up on a loaded machine.
PROMPT_S = 5.0


def _emulate(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [KOMMUNE, "emulate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=True,  # its own process group, as a terminal's job
    )


def _ports(proc: subprocess.Popen[str]) -> dict[str, object]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.communicate(timeout=20)[1]
    ports: dict[str, object] = json.loads(line)
    return ports


def _ctrl_c(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """Ctrl-C as a terminal sends it (to the process group); (exit status, stderr)."""
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


def _refused(*args: str) -> tuple[str, float]:
    """Run `kommune emulate ARGS`, which must fail with one line; (that line, seconds)."""
    start = time.monotonic()
    proc = subprocess.run(
        [KOMMUNE, "emulate", *args], capture_output=True, text=True, timeout=30, check=False
    )
    took = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0], took


# -- 1. an image that is not littlefs ------------------------------------------------


def test_a_foreign_flash_image_is_refused_then_kept_aside(tmp_path: Path) -> None:
    image = tmp_path / "board.flash"
    original = os.urandom(GEOMETRY.size)
    image.write_bytes(original)
    line, took = _refused("--blank", "--no-radio", "--flash", str(image))
    assert line == (
        f"kommune emulate: error: --flash: {image} holds no littlefs filesystem; formatting"
        " it would lose what is on it (--format renames it to PATH.bad-TIME first)"
    )
    assert took < PROMPT_S
    assert image.read_bytes() == original

    proc = _emulate("--blank", "--no-radio", "--json", "--format", "--flash", str(image))
    _ports(proc)
    status, err = _ctrl_c(proc)
    assert status == 0, err
    (kept,) = tmp_path.glob("board.flash.bad-*")
    assert err == f"kommune emulate: kept the old image as {kept}\n"
    assert kept.read_bytes() == original
    assert flash.list_files(image, GEOMETRY) == ["/boot.py"]  # formatted on first boot


def test_a_blank_flash_image_is_formatted_without_a_word(tmp_path: Path) -> None:
    image = tmp_path / "board.flash"
    image.write_bytes(bytes(GEOMETRY.size))  # zeros, as `truncate -s 2M` makes it
    # A relative path: the VM, which runs elsewhere, gets it made absolute.
    proc = _emulate("--blank", "--no-radio", "--json", "--flash", image.name, cwd=tmp_path)
    _ports(proc)
    status, err = _ctrl_c(proc)
    assert (status, err) == (0, "")
    assert flash.list_files(image, GEOMETRY) == ["/boot.py"]
    assert [p.name for p in tmp_path.iterdir()] == ["board.flash"]


# -- 2. an image in use --------------------------------------------------------------


def test_a_flash_image_in_use_is_refused_naming_its_holder(tmp_path: Path) -> None:
    image = tmp_path / "board.flash"
    first = _emulate("--blank", "--no-radio", "--json", "--flash", str(image))
    try:
        _ports(first)
        line, took = _refused("--blank", "--no-radio", "--flash", str(image))
        assert line == (
            f"kommune emulate: error: --flash: {image} is in use by pid {first.pid}"
            f" (kommune emulate --blank --no-radio --json --flash {image})"
        )
        assert took < PROMPT_S
        assert first.poll() is None
    finally:
        status, err = _ctrl_c(first)
    assert status == 0, err
    assert flash.list_files(image, GEOMETRY) == ["/boot.py"]


# -- 3. boot failures name their cause ---------------------------------------------------


def _without_root_powers() -> None:
    """In the child: as root, let file permissions apply (drop CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH from the bounding set; exec then leaves them out)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP")


@pytest.mark.parametrize("mode", [0o444, 0o000], ids=["read-only", "unreadable"])
def test_an_image_the_board_cannot_write_is_named(tmp_path: Path, mode: int) -> None:
    image = tmp_path / "board.flash"
    flash.create_erased(image, GEOMETRY)
    image.chmod(mode)
    start = time.monotonic()
    proc = subprocess.run(
        [KOMMUNE, "emulate", "--blank", "--no-radio", "--flash", str(image)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        preexec_fn=_without_root_powers if os.geteuid() == 0 else None,
    )
    assert time.monotonic() - start < PROMPT_S
    assert proc.returncode == 2
    assert proc.stderr == (
        f"kommune emulate: error: --flash: {image}: the board cannot read and write it"
        " (Permission denied)\n"
    )


def test_other_boot_failures_are_named_before_anything_starts(tmp_path: Path) -> None:
    line, took = _refused("--blank", "--no-radio", "--flash", str(tmp_path))
    assert line == (
        f"kommune emulate: error: --flash: {tmp_path} is a directory;"
        " give the flash image's file name"
    )
    assert took < PROMPT_S
    for heap in ("16", "32"):
        line, took = _refused("--blank", "--no-radio", "--heap", heap)
        assert line.startswith("kommune emulate: error: --heap: give 40 to 65536 KB")
        assert took < PROMPT_S


# -- 4. SIGKILL leaves nothing behind ------------------------------------------------


@pytest.fixture
def private_tmp() -> Iterator[Path]:
    """A temp folder of the test's own (short: the rig's unix socket lives in it)."""
    path = Path(tempfile.mkdtemp(prefix="kt-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_sigkill_leaves_no_process_and_the_next_start_cleans_up(private_tmp: Path) -> None:
    env = {**os.environ, "TMPDIR": str(private_tmp)}
    killed = _emulate("--blank", "--json", env=env)
    _ports(killed)
    children = descendants(killed.pid)
    commands = " | ".join(cmdline(pid) for pid in children)
    assert "kommune.hil.radio.air" in commands and "vmlaunch.py" in commands, commands
    killed.kill()
    killed.communicate(timeout=10)
    deadline = time.monotonic() + 2.0
    while (left := [p for p in children if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not left, f"outlived a SIGKILLed kommune emulate: {[cmdline(p) for p in left]}"
    stale = set(private_tmp.glob("kommune-*"))
    assert {p.name.rsplit("-", 1)[0] for p in stale} == {"kommune-rig", "kommune-vm"}

    second = _emulate("--blank", "--no-radio", "--json", env=env)
    _ports(second)
    assert not stale & set(private_tmp.glob("kommune-*")), "stale work directories stayed"
    status, err = _ctrl_c(second)
    assert status == 0, err
    assert not list(private_tmp.glob("kommune-*"))


# -- 5. Ctrl-C at any moment ---------------------------------------------------------


class _StderrReader(threading.Thread):
    """Reads a `python -X importtime` child's stderr to its end; `started` is set once
    asyncio is imported, i.e. once `kommune emulate`'s `run` began."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.lines: list[str] = []
        self.started = threading.Event()
        self.start()

    def run(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if line.rstrip().endswith("| asyncio"):
                self.started.set()

    def wait_started(self) -> bool:
        return self.started.wait(20.0)


def _when_child(proc: subprocess.Popen[str], marker: str) -> Callable[[], bool]:
    def appeared() -> bool:
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            if any(marker in cmdline(p) for p in descendants(proc.pid)):
                return True
            time.sleep(0.001)
        return False

    return appeared


@pytest.mark.parametrize("moment", ["started", "air starting", "booting", "ready"])
def test_ctrl_c_at_any_moment_is_quiet(moment: str) -> None:
    command = [KOMMUNE, "emulate", "--blank", "--json"]
    if moment == "started":
        command = [sys.executable, "-X", "importtime", *command]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    reader = _StderrReader(proc) if moment == "started" else None
    if reader is not None:
        wait = reader.wait_started
    elif moment == "air starting":
        wait = _when_child(proc, "kommune.hil.radio.air")
    elif moment == "booting":
        wait = _when_child(proc, "vmlaunch.py")
    else:
        wait = lambda: bool(_ports(proc))  # noqa: E731
    assert wait(), f"kommune emulate never got to {moment}"
    children = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    if reader is not None:  # it reads stderr
        proc.wait(timeout=30)
        reader.join(10.0)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
        err = "".join(reader.lines)
    else:
        _, err = proc.communicate(timeout=30)
    lines = [line for line in err.splitlines() if not line.startswith("import time:")]
    assert "Traceback" not in err, err
    if moment == "ready":
        assert (proc.returncode, lines) == (0, [])
    else:  # abandoned -- unless the board got ready in the meantime
        assert (proc.returncode, lines) in ((130, ["kommune emulate: interrupted"]), (0, [])), err
    assert not [p for p in children if running(p)], "a child outlived kommune emulate"
