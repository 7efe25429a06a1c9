"""An emulated parking bay for the tests: the parking firmware (compiled with mpy-cross,
as a bundle ships it) on an esp32-parking board with the QMC5883L model under the bay
and a radio, its report key derived from a site key drawn for the test; and the edge's
parking scanner hearing it through bleak on the virtual air.

    bay = await start_bay(air, make_board)             # provisioned, calibrated, on air
    async with edge_scanner(air, {bay.node: bay.key}, tmp_path) as edge:
        car = bay.park((2.0, 1.0, -30.0))
        await edge.wait_state(bay.node, OCCUPIED)
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from hil_tests.testing.agent import AgentProcess
from kommune.edge import keys
from kommune.edge.northbound import Event
from kommune.edge.parking.scanner import ParkingScanner
from kommune.edge.parking_keys import parking_key
from kommune.hil import firmware_files as fw
from kommune.hil.harness import Board
from kommune.hil.models.magnetometer import MagneticScene, Vector, Vehicle
from kommune.hil.radio import Air

PROFILE = "esp32-parking"
NODE = 301
PROTOCOL_MODULES = ["__init__", "errors", "hmac_sha256", "parking_report"]
COMMON_MODULES = ["__init__", "files", "adv"]
#: Short times: a reading every 100 ms, a state holds 0.5 s before it counts.
TEST_CONFIG = {
    "sample_ms": 100,
    "debounce_ms": 500,
    "burst_ms": 1500,
    "hb_burst_ms": 300,
    "adv_interval_ms": 50,
    "heartbeat_s": 3600,
    "calib_samples": 4,
    "adapt_shift": 3,
    "wdt_ms": 5000,
}
#: Typical full-presence signatures (uT): a car over the sensor, one in the next bay.
CAR: Vector = (2.0, 1.0, -30.0)
NEIGHBOUR: Vector = (0.8, 0.6, -8.5)

_EVENT = re.compile(r"parking: (event|heartbeat) seq=(\d+) state=(\w+) held_s=(\d+) report=(\w+)")


@cache
def firmware_files() -> dict[str, bytes]:
    """Board path -> content: main.py as source, every other module as .mpy."""
    return fw.bundle("parking", common=COMMON_MODULES, protocols=PROTOCOL_MODULES)


def identity_file(node: int, key: bytes) -> bytes:
    """/node/identity.json as the provisioner writes it (firmware/parking/README.md)."""
    return json.dumps({"address": node, "hw_rev": 1, "parking_key": key.hex()}).encode()


@dataclass(frozen=True)
class Line:
    """A report the firmware printed as it advertised it."""

    kind: str  # "event" or "heartbeat"
    seq: int
    state: str
    held_s: int
    report: bytes


@dataclass
class Bay:
    board: Board
    air: Air
    node: int
    key: bytes
    device: str  # the bay's device name on the air

    @property
    def scene(self) -> MagneticScene:
        scene: MagneticScene = self.board.device("magnetometer").scene
        return scene

    def park(self, signature: Vector, ramp_s: float = 0.5) -> Vehicle:
        vehicle: Vehicle = self.board.call(self.scene.park_signature, signature, ramp_s=ramp_s)
        return vehicle

    def leave(self, vehicle: Vehicle) -> None:
        self.board.call(self.scene.leave, vehicle)

    def set_temperature(self, celsius: float) -> None:
        self.board.call(setattr, self.scene, "temperature_c", celsius)

    def console(self) -> str:
        return self.board.console_output().rsplit("rst:", 1)[-1]

    def lines(self) -> list[Line]:
        return [
            Line(m[1], int(m[2]), m[3], int(m[4]), bytes.fromhex(m[5]))
            for m in _EVENT.finditer(self.console())
        ]

    def events(self) -> list[Line]:
        return [line for line in self.lines() if line.kind == "event"]

    def ready(self) -> bool:
        return f"parking {self.node} ready" in self.console()


async def start_bay(
    air: Air,
    make_board: Callable[..., Board],
    *,
    node: int = NODE,
    config: dict[str, int] | None = None,
    scene: dict[str, Any] | None = None,
    name: str = "bay",
) -> Bay:
    """A parking board on the air, provisioned with a key from a fresh site key, booted
    and calibrated over an empty bay."""
    site_key = keys.new_site_key()
    key = parking_key(site_key, node)
    files = dict(firmware_files())
    files["/node/identity.json"] = identity_file(node, key)
    files["/node/config.json"] = json.dumps({**TEST_CONFIG, **(config or {})}).encode()
    address = f"F0:50:00:00:{node >> 8 & 0xFF:02X}:{node & 0xFF:02X}"
    device = await air.add_device(name, address)
    board = await asyncio.to_thread(make_board, name, PROFILE, files=files, radio=device)
    bay = Bay(board, air, node, key, name)
    for attr, value in (scene or {}).items():
        board.call(setattr, bay.scene, attr, value)
    await wait_for(bay.ready, 10.0, what=f"bay {node} ready; console:\n{bay.console()}")
    return bay


async def wait_for(predicate: Callable[[], bool], timeout_s: float, *, what: str) -> None:
    """Poll `predicate` (the console, a model) without blocking the event loop."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        await asyncio.sleep(0.02)


