# Parking messages (types 0x40-0x5F): one sensor node per bay, a few bytes per
# event.
#
# Occupancy carries its own event_seq (per node, survives link retries and
# reboots if the node persists it) besides the frame seq: the edge orders
# events and spots lost ones by it, and Heartbeat repeats the latest one.
# Magnetic values are in units of 0.1 uT (1 mG), signed where a direction.
from kommune.protocols.errors import BAD_VALUE, ProtocolError
from kommune.protocols.message import I16, U8, U16, U32, Message, register

OCCUPANCY = 0x40
HEARTBEAT = 0x41
CALIBRATE = 0x42
CALIBRATION_REPORT = 0x43

# Bay states
FREE = 0
OCCUPIED = 1
UNKNOWN = 2  # calibrating, or the sensor cannot tell (fault)

# Calibrate.action
KEEP_BASELINE = 0  # only set the thresholds
REBASELINE = 1  # the bay is empty now: take the current field as the baseline


class Occupancy(Message):
    # The bay changed to `state`; the previous state lasted prev_duration_s.
    TYPE = OCCUPANCY
    _LAYOUT = (
        ("state", U8, FREE, UNKNOWN),
        ("event_seq", U16, 0, 0xFFFF),
        ("prev_duration_s", U32, 0, 0xFFFFFFFF),
    )

    def __init__(self, *, state: int = FREE, event_seq: int = 0, prev_duration_s: int = 0) -> None:
        self.state = state
        self.event_seq = event_seq
        self.prev_duration_s = prev_duration_s


class Heartbeat(Message):
    # "Still here": the current state, the latest event_seq, battery and field.
    TYPE = HEARTBEAT
    _LAYOUT = (
        ("state", U8, FREE, UNKNOWN),
        ("event_seq", U16, 0, 0xFFFF),
        ("battery_mv", U16, 0, 0xFFFF),
        ("temp_c_x10", I16, -0x8000, 0x7FFF),
        ("field_delta_ut_x10", U16, 0, 0xFFFF),
    )

    def __init__(
        self,
        *,
        state: int = FREE,
        event_seq: int = 0,
        battery_mv: int = 0,
        temp_c_x10: int = 0,
        field_delta_ut_x10: int = 0,
    ) -> None:
        self.state = state
        self.event_seq = event_seq
        self.battery_mv = battery_mv
        self.temp_c_x10 = temp_c_x10
        self.field_delta_ut_x10 = field_delta_ut_x10


def _check_thresholds(occupied_above: int, free_below: int) -> None:
    # Hysteresis: a field delta between the two keeps the current state.
    if free_below > occupied_above:
        raise ProtocolError(
            BAD_VALUE, "free_below %d > occupied_above %d" % (free_below, occupied_above)
        )


class Calibrate(Message):
    # Edge -> node: detection thresholds (field delta from the baseline) and
    # how long a new state must hold before it is reported.
    TYPE = CALIBRATE
    _LAYOUT = (
        ("action", U8, KEEP_BASELINE, REBASELINE),
        ("occupied_above_ut_x10", U16, 0, 0xFFFF),
        ("free_below_ut_x10", U16, 0, 0xFFFF),
        ("debounce_s", U8, 0, 0xFF),
    )

    def __init__(
        self,
        *,
        action: int = KEEP_BASELINE,
        occupied_above_ut_x10: int = 0,
        free_below_ut_x10: int = 0,
        debounce_s: int = 0,
    ) -> None:
        self.action = action
        self.occupied_above_ut_x10 = occupied_above_ut_x10
        self.free_below_ut_x10 = free_below_ut_x10
        self.debounce_s = debounce_s

    def _check(self) -> None:
        _check_thresholds(self.occupied_above_ut_x10, self.free_below_ut_x10)


class CalibrationReport(Message):
    # Node -> edge: the baseline field (x, y, z) and the thresholds in force.
    TYPE = CALIBRATION_REPORT
    _LAYOUT = (
        ("baseline_x_ut_x10", I16, -0x8000, 0x7FFF),
        ("baseline_y_ut_x10", I16, -0x8000, 0x7FFF),
        ("baseline_z_ut_x10", I16, -0x8000, 0x7FFF),
        ("occupied_above_ut_x10", U16, 0, 0xFFFF),
        ("free_below_ut_x10", U16, 0, 0xFFFF),
        ("debounce_s", U8, 0, 0xFF),
    )

    def __init__(
        self,
        *,
        baseline_x_ut_x10: int = 0,
        baseline_y_ut_x10: int = 0,
        baseline_z_ut_x10: int = 0,
        occupied_above_ut_x10: int = 0,
        free_below_ut_x10: int = 0,
        debounce_s: int = 0,
    ) -> None:
        self.baseline_x_ut_x10 = baseline_x_ut_x10
        self.baseline_y_ut_x10 = baseline_y_ut_x10
        self.baseline_z_ut_x10 = baseline_z_ut_x10
        self.occupied_above_ut_x10 = occupied_above_ut_x10
        self.free_below_ut_x10 = free_below_ut_x10
        self.debounce_s = debounce_s

    def _check(self) -> None:
        _check_thresholds(self.occupied_above_ut_x10, self.free_below_ut_x10)


register(Occupancy, Heartbeat, Calibrate, CalibrationReport)
