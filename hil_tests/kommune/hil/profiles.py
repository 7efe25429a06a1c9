"""Board profiles: the hardware an emulated board presents (firmware/boards/NAME.json)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kommune.hil.errors import RigError
from kommune.hil.paths import FIRMWARE_ROOT

BOARDS_DIR = FIRMWARE_ROOT / "boards"

#: Reset kinds the rig knows; a profile maps each to machine.reset_cause().
RESET_KINDS = ("power_on", "brownout", "reset_pin", "watchdog", "deepsleep", "software", "panic")


class BoardProfileError(RigError, ValueError):
    """A board profile is missing or malformed."""


@dataclass(frozen=True)
class FlashGeometry:
    block_size: int
    block_count: int
    page_size: int

    @property
    def size(self) -> int:
        return self.block_size * self.block_count


@dataclass(frozen=True)
class DeviceSpec:
    """A peripheral wired to the board, e.g. an I2C magnetometer on (scl, sda)."""

    model: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BoardProfile:
    name: str
    description: str
    machine: str
    heap_kb: int
    cpu_hz: int
    flash: FlashGeometry
    gpio: frozenset[int]
    input_only: frozenset[int]
    adc: frozenset[int]
    adc_full_scale_uv: tuple[int, ...]
    pwm_channels: int
    pwm_freq_hz: tuple[int, int]
    i2c: dict[int, tuple[int, int]]
    uarts: dict[int, tuple[int, int]]
    link_uart: int
    reset_cause: dict[str, int]
    rom_reset: dict[str, tuple[int, str]]
    rom_banner: str
    devices: tuple[DeviceSpec, ...]

    def rom_text(self, kind: str) -> str:
        """What the ROM prints on the console after a reset of `kind`."""
        code, name = self.rom_reset[kind]
        return self.rom_banner.format(code=code, name=name)


def available() -> list[str]:
    return sorted(p.stem for p in BOARDS_DIR.glob("*.json"))


def _raw(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = BOARDS_DIR / f"{name}.json"
    if not path.is_file():
        known = ", ".join(available()) or "none"
        raise BoardProfileError(f"unknown board {name!r} (known: {known})")
    if name in seen:
        raise BoardProfileError(f"board profiles extend each other in a loop: {' -> '.join(seen)}")
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BoardProfileError(f"{path}: {e}") from e
    base = doc.pop("extends", None)
    if base is None:
        return doc
    merged = _raw(str(base), (*seen, name))
    merged.update(doc)
    return merged


def load(name: str) -> BoardProfile:
    """Load firmware/boards/NAME.json (following `extends`)."""
    doc = _raw(name)
    try:
        missing = [k for k in RESET_KINDS if k not in doc["reset_cause"]]
        if missing:
            raise BoardProfileError(f"board {name!r}: reset_cause lacks {', '.join(missing)}")
        flash = doc["flash"]
        return BoardProfile(
            name=doc["name"],
            description=doc["description"],
            machine=doc["machine"],
            heap_kb=int(doc["heap_kb"]),
            cpu_hz=int(doc["cpu_hz"]),
            flash=FlashGeometry(
                int(flash["block_size"]), int(flash["block_count"]), int(flash["page_size"])
            ),
            gpio=frozenset(doc["gpio"]),
            input_only=frozenset(doc["input_only"]),
            adc=frozenset(doc["adc"]),
            adc_full_scale_uv=tuple(doc["adc_full_scale_uv"]),
            pwm_channels=int(doc["pwm_channels"]),
            pwm_freq_hz=(int(doc["pwm_freq_hz"][0]), int(doc["pwm_freq_hz"][1])),
            i2c={int(k): (int(v[0]), int(v[1])) for k, v in doc["i2c"].items()},
            uarts={int(k): (int(v[0]), int(v[1])) for k, v in doc["uarts"].items()},
            link_uart=int(doc["link_uart"]),
            reset_cause={k: int(v) for k, v in doc["reset_cause"].items()},
            rom_reset={k: (int(v[0]), str(v[1])) for k, v in doc["rom_reset"].items()},
            rom_banner=doc["rom_banner"],
            devices=tuple(
                DeviceSpec(d["model"], {k: v for k, v in d.items() if k != "model"})
                for d in doc.get("devices", ())
            ),
        )
    except (KeyError, TypeError, ValueError, IndexError) as e:
        if isinstance(e, BoardProfileError):
            raise
        raise BoardProfileError(f"board {name!r}: malformed profile ({e!r})") from e


def profile_path(name: str) -> Path:
    return BOARDS_DIR / f"{name}.json"