@dataclass
class Committed:
    """What the scanner appended to the outbox, with when (time.monotonic())."""

    at: float
    event: Event


class EdgeScanner:
    """The edge's parking scanner, committing to a list instead of an outbox."""

    def __init__(self, bay_keys: dict[int, bytes], state_dir: Path, transport: str) -> None:
        self.committed: list[Committed] = []
        self.changed = asyncio.Event()
        self.scanner = ParkingScanner(bay_keys, state_dir, self.append, transport=transport)

    async def append(self, events: Sequence[Event]) -> list[int | None]:
        now = time.monotonic()
        self.committed += [Committed(now, e) for e in events]
        self.changed.set()
        return [None] * len(events)

    def states(self, node: int) -> list[tuple[float, int]]:
        stream = f"bay-{node}/occupancy"
        return [(c.at, int(c.event.value)) for c in self.committed if c.event.stream == stream]

    def durations(self, node: int) -> list[int]:
        stream = f"bay-{node}/prev-duration"
        return [int(c.event.value) for c in self.committed if c.event.stream == stream]

    async def wait_states(self, node: int, n: int, timeout_s: float = 10.0) -> list[int]:
        """The bay's first `n` committed states, waiting for them."""
        async with asyncio.timeout(timeout_s):
            while len(self.states(node)) < n:
                self.changed.clear()
                await self.changed.wait()
        return [s for _, s in self.states(node)]


@asynccontextmanager
async def edge_scanner(
    air: Air, bay_keys: dict[int, bytes], state_dir: Path, name: str = "edge"
) -> AsyncIterator[EdgeScanner]:
    """The edge's parking scanner on its own device on the air, committing to a list."""
    device = await air.add_device(name)
    edge = EdgeScanner(bay_keys, state_dir, device.transport)
    await edge.scanner.start()
    task = asyncio.create_task(edge.scanner.run())
    try:
        yield edge
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await edge.scanner.stop()


# -- the edge agent ------------------------------------------------------------------------

KOMMUNE = str(Path(sys.executable).with_name("kommune"))


def site_file(
    folder: Path, *, broker_port: int, transport: str, bay_keys: dict[int, bytes]
) -> Path:
    """A site with one street of BLE bays, their key file (0600) and a broker; occupancy
    batches close after 0.1 s so events reach the backend at once."""
    keys_path = folder / "bays.json"
    keys_path.write_text(json.dumps({str(n): k.hex() for n, k in bay_keys.items()}))
    keys_path.chmod(0o600)
    bays = ", ".join(str(n) for n in bay_keys)
    path = folder / "site.toml"
    path.write_text(
        '[agent]\nid = "parking-agent"\nsite = "lab"\n\n'
        f'[broker]\nhost = "127.0.0.1"\ntls = false\nport = {broker_port}\n\n'
        '[outbox]\ndir = "state"\n\n[health]\nbind = "127.0.0.1:0"\n\n'
        "[uplink.occupancy]\nbatch_age_s = 0.1\n\n"
        f'[parking]\nkeys = "bays.json"\ntransport = "{transport}"\n\n'
        f'[[streets]]\nname = "storgata"\nbays = [{bays}]\n'
    )
    return path


#: The agent beside the bays (hil_tests/testing/agent.py).
Agent = AgentProcess
