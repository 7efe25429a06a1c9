# Lamp messages (types 0x20-0x3F) and the DALI-style dimming curve.
#
# Levels follow DALI arc power (IEC 62386-102): 0 = off, 1..254 on a
# logarithmic curve from 0.1 % to 100 % of light output, so equal steps look
# equal to the eye; 255 (MASK) means "no change". level_to_duty() maps a level
# to a 16-bit PWM duty (machine.PWM.duty_u16) with one table lookup.
#
# Group set = SetLevel sent to a group address (frame.group_address) or to
# BROADCAST; the frame layer does the addressing, the payload is the same.
from kommune.protocols.errors import BAD_VALUE, ProtocolError
from kommune.protocols.message import I16, U8, U16, U32, Message, register

SET_LEVEL = 0x20
RECALL_SCENE = 0x21
STORE_SCENE = 0x22
PRESENCE = 0x23
ENERGY_REPORT = 0x24
FAILURE_REPORT = 0x25

OFF = 0
MIN_LEVEL = 1
MAX_LEVEL = 254
MASK = 255  # "no change": stops a fade where it is; in a scene, "not in this scene"
SCENES = 16
MAX_DUTY = 0xFFFF

# Presence.object_class
OBJECT_UNKNOWN = 0
OBJECT_PEDESTRIAN = 1
OBJECT_CYCLIST = 2
OBJECT_VEHICLE = 3

# FailureReport.faults bits
FAULT_LAMP_OPEN = 0x0001  # no load: LED string open circuit
FAULT_LAMP_SHORT = 0x0002
FAULT_DRIVER_OVERTEMP = 0x0004
FAULT_SUPPLY_LOW = 0x0008
FAULT_SUPPLY_HIGH = 0x0010
FAULT_SENSOR = 0x0020  # presence sensor not answering
FAULT_PWM_STUCK = 0x0040  # measured output disagrees with the commanded level

# duty_u16 per level 0..254, big-endian u16 each:
# round(65535 * 10 ** (3 * (level - 1) / 253 - 3)) for level >= 1, 0 for off.
_DUTY = (
    b"\x00\x00\x00\x42\x00\x43\x00\x45\x00\x47\x00\x49\x00\x4b\x00\x4d\x00\x4f\x00\x52\x00\x54"
    b"\x00\x56\x00\x58\x00\x5b\x00\x5d\x00\x60\x00\x63\x00\x65\x00\x68\x00\x6b\x00\x6e\x00\x71"
    b"\x00\x74\x00\x77\x00\x7b\x00\x7e\x00\x82\x00\x85\x00\x89\x00\x8d\x00\x91\x00\x95\x00\x99"
    b"\x00\x9d\x00\xa1\x00\xa6\x00\xaa\x00\xaf\x00\xb4\x00\xb9\x00\xbe\x00\xc3\x00\xc9\x00\xce"
    b"\x00\xd4\x00\xda\x00\xe0\x00\xe6\x00\xec\x00\xf3\x00\xfa\x01\x01\x01\x08\x01\x0f\x01\x17"
    b"\x01\x1e\x01\x26\x01\x2e\x01\x37\x01\x3f\x01\x48\x01\x51\x01\x5b\x01\x64\x01\x6e\x01\x78"
    b"\x01\x83\x01\x8d\x01\x98\x01\xa4\x01\xaf\x01\xbb\x01\xc7\x01\xd4\x01\xe1\x01\xee\x01\xfc"
    b"\x02\x0a\x02\x18\x02\x27\x02\x37\x02\x46\x02\x56\x02\x67\x02\x78\x02\x89\x02\x9b\x02\xae"
    b"\x02\xc1\x02\xd4\x02\xe8\x02\xfd\x03\x12\x03\x28\x03\x3e\x03\x55\x03\x6d\x03\x85\x03\x9e"
    b"\x03\xb8\x03\xd2\x03\xed\x04\x09\x04\x26\x04\x43\x04\x61\x04\x80\x04\xa0\x04\xc1\x04\xe3"
    b"\x05\x05\x05\x29\x05\x4d\x05\x73\x05\x99\x05\xc1\x05\xea\x06\x14\x06\x3f\x06\x6b\x06\x99"
    b"\x06\xc7\x06\xf7\x07\x29\x07\x5c\x07\x90\x07\xc5\x07\xfc\x08\x35\x08\x6f\x08\xab\x08\xe8"
    b"\x09\x27\x09\x68\x09\xab\x09\xef\x0a\x36\x0a\x7e\x0a\xc8\x0b\x15\x0b\x63\x0b\xb4\x0c\x07"
    b"\x0c\x5c\x0c\xb4\x0d\x0e\x0d\x6a\x0d\xc9\x0e\x2b\x0e\x8f\x0e\xf7\x0f\x61\x0f\xce\x10\x3e"
    b"\x10\xb1\x11\x27\x11\xa1\x12\x1d\x12\x9e\x13\x22\x13\xa9\x14\x35\x14\xc4\x15\x57\x15\xee"
    b"\x16\x89\x17\x29\x17\xcd\x18\x76\x19\x23\x19\xd5\x1a\x8c\x1b\x49\x1c\x0a\x1c\xd1\x1d\x9d"
    b"\x1e\x6f\x1f\x46\x20\x24\x21\x08\x21\xf2\x22\xe2\x23\xd9\x24\xd7\x25\xdc\x26\xe9\x27\xfc"
    b"\x29\x18\x2a\x3b\x2b\x66\x2c\x9a\x2d\xd6\x2f\x1b\x30\x68\x31\xbf\x33\x20\x34\x8a\x35\xfe"
    b"\x37\x7d\x39\x06\x3a\x9a\x3c\x3a\x3d\xe4\x3f\x9b\x41\x5e\x43\x2d\x45\x09\x46\xf2\x48\xe9"
    b"\x4a\xed\x4d\x00\x4f\x22\x51\x53\x53\x93\x55\xe3\x58\x44\x5a\xb5\x5d\x38\x5f\xcc\x62\x73"
    b"\x65\x2d\x67\xfa\x6a\xda\x6d\xd0\x70\xda\x73\xf9\x77\x2f\x7a\x7c\x7d\xe0\x81\x5b\x84\xf0"
    b"\x88\x9e\x8c\x66\x90\x49\x94\x47\x98\x62\x9c\x9a\xa0\xf0\xa5\x64\xa9\xf8\xae\xac\xb3\x82"
    b"\xb8\x7a\xbd\x95\xc2\xd5\xc8\x39\xcd\xc4\xd3\x76\xd9\x50\xdf\x54\xe5\x83\xeb\xdd\xf2\x64"
    b"\xf9\x1a\xff\xff"
)


