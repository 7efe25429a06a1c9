# The parking node's one loop: read the magnetometer, decide, report, sleep.
#
# Every sample_ms: one reading (the sensor in standby otherwise), the
# detector; a committed change is a new report (next seq, the previous
# state's duration) advertised for burst_ms; with no change for heartbeat_s a
# heartbeat report (the current state and how long it has held) is
# advertised for hb_burst_ms. Between bursts the radio is silent. The chip
# light-sleeps between readings unless a burst is on air (the controller
# keeps advertising then). Every charge is put to the energy account.
import time

import advert
import machine
import store
from detector import Calibration, Detector
from energy import Energy
from micropython import const

from kommune.protocols import parking_report
from kommune.protocols.hmac_sha256 import HmacKey

_STATE_NAMES = ("free", "occupied", "unknown")


def _ticks() -> int:
    t: int = time.ticks_ms()  # type: ignore[assignment]  # an int on every port
    return t


_CAL_GAP_MS = const(50)


class ParkingApp:
    def __init__(
        self,
        ble: "object",
        sensor: "object",
        *,
        cfg: dict,
        node_id: int,
        key: bytes,
        seqs: store.SeqStore,
        wdt: "machine.WDT",
        recal: "machine.Pin | None" = None,
    ) -> None:
        self.ble = ble
        self.sensor = sensor
        self.cfg = cfg
        self.node_id = node_id
        self.key = HmacKey(key)
        self.seqs = seqs
        self.wdt = wdt
        # ms since start, never wrapping (ticks_ms wraps after ~12 days on an ESP32)
        self.clock_ms = 0
        self.detector = Detector(cfg, 0)
        self.energy = Energy(
            cfg["sleep_ua"], cfg["sample_uc"], cfg["adv_event_uc"], cfg["battery_mah"]
        )
        self.recalibrate = False
        self.adv_ms = 0  # how long the burst on air lasts; 0: silent
        self.adv_started = 0
        self.last_report_ms = 0
        self.events = 0
        if recal is not None:
            # On release: the magnet that closed the switch must be gone before the
            # field is taken as the empty bay's.
            recal.irq(self._on_recal, machine.Pin.IRQ_RISING)

    def _on_recal(self, _pin: "machine.Pin") -> None:
        self.recalibrate = True  # the loop does it

    def _read(self) -> "tuple[float, float, float, float]":
        self.energy.sampled()
        return self.sensor.read()  # type: ignore[attr-defined]

    def calibrate(self) -> None:
        cfg = self.cfg
        readings = []
        for _ in range(cfg["calib_samples"]):
            readings.append(self._read())
            time.sleep_ms(min(cfg["sample_ms"], _CAL_GAP_MS))
        k = self.detector.calibration.k if self.detector.calibration else self._initial_k()
        cal = self.detector.calibrate(readings, k)
        store.save_calibration(cal.to_json())
        print("parking: calibrated baseline=%s t=%.1f" % (cal.baseline, cal.t_ref))

    def _initial_k(self) -> list:
        cfg = self.cfg
        return [cfg["drift_%s_nt_per_c" % a] / 1000 for a in "xyz"]

    def start(self) -> None:
        doc = store.load_calibration()
        cal = None
        if doc is not None:
            try:
                cal = Calibration.from_json(doc)
            except (KeyError, ValueError, TypeError):
                cal = None
        if cal is None:
            self.calibrate()  # installed over an empty bay (README.md)
        else:
            self.detector.use(cal)
        print("parking %d ready" % self.node_id)

    def report(self, now: int, state: int, duration_ms: int, heartbeat: bool) -> None:
        seq = self.seqs.take()
        r = parking_report.Report(
            state=state, seq=seq, duration_s=duration_ms // 1000, heartbeat=heartbeat
        )
        wire = parking_report.encode(self.key, self.node_id, r)
        self._advertise(now, advert.payload(self.node_id, wire), heartbeat)
        self.last_report_ms = now
        kind = "heartbeat" if heartbeat else "event"
        print(
            "parking: %s seq=%d state=%s held_s=%d report=%s"
            % (kind, seq, _STATE_NAMES[state], duration_ms // 1000, wire.hex())
        )

    def _advertise(self, now: int, data: bytes, heartbeat: bool) -> None:
        self._stop_advertising(now)
        cfg = self.cfg
        self.ble.gap_advertise(cfg["adv_interval_ms"] * 1000, data, connectable=False)  # type: ignore[attr-defined]
        self.adv_started = now
        self.adv_ms = cfg["hb_burst_ms"] if heartbeat else cfg["burst_ms"]

    def _stop_advertising(self, now: int) -> None:
        if not self.adv_ms:
            return
        self.ble.gap_advertise(None)  # type: ignore[attr-defined]
        on_air = now - self.adv_started
        self.energy.advertised(on_air // self.cfg["adv_interval_ms"] + 1)
        self.adv_ms = 0

    def step(self, now: int) -> None:
        if self.recalibrate:
            self.recalibrate = False
            self.calibrate()
        x, y, z, t = self._read()
        det = self.detector
        held_before = det.held_ms(now)
        new = det.feed(now, x, y, z, t)
        if new >= 0:
            self.events += 1
            # The previous state lasted until the change began (its debounce included).
            self.report(now, new, held_before, False)
        elif now - self.last_report_ms >= self.cfg["heartbeat_s"] * 1000:
            self.report(now, det.state, det.held_ms(now), True)
            print(
                "parking: energy avg_ua=%.2f years=%.1f samples=%d adv_events=%d"
                % (
                    self.energy.average_ua(),
                    self.energy.battery_years(),
                    self.energy.samples,
                    self.energy.adv_events,
                )
            )
        if det.learn_changed and det.calibration is not None:
            det.learn_changed = False
            store.save_calibration(det.calibration.to_json())
            print("parking: drift learned k=%s" % det.calibration.k)
        if self.adv_ms and now - self.adv_started >= self.adv_ms:
            self._stop_advertising(now)

    def run(self) -> None:
        self.start()
        period = self.cfg["sample_ms"]
        last = _ticks()
        while True:
            now = _ticks()
            elapsed = time.ticks_diff(now, last)
            last = now
            self.clock_ms += elapsed
            self.energy.passed(elapsed)
            self.step(self.clock_ms)
            self.wdt.feed()
            rest = period - time.ticks_diff(_ticks(), now)
            if rest > 0:
                if self.adv_ms:
                    time.sleep_ms(rest)  # the radio is on air: no light sleep
                else:
                    machine.lightsleep(rest)
