"""The door lock's mechanism model on its own: the bolt travels while the motor runs and
closes an end switch only at its end; a jam stops it short; the door opens only with the
bolt retracted and may be held open; the battery is read through the divider and drains
while the motor runs; a reset stops the motor."""

from __future__ import annotations

import asyncio

import pytest

from kommune.hil import profiles
from kommune.hil.models.adc import AdcBank
from kommune.hil.models.bolt import BETWEEN, LOCKED, UNLOCKED, BoltMechanism
from kommune.hil.models.pins import IN, OUT, PinBank

LOCK = profiles.load("esp32-lock")
DIR, EN, SW_LOCKED, SW_UNLOCKED, DOOR, BATTERY = 25, 26, 34, 35, 39, 36
TRAVEL_S = 0.05


class Rig:
    def __init__(self, **options: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.to_vm: list[tuple[int, int]] = []
        self.pins = PinBank(LOCK, lambda pin, level: self.to_vm.append((pin, level)))
        self.adc = AdcBank(LOCK, noise_uv=0)
        self.changed = asyncio.Event()
        self.pins.listeners.append(lambda _pin, _level: self.changed.set())
        self.bolt = BoltMechanism(
            self.loop,
            self.pins,
            self.adc,
            dir=DIR,
            enable=EN,
            locked=SW_LOCKED,
            unlocked=SW_UNLOCKED,
            door=DOOR,
            battery=BATTERY,
            travel_s=TRAVEL_S,
            **options,
        )
        for pin in (DIR, EN):
            self.pins.vm_init(pin, OUT, None, 0)
        for pin in (SW_LOCKED, SW_UNLOCKED, DOOR):
            self.pins.vm_init(pin, IN, None, None)

    def motor(self, direction: int) -> None:
        """+1 retract, -1 throw, 0 stop: as the firmware drives the pins."""
        if direction:
            self.pins.vm_write(DIR, 1 if direction > 0 else 0)
        self.pins.vm_write(EN, 1 if direction else 0)

    async def until(self, pin: int, level: int, timeout_s: float = 1.0) -> None:
        async with asyncio.timeout(timeout_s):
            while self.pins.level(pin) != level:
                self.changed.clear()
                await self.changed.wait()


async def test_the_bolt_travels_end_to_end_only_while_the_motor_runs() -> None:
    rig = Rig()
    bolt = rig.bolt
    assert (bolt.state, rig.pins.level(SW_LOCKED), rig.pins.level(DOOR)) == (LOCKED, 1, 1)
    started = rig.loop.time()
    rig.motor(+1)
    await rig.until(SW_UNLOCKED, 1)
    assert rig.loop.time() - started >= TRAVEL_S * 0.9
    assert (bolt.state, rig.pins.level(SW_LOCKED)) == (UNLOCKED, 0)
    rig.motor(0)
    # Halfway back, the motor stops: neither switch.
    rig.motor(-1)
    await rig.until(SW_UNLOCKED, 0)
    rig.motor(0)
    assert bolt.state == BETWEEN and rig.pins.level(SW_LOCKED) == 0
    rig.motor(-1)
    await rig.until(SW_LOCKED, 1)
    assert bolt.states() == [LOCKED, BETWEEN, UNLOCKED, BETWEEN, LOCKED]
    assert bolt.motor_runs == 3
    # The VM was told of every switch change (it configured them as inputs).
    assert (SW_UNLOCKED, 1) in rig.to_vm and rig.to_vm[-1] == (SW_LOCKED, 1)


async def test_a_jammed_bolt_reaches_no_end_until_freed() -> None:
    rig = Rig()
    rig.bolt.jam()
    rig.motor(+1)
    with pytest.raises(TimeoutError):
        await rig.until(SW_UNLOCKED, 1, timeout_s=TRAVEL_S * 4)
    assert rig.bolt.state == LOCKED and rig.bolt.position == 0.0
    rig.bolt.clear_jam()
    await rig.until(SW_UNLOCKED, 1)
    assert rig.bolt.state == UNLOCKED


async def test_the_door_opens_only_unbolted_and_can_be_held_open() -> None:
    rig = Rig()
    bolt = rig.bolt
    assert bolt.open_door() is False and rig.pins.level(DOOR) == 1
    rig.motor(+1)
    await rig.until(SW_UNLOCKED, 1)
    rig.motor(0)
    assert bolt.open_door() and rig.pins.level(DOOR) == 0
    bolt.hold_door_open()
    assert bolt.close_door() is False and not bolt.door_closed
    bolt.hold_door_open(False)
    assert bolt.close_door() and rig.pins.level(DOOR) == 1
    assert [s for _, s in bolt.history if s.startswith("door")] == ["door open", "door closed"]


async def test_battery_through_the_divider_drains_while_the_motor_runs() -> None:
    rig = Rig(battery_v=6.0, divider=3.0, drain_v_per_s=2.0)
    assert rig.adc.voltage(BATTERY) == pytest.approx(2.0)
    rig.motor(+1)
    await rig.until(SW_UNLOCKED, 1)
    rig.motor(0)
    used = 6.0 - rig.bolt.battery_v
    assert 2.0 * TRAVEL_S * 0.9 <= used <= 2.0 * TRAVEL_S * 3
    assert rig.adc.voltage(BATTERY) == pytest.approx(rig.bolt.battery_v / 3.0)
    rig.bolt.set_battery(4.5)
    assert rig.adc.vm_read(BATTERY, 3)[1] == 1_500_000  # read_uv at 11 dB


async def test_a_reset_stops_the_motor() -> None:
    rig = Rig()
    rig.motor(+1)
    rig.pins.reset()  # the chip resets (or loses power): the driver's inputs fall
    assert rig.bolt.direction == 0
    with pytest.raises(TimeoutError):
        await rig.until(SW_UNLOCKED, 1, timeout_s=TRAVEL_S * 3)
    assert rig.bolt.state in (BETWEEN, LOCKED)
