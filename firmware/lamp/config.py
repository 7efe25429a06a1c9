# The lamp's wiring, version and settings. Pins are those of
# firmware/boards/esp32-lamp.json (the emulated board) and of the real board
# it describes. Settings live in /node/config.json and can be set by the
# edge with ConfigSet (keys below; README.md).
from micropython import const

VERSION = (1, 0, 0)

PIN_PWM = const(25)  # LED driver dimming input (PWM)
PIN_PRESENCE = const(27)  # presence sensor output: 1 while something is there
PIN_CURRENT = const(34)  # LED current sense amplifier (ADC, 11 dB)
LINK_UART = const(2)
LINK_BAUD = const(115200)

# (key, name, lo, hi, default), after the runtime's own (common/node.py).
SETTINGS = [
    (0x20, "pwm_hz", 3000, 40000, 20000),  # PWM frequency: flicker-safe only
    (0x21, "floor_level", 1, 254, 1),  # lowest level the driver makes: 1..floor -> floor
    (0x22, "power_on_level", 0, 254, 254),  # level from boot until the edge says
    (0x23, "safe_level", 1, 254, 254),  # level when the edge falls silent (never 0)
    (0x24, "safe_fade_ms", 0, 65535, 2000),  # fade to the safe level
    (0x25, "presence_level", 0, 254, 254),  # presence brightens to at least this (0: off)
    (0x26, "presence_hold_s", 0, 3600, 30),  # kept this long after the area cleared
    (0x27, "presence_fade_ms", 0, 65535, 3000),  # then back to the commanded level
    (0x28, "energy_report_s", 1, 86400, 900),  # EnergyReport (and energy saved) this often
    (0x29, "sample_ms", 50, 60000, 1000),  # current sense sampled this often
    (0x2A, "supply_mv", 1000, 60000, 48000),  # LED driver output voltage
    (0x2B, "rated_ma", 1, 10000, 1000),  # LED current at full duty
    (0x2C, "sense_uv_per_ma", 1, 100000, 1000),  # current-sense gain, uV per mA
    (0x2D, "open_samples", 1, 100, 3),  # this many near-zero samples at level > 0: open
]
