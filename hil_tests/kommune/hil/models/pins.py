"""GPIO: levels, pulls, open drain, and who drives each pin."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kommune.hil.profiles import BoardProfile
from kommune.hil.rigchannel import RigFault

IN = 1
OUT = 3
OPEN_DRAIN = 7
PULL_DOWN = 1
PULL_UP = 2


@dataclass
class PinState:
    mode: int | None = None  # None: the firmware has not configured it (since reset)
    pull: int = 0
    out_value: int = 0
    external: int | None = None  # level driven by the outside world; None: not driven
    irq_trigger: int = 0
    level: int = 0
    history: list[tuple[float, int]] = field(default_factory=list)  # (monotonic s, level)


class PinBank:
    def __init__(self, profile: BoardProfile, notify: Callable[[int, int], None]) -> None:
        self._profile = profile
        self._notify = notify  # (pin, level): tell the VM an input changed
        self._pins: dict[int, PinState] = {}
        # (pin, level) on every level change, whoever caused it: models wired to
        # the board's outputs (a motor driver) watch their pins through this.
        self.listeners: list[Callable[[int, int], None]] = []

    def state(self, pin: int) -> PinState:
        if pin not in self._profile.gpio:
            raise KeyError(f"GPIO{pin} does not exist on a {self._profile.name} board")
        return self._pins.setdefault(pin, PinState())

    @staticmethod
    def _resolve(s: PinState) -> int:
        if s.mode == OUT:
            return s.out_value
        pulled = 1 if s.pull == PULL_UP else 0
        if s.mode == OPEN_DRAIN:
            if s.out_value == 0:
                return 0
            return s.external if s.external is not None else (0 if s.pull == PULL_DOWN else 1)
        return s.external if s.external is not None else pulled

    def _update(self, pin: int, s: PinState, *, vm_knows: int | None = None) -> None:
        level = self._resolve(s)
        if level != s.level or not s.history:
            s.level = level
            s.history.append((time.monotonic(), level))
            self._tell(pin, level)
        if s.mode is not None and level != vm_knows:
            self._notify(pin, level)

    # -- the firmware's side --------------------------------------------------

    def vm_init(self, pin: int, mode: int | None, pull: int | None, value: int | None) -> int:
        if pin not in self._profile.gpio:
            raise RigFault.value_error("invalid pin")
        s = self.state(pin)
        mode = s.mode if mode is None else mode
        if mode in (OUT, OPEN_DRAIN) and pin in self._profile.input_only:
            raise RigFault.value_error("pin can only be input")
        s.mode = IN if mode is None else mode
        if pull is not None:
            s.pull = pull
        if value is not None:
            s.out_value = value
        s.level = self._resolve(s)
        if not s.history or s.history[-1][1] != s.level:
            s.history.append((time.monotonic(), s.level))
            self._tell(pin, s.level)
        return s.level

    def _tell(self, pin: int, level: int) -> None:
        for listener in self.listeners:
            listener(pin, level)

    def vm_write(self, pin: int, value: int) -> None:
        s = self.state(pin)
        s.out_value = value
        self._update(pin, s, vm_knows=value)

    def vm_irq(self, pin: int, trigger: int) -> None:
        self.state(pin).irq_trigger = trigger

    def reset(self) -> None:
        """After a reset every pin is an unconfigured input again; wiring stays."""
        for pin, s in self._pins.items():
            s.mode, s.pull, s.out_value, s.irq_trigger = None, 0, 0, 0
            self._update(pin, s)

    # -- the test's side ------------------------------------------------------

    def drive(self, pin: int, level: int | None) -> None:
        """Drive the pin from outside (0/1), or stop driving it (None)."""
        s = self.state(pin)
        old = s.level
        s.external = None if level is None else (1 if level else 0)
        self._update(pin, s, vm_knows=old)

    def level(self, pin: int) -> int:
        return self.state(pin).level

    def history(self, pin: int) -> list[tuple[float, int]]:
        return list(self.state(pin).history)
