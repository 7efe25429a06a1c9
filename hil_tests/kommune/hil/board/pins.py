# machine.Pin and machine.Signal over the rig: the rig's pin models own the
# electrical level; the VM keeps a mirror updated by PIN_LEVEL events and runs
# IRQ handlers on the edges they carry (at the VM's dispatch points, as soft
# IRQs). Constants are the ESP32 port's.
from . import rig as _rig
from . import rigwire

_levels: dict = {}  # pin id -> last known level
_irqs: dict = {}  # pin id -> [handler, trigger, Pin]
_registered: list = []


def _on_level(payload: bytes) -> None:
    pin = payload[0]
    level = payload[1]
    old = _levels.get(pin, level)
    _levels[pin] = level
    irq = _irqs.get(pin)
    if irq is None or old == level or irq[0] is None:
        return
    edge = Pin.IRQ_RISING if level else Pin.IRQ_FALLING
    if irq[1] & edge:
        irq[0](irq[2])


def _ensure_handler() -> None:
    if not _registered:
        _rig.get().on(rigwire.PIN_LEVEL, _on_level)
        _registered.append(True)


def pin_id(pin: object) -> int:
    if isinstance(pin, Pin):
        return pin._id
    if isinstance(pin, int):
        return pin
    raise ValueError("invalid pin")


class _PinIRQ:
    def __init__(self, pin: "Pin") -> None:
        self._pin = pin

    def trigger(self) -> int:
        irq = _irqs.get(self._pin._id)
        return irq[1] if irq else 0

    def flags(self) -> int:
        return self.trigger()


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_DOWN = 1
    PULL_UP = 2
    PULL_HOLD = 4
    IRQ_RISING = 1
    IRQ_FALLING = 2
    WAKE_LOW = 4
    WAKE_HIGH = 5
    DRIVE_0 = 0
    DRIVE_1 = 1
    DRIVE_2 = 2
    DRIVE_3 = 3

    def __init__(
        self,
        id: object,
        mode: int = -1,
        pull: object = -1,
        *,
        value: object = None,
        drive: object = None,
        hold: object = None,
    ) -> None:
        self._id = pin_id(id)
        self._mode = 0
        _ensure_handler()
        self.init(mode, pull, value=value, drive=drive, hold=hold)

    def init(
        self,
        mode: int = -1,
        pull: object = -1,
        *,
        value: object = None,
        drive: object = None,
        hold: object = None,
    ) -> None:
        m = rigwire.NONE8 if mode == -1 else mode
        if pull == -1:
            p = rigwire.NONE8
        elif pull is None:
            p = 0
        else:
            p = int(pull)  # type: ignore[call-overload]
        v = rigwire.NONE8 if value is None else (1 if value else 0)
        reply = _rig.get().call(rigwire.PIN_INIT, bytes((self._id, m, p, v)))
        if mode != -1:
            self._mode = mode
        _levels[self._id] = reply[0]

    def value(self, x: object = None) -> int | None:
        if x is None:
            _rig.get().service()
            return _levels.get(self._id, 0)
        level = 1 if x else 0
        _levels[self._id] = level
        _rig.get().send(rigwire.PIN_WRITE, bytes((self._id, level)))
        return None

    def __call__(self, x: object = None) -> int | None:
        return self.value(x)

    def on(self) -> None:
        self.value(1)

    def off(self) -> None:
        self.value(0)

    def irq(
        self,
        handler: object = None,
        trigger: int = 3,
        *,
        priority: int = 1,
        wake: object = None,
        hard: bool = False,
    ) -> _PinIRQ:
        if handler is None:
            _irqs.pop(self._id, None)
            trigger = 0
        else:
            _irqs[self._id] = [handler, trigger, self]
        _rig.get().send(rigwire.PIN_IRQ, bytes((self._id, trigger)))
        return _PinIRQ(self)

    def __repr__(self) -> str:
        return "Pin(%d)" % self._id


class Signal:
    def __init__(self, pin: object, *args: object, invert: bool = False, **kwargs: object) -> None:
        self._pin = pin if isinstance(pin, Pin) else Pin(pin, *args, **kwargs)  # type: ignore[arg-type]
        self._invert = invert

    def value(self, x: object = None) -> int | None:
        if x is None:
            level = self._pin.value()
            return (1 - level) if self._invert and level is not None else level
        self._pin.value((not x) if self._invert else x)
        return None

    def __call__(self, x: object = None) -> int | None:
        return self.value(x)

    def on(self) -> None:
        self.value(1)

    def off(self) -> None:
        self.value(0)
