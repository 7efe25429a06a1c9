# Bay occupancy from the magnetic field: deviation from an adaptive baseline,
# with hysteresis, debounce and temperature-drift compensation.
#
# Each reading is first compensated to the calibration temperature
# (field - k * (T - t_ref), k in uT/degC per axis), then compared with the
# baseline: |deviation| above occupied_above makes it occupied, below
# free_below free; a new state must hold for debounce_ms before it counts.
# While the bay is free and quiet the baseline follows the field slowly (slow
# magnetic drift); while occupied, or while a change is pending, it is frozen.
# An occupied bay also turns free when the field falls by more than a car's
# worth from its occupied level to inside the band: the car left, and what
# remains is a neighbour's weaker signature.
# k is learned while free: each time the temperature has moved learn_dt since
# the last anchor, the raw baseline's slope over it becomes k, so a car parked
# through a cold night leaves a bay whose baseline is right for the cold.
try:
    from micropython import const
except ImportError:  # CPython (the bench and the model test run this file too)
    const = int  # type: ignore[assignment]

FREE = const(0)
OCCUPIED = const(1)
UNKNOWN = const(2)
_SAME_T = 0.25  # degC: closer than this to the anchor is the same temperature


class Calibration:
    def __init__(self, baseline: list, t_ref: float, k: list) -> None:
        self.baseline = baseline  # uT, compensated to t_ref
        self.t_ref = t_ref
        self.k = k  # uT per degC

    def to_json(self) -> dict:
        return {"baseline": self.baseline, "t_ref": self.t_ref, "k": self.k}

    @staticmethod
    def from_json(doc: dict) -> "Calibration":
        baseline = [float(v) for v in doc["baseline"]]
        k = [float(v) for v in doc["k"]]
        if len(baseline) != 3 or len(k) != 3:
            raise ValueError("calibration needs 3 axes")
        return Calibration(baseline, float(doc["t_ref"]), k)


class Detector:
    def __init__(self, cfg: dict, now_ms: int) -> None:
        # cfg: the settings (config.py), by name
        self.occupied_above = cfg["occupied_above_ut_x10"] / 10
        self.free_below = cfg["free_below_ut_x10"] / 10
        self.debounce_ms = cfg["debounce_ms"]
        self.adapt_shift = cfg["adapt_shift"]
        self.learn_dt = cfg["learn_dt_c_x10"] / 10
        self.calibration: "Calibration | None" = None
        self.state = UNKNOWN
        self.since_ms = now_ms
        self.pending = UNKNOWN  # the state waiting out its debounce (UNKNOWN: none)
        self.pending_ms = 0
        self.delta_ut = 0.0  # last |deviation|
        self.temp_c = 0.0
        self._anchor_t = 0.0
        self._anchor_raw: "list | None" = None
        self._occ = [0.0, 0.0, 0.0]  # the deviation while occupied (a running mean)
        self.learned = 0  # times k was learned
        self.learn_changed = False  # k changed since the app last saved it

    def calibrate(self, readings: list, k: list) -> Calibration:
        # The bay is empty now: the mean of `readings` [(x, y, z, t)] is the baseline.
        n = len(readings)
        t_ref = sum(r[3] for r in readings) / n
        base = [sum(r[i] for r in readings) / n for i in range(3)]
        calibration = Calibration(base, t_ref, list(k))
        self.use(calibration)
        self.pending = UNKNOWN
        return calibration

    def use(self, calibration: Calibration) -> None:
        self.calibration = calibration
        self._anchor_raw = None

    def _compensated(self, x: float, y: float, z: float, t: float) -> list:
        c = self.calibration
        assert c is not None
        dt = t - c.t_ref
        k = c.k
        return [x - k[0] * dt, y - k[1] * dt, z - k[2] * dt]

    def feed(self, now_ms: int, x: float, y: float, z: float, t: float) -> int:
        # One reading; the new state when a change is committed, else -1.
        c = self.calibration
        if c is None:
            return -1
        self.temp_c = t
        comp = self._compensated(x, y, z, t)
        b = c.baseline
        d0 = comp[0] - b[0]
        d1 = comp[1] - b[1]
        d2 = comp[2] - b[2]
        mag = (d0 * d0 + d1 * d1 + d2 * d2) ** 0.5
        self.delta_ut = mag
        state = self.state
        if mag > self.occupied_above:
            want = OCCUPIED
        elif mag < self.free_below:
            want = FREE
        elif state == OCCUPIED and self._left(d0, d1, d2):
            want = FREE  # our car left; what remains (a neighbour's) is weaker than a car
        else:
            want = state  # inside the hysteresis band: no change
        if want != state:
            if self.pending != want:
                self.pending = want
                self.pending_ms = now_ms
            if now_ms - self.pending_ms >= self.debounce_ms:
                self.state = want
                self.since_ms = now_ms
                self.pending = UNKNOWN
                self._occ = [d0, d1, d2]
                return want
            return -1
        self.pending = UNKNOWN
        if state == OCCUPIED:
            occ = self._occ
            occ[0] += (d0 - occ[0]) / 8
            occ[1] += (d1 - occ[1]) / 8
            occ[2] += (d2 - occ[2]) / 8
        if state == FREE and mag < self.free_below / 2:
            self._adapt(comp, t)
        return -1

    def _left(self, d0: float, d1: float, d2: float) -> bool:
        # The field moved away from the occupied one by more than a car's worth.
        occ = self._occ
        e0 = d0 - occ[0]
        e1 = d1 - occ[1]
        e2 = d2 - occ[2]
        return (e0 * e0 + e1 * e1 + e2 * e2) ** 0.5 > self.occupied_above

    def _adapt(self, comp: list, t: float) -> None:
        c = self.calibration
        assert c is not None
        b = c.baseline
        shift = 1 << self.adapt_shift
        for i in range(3):
            b[i] += (comp[i] - b[i]) / shift
        # The raw (uncompensated) baseline at t: its slope against t is the drift.
        dt = t - c.t_ref
        raw = [b[i] + c.k[i] * dt for i in range(3)]
        if self._anchor_raw is None:
            self._anchor_t = t
            self._anchor_raw = raw
            return
        span = t - self._anchor_t
        if abs(span) < _SAME_T:
            # Same temperature: what moved was not thermal drift; start from here.
            self._anchor_raw = raw
            return
        if abs(span) < self.learn_dt:
            return
        k = [(raw[i] - self._anchor_raw[i]) / span for i in range(3)]
        # Same raw baseline under the new k: nothing jumps.
        c.baseline = [raw[i] - k[i] * dt for i in range(3)]
        c.k = k
        self._anchor_t = t
        self._anchor_raw = raw
        self.learned += 1
        self.learn_changed = True

    def held_ms(self, now_ms: int) -> int:
        return now_ms - self.since_ms