def level_to_duty(level: int) -> int:
    # PWM duty (0..65535) for an arc power level (0..254).
    if not 0 <= level <= MAX_LEVEL:
        raise ProtocolError(BAD_VALUE, "level %d not in 0..%d" % (level, MAX_LEVEL))
    return _DUTY[2 * level] << 8 | _DUTY[2 * level + 1]


def duty_to_level(duty: int) -> int:
    # The level whose duty is nearest to `duty` (ties go to the lower level).
    if not 0 <= duty <= MAX_DUTY:
        raise ProtocolError(BAD_VALUE, "duty %d not in 0..%d" % (duty, MAX_DUTY))
    lo = 0
    hi = MAX_LEVEL
    while lo < hi:  # smallest level with level_to_duty(level) >= duty
        mid = (lo + hi) >> 1
        if (_DUTY[2 * mid] << 8 | _DUTY[2 * mid + 1]) < duty:
            lo = mid + 1
        else:
            hi = mid
    if lo > 0:
        below = _DUTY[2 * lo - 2] << 8 | _DUTY[2 * lo - 1]
        above = _DUTY[2 * lo] << 8 | _DUTY[2 * lo + 1]
        if duty - below <= above - duty:
            return lo - 1
    return lo


class SetLevel(Message):
    # Go to `level` (0..254, or MASK to stop a fade) over `fade_ms`.
    TYPE = SET_LEVEL
    _LAYOUT = (("level", U8, 0, 0xFF), ("fade_ms", U16, 0, 0xFFFF))

    def __init__(self, *, level: int = 0, fade_ms: int = 0) -> None:
        self.level = level
        self.fade_ms = fade_ms


class RecallScene(Message):
    TYPE = RECALL_SCENE
    _LAYOUT = (("scene", U8, 0, SCENES - 1), ("fade_ms", U16, 0, 0xFFFF))

    def __init__(self, *, scene: int = 0, fade_ms: int = 0) -> None:
        self.scene = scene
        self.fade_ms = fade_ms


class StoreScene(Message):
    # Remember `level` for `scene`; MASK takes the lamp out of the scene.
    TYPE = STORE_SCENE
    _LAYOUT = (("scene", U8, 0, SCENES - 1), ("level", U8, 0, 0xFF))

    def __init__(self, *, scene: int = 0, level: int = 0) -> None:
        self.scene = scene
        self.level = level


class Presence(Message):
    # A lamp's presence sensor saw something (present=1) or the area cleared (0).
    TYPE = PRESENCE
    _LAYOUT = (
        ("sensor", U8, 0, 0xFF),
        ("present", U8, 0, 1),
        ("object_class", U8, 0, 0xFF),
        ("speed_kmh", U8, 0, 0xFF),
    )

    def __init__(
        self, *, sensor: int = 0, present: int = 0, object_class: int = 0, speed_kmh: int = 0
    ) -> None:
        self.sensor = sensor
        self.present = present
        self.object_class = object_class
        self.speed_kmh = speed_kmh


class EnergyReport(Message):
    # Cumulative energy and burn time since installation, and the power now.
    TYPE = ENERGY_REPORT
    _LAYOUT = (
        ("energy_wh", U32, 0, 0xFFFFFFFF),
        ("power_w_x10", U16, 0, 0xFFFF),
        ("level", U8, 0, MAX_LEVEL),
        ("burn_hours", U32, 0, 0xFFFFFFFF),
    )

    def __init__(
        self, *, energy_wh: int = 0, power_w_x10: int = 0, level: int = 0, burn_hours: int = 0
    ) -> None:
        self.energy_wh = energy_wh
        self.power_w_x10 = power_w_x10
        self.level = level
        self.burn_hours = burn_hours


class FailureReport(Message):
    # The FAULT_* bits active now (0 = all cleared), sent when they change.
    TYPE = FAILURE_REPORT
    _LAYOUT = (
        ("faults", U16, 0, 0xFFFF),
        ("level", U8, 0, MAX_LEVEL),
        ("driver_temp_c_x10", I16, -0x8000, 0x7FFF),
    )

    def __init__(self, *, faults: int = 0, level: int = 0, driver_temp_c_x10: int = 0) -> None:
        self.faults = faults
        self.level = level
        self.driver_temp_c_x10 = driver_temp_c_x10


register(SetLevel, RecallScene, StoreScene, Presence, EnergyReport, FailureReport)
