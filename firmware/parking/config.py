# The parking sensor's wiring, version and settings. Pins are those of
# firmware/boards/esp32-parking.json (the emulated board) and of the real
# board it describes. Settings live in /node/config.json (README.md).
try:
    from micropython import const
except ImportError:  # CPython (the model test reads the defaults)
    const = int  # type: ignore[assignment]

VERSION = (1, 0, 0)

I2C_ID = const(0)
PIN_SCL = const(22)  # QMC5883L
PIN_SDA = const(21)
PIN_RECAL = const(4)  # reed switch to ground (pull-up): a magnet held to it re-baselines

# (key, name, lo, hi, default), as common.settings rows (the node has no link:
# the file is the only way to set them; see load()). Signed values
# are allowed (the drift coefficients).
SETTINGS = [
    (0x40, "sample_ms", 50, 60000, 1000),  # one magnetometer reading this often
    (0x41, "occupied_above_ut_x10", 10, 2000, 140),  # |field - baseline| above: occupied
    (0x42, "free_below_ut_x10", 5, 2000, 80),  # below: free (between: no change)
    (0x43, "debounce_ms", 0, 600000, 3000),  # a new state must hold this long
    (0x44, "heartbeat_s", 5, 86400, 3600),  # a heartbeat report this often
    (0x45, "burst_ms", 100, 60000, 3000),  # advertise a new event this long
    (0x46, "hb_burst_ms", 100, 60000, 1000),  # advertise a heartbeat this long
    (0x47, "adv_interval_ms", 20, 10240, 100),  # advertising interval during a burst
    (0x48, "adapt_shift", 1, 12, 5),  # free baseline moves 1/2**n of the way per sample
    (0x49, "learn_dt_c_x10", 5, 500, 30),  # re-learn drift per degC after this change
    (0x4A, "calib_samples", 1, 64, 8),  # readings averaged for a (re)calibration
    (0x4B, "wdt_ms", 1000, 60000, 8000),
    (0x4C, "drift_x_nt_per_c", -5000, 5000, 0),  # initial temperature coefficients
    (0x4D, "drift_y_nt_per_c", -5000, 5000, 0),
    (0x4E, "drift_z_nt_per_c", -5000, 5000, 0),
    # Energy model (README.md): base current, charge per reading and per advert.
    (0x50, "sleep_ua", 1, 10000, 10),
    (0x51, "sample_uc", 1, 100000, 100),
    (0x52, "adv_event_uc", 1, 100000, 250),
    (0x53, "battery_mah", 100, 100000, 17000),
]


def load(path: str = "/node/config.json") -> dict:
    # The settings by name: the file's values over the defaults; a value out
    # of its range (or a broken file) keeps the default.
    import json

    from common import files

    values = {row[1]: row[4] for row in SETTINGS}
    raw = files.read(path)
    try:
        given = json.loads(raw) if raw is not None else {}
    except ValueError:
        given = {}
    if isinstance(given, dict):
        for _, name, lo, hi, _ in SETTINGS:
            v = given.get(name)
            if isinstance(v, int) and lo <= v <= hi:
                values[name] = v
    return values
