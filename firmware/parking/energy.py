# The node's energy account: a base current all the time (the chip asleep,
# the sensor in standby, the regulator), plus a fixed charge per magnetometer
# reading and per advertising event. Charges in uC (uA * s); battery life is
# the cell's capacity over the average current. Plain Python, no MicroPython
# imports: the bench and the tests use the same model on CPython.


class Energy:
    def __init__(self, sleep_ua: int, sample_uc: int, adv_event_uc: int, battery_mah: int) -> None:
        self.sleep_ua = sleep_ua
        self.sample_uc = sample_uc
        self.adv_event_uc = adv_event_uc
        self.battery_mah = battery_mah
        self.samples = 0
        self.adv_events = 0
        self.elapsed_ms = 0

    def sampled(self, n: int = 1) -> None:
        self.samples += n

    def advertised(self, events: int) -> None:
        self.adv_events += events

    def passed(self, ms: int) -> None:
        self.elapsed_ms += ms

    def charge_uc(self) -> float:
        base = self.sleep_ua * self.elapsed_ms / 1000
        return base + self.samples * self.sample_uc + self.adv_events * self.adv_event_uc

    def average_ua(self) -> float:
        if self.elapsed_ms <= 0:
            return 0.0
        return self.charge_uc() * 1000 / self.elapsed_ms

    def battery_years(self) -> float:
        return years(self.battery_mah, self.average_ua())


def years(battery_mah: float, average_ua: float) -> float:
    if average_ua <= 0:
        return 0.0
    return battery_mah * 1000 / average_ua / 24 / 365.25


def projected_ua(
    *,
    sleep_ua: float,
    sample_uc: float,
    adv_event_uc: float,
    sample_ms: float,
    events_per_day: float,
    burst_ms: float,
    heartbeat_s: float,
    hb_burst_ms: float,
    adv_interval_ms: float,
) -> float:
    # The average current of a day with `events_per_day` changes.
    day_s = 86400.0
    samples = day_s * 1000 / sample_ms
    adv = events_per_day * burst_ms / adv_interval_ms
    adv += day_s / heartbeat_s * hb_burst_ms / adv_interval_ms
    return sleep_ua + (samples * sample_uc + adv * adv_event_uc) / day_s
