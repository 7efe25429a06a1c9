# The lock's wiring and defaults. Pins are those of firmware/boards/esp32-lock.json
# (the emulated board) and of the real board it describes; settings can be
# changed per lock in /lock/config.json (see README.md).
import json

from micropython import const

PIN_MOTOR_DIR = const(25)  # 1: retract the bolt (unlock), 0: throw it (lock)
PIN_MOTOR_EN = const(26)  # motor driver enable
PIN_LOCKED = const(34)  # end switch: 1 while the bolt is fully thrown
PIN_UNLOCKED = const(35)  # end switch: 1 while the bolt is fully retracted
PIN_DOOR = const(39)  # door contact: 1 while the door is shut
PIN_BATTERY = const(36)  # battery through a 1:3 divider (ADC, 11 dB)
BATTERY_DIVIDER = const(3)
BATTERY_FULL_MV = const(6000)  # 4 x AA alkaline
BATTERY_EMPTY_MV = const(4400)  # the motor stalls below this

CONFIG_PATH = "/lock/config.json"

# Defaults; /lock/config.json may set any of these keys.
DEFAULTS = {
    "relock_ms": 5000,  # the bolt is thrown again this long after an opening ...
    "door_settle_ms": 500,  # ... or this long after the door shut again
    "travel_timeout_ms": 1000,  # an end switch not reached in this time: a fault
    "audit_capacity": 64,  # entries kept until the edge acks them
    "wdt_ms": 8000,  # watchdog timeout
}


def load() -> dict:
    cfg = dict(DEFAULTS)
    try:
        with open(CONFIG_PATH) as f:
            given = json.load(f)
        for key in cfg:
            if key in given:
                cfg[key] = int(given[key])
    except (OSError, ValueError, TypeError):
        pass  # no file, or a broken one: the defaults
    return cfg
