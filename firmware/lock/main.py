# The door lock's firmware (README.md). Hardware is made here and handed in.
import asyncio

import config
import identity
import machine
from app import LockApp
from battery import Battery
from bolt import Bolt
from machine import ADC, Pin


def main() -> None:
    import bluetooth

    cfg = config.load()
    wdt = machine.WDT(timeout=cfg["wdt_ms"])
    bolt = Bolt(
        motor_dir=Pin(config.PIN_MOTOR_DIR, Pin.OUT, value=0),
        motor_en=Pin(config.PIN_MOTOR_EN, Pin.OUT, value=0),
        sw_locked=Pin(config.PIN_LOCKED, Pin.IN),
        sw_unlocked=Pin(config.PIN_UNLOCKED, Pin.IN),
        door=Pin(config.PIN_DOOR, Pin.IN),
        travel_timeout_ms=cfg["travel_timeout_ms"],
    )
    battery = Battery(ADC(Pin(config.PIN_BATTERY), atten=ADC.ATTN_11DB))
    ident, why = identity.load()
    app = LockApp(
        bluetooth.BLE(),
        bolt=bolt,
        battery=battery,
        rtc=machine.RTC(),
        wdt=wdt,
        cfg=cfg,
        ident=ident,
        why_unprovisioned=why,
        reset_cause=machine.reset_cause(),
    )
    asyncio.run(app.run())


main()
