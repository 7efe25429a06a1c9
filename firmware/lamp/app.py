# The street lamp: what the edge commands, what its own presence sensor
# sees, and what it does when the edge falls silent.
#
# The output is the commanded level (`base`: SetLevel, RecallScene, the
# power-on level, or the safe level), raised to presence_level at once while
# the lamp's own sensor sees someone and for presence_hold_s after, then
# faded back. The edge silent for silence_s: base becomes safe_level (never
# off), until the edge commands again. Reports: Presence on each change,
# EnergyReport every energy_report_s, FailureReport when the faults change,
# each on Request too.
import asyncio
import time

from common.node import Node
from dimmer import Dimmer
from meter import Meter
from micropython import const
from presence import PresenceInput
from scenes import Scenes

from kommune.protocols import lamp, runtime
from kommune.protocols.dedup import ACKED

_TICK_MS = const(100)

# Edge -> lamp messages this firmware takes (besides the runtime's).
CLASSES: list = [lamp.SetLevel, lamp.RecallScene, lamp.StoreScene]


def _ms() -> int:
    t: int = time.ticks_ms()  # type: ignore[assignment]
    return t


class LampApp:
    def __init__(
        self,
        node: Node,
        *,
        dimmer: Dimmer,
        presence: PresenceInput,
        meter: Meter,
        scenes: Scenes,
    ) -> None:
        self.node = node
        self.settings = node.settings
        self.link = node.link
        self.dimmer = dimmer
        self.presence = presence
        self.meter = meter
        self.scenes = scenes
        s = self.settings
        self.base = s["power_on_level"]
        self.failsafe = False
        self.present = False  # the lamp's own sensor holds the output up
        self._cleared_ms = 0  # the sensor's output fell (hold from here)
        self._pwm_hz = s["pwm_hz"]
        self._floor = s["floor_level"]
        now = _ms()
        self._sample_ms = now
        self._report_ms = now
        node.handler = self.handle
        node.reporters[lamp.ENERGY_REPORT] = self.energy_report
        node.reporters[lamp.FAILURE_REPORT] = self.failure_report
        node.reporters[lamp.PRESENCE] = self.presence_report

    # -- the output -----------------------------------------------------------------------

    def _output(self, fade_ms: int) -> None:
        level = self.base
        floor = self.settings["presence_level"]
        if self.present and level < floor:
            level = floor
        self.dimmer.set(level, fade_ms)

    def _command(self, level: int, fade_ms: int) -> None:
        if level == lamp.MASK:
            self.dimmer.set(lamp.MASK)
            self.base = self.dimmer.level
            return
        self.base = level
        self._output(fade_ms)

    # -- messages from the edge -------------------------------------------------------------

    def handle(self, msg: object) -> int:
        if isinstance(msg, lamp.SetLevel):
            self._command(msg.level, msg.fade_ms)
            return ACKED
        if isinstance(msg, lamp.RecallScene):
            level = self.scenes.level(msg.scene)
            if level != lamp.MASK:  # not in this scene: stays as it is
                self._command(level, msg.fade_ms)
            return ACKED
        if isinstance(msg, lamp.StoreScene):
            try:
                self.scenes.store(msg.scene, msg.level)
            except OSError:
                return runtime.NACK_STORAGE
            return ACKED
        return runtime.NACK_NOT_SUPPORTED

    # -- reports --------------------------------------------------------------------------------

    def energy_report(self) -> None:
        m = self.meter
        try:
            m.save()
        except OSError as e:
            self.node.log.log(runtime.LOG_ERROR, "energy not saved: %s" % e)
        self.link.send(
            lamp.EnergyReport(
                energy_wh=m.energy_wh,
                power_w_x10=min(0xFFFF, m.power_mw // 100),
                level=self.dimmer.level,
                burn_hours=m.burn_s // 3600,
            )
        )

    def failure_report(self) -> None:
        self.link.send(
            lamp.FailureReport(
                faults=self.meter.faults,
                level=self.dimmer.level,
            )
        )

    def presence_report(self) -> None:
        self.link.send(lamp.Presence(sensor=0, present=1 if self.present else 0))

    # -- the tasks --------------------------------------------------------------------------------

    async def _presence(self) -> None:
        p = self.presence
        while True:
            await p.flag.wait()
            if p.present():
                self._cleared_ms = 0
                if not self.present:
                    self.present = True
                    self._output(0)  # at once: no edge in the loop
                    self.presence_report()
            elif self.present and not self._cleared_ms:
                self._cleared_ms = _ms() or 1

    def _tick(self) -> None:
        s = self.settings
        now = _ms()
        # The area cleared and the hold is over: back to the commanded level.
        if (
            self.present
            and self._cleared_ms
            and time.ticks_diff(now, self._cleared_ms) >= s["presence_hold_s"] * 1000
        ):
            self.present = False
            self._cleared_ms = 0
            self._output(s["presence_fade_ms"])
            self.presence_report()
        # The edge fell silent: the safe level, never dark.
        silent = self.link.silent_ms() >= s["silence_s"] * 1000
        if silent and not self.failsafe:
            self.failsafe = True
            self.base = s["safe_level"]
            self._output(s["safe_fade_ms"])
            self.node.log.log(runtime.LOG_WARNING, "edge silent: safe level %d" % self.base)
        elif not silent and self.failsafe:
            self.failsafe = False  # stays at the safe level until the edge commands
        # Settings the edge may have changed.
        if s["pwm_hz"] != self._pwm_hz:
            self._pwm_hz = s["pwm_hz"]
            self.dimmer.set_freq(self._pwm_hz)
        if s["floor_level"] != self._floor:
            self._floor = self.dimmer.floor = s["floor_level"]
            self.dimmer.refresh()
        if time.ticks_diff(now, self._sample_ms) >= s["sample_ms"]:
            self._sample_ms = now
            if self.meter.sample():
                faults = self.meter.faults
                self.node.log.log(
                    runtime.LOG_ERROR if faults else runtime.LOG_INFO, "faults 0x%04x" % faults
                )
                self.failure_report()
        if time.ticks_diff(now, self._report_ms) >= s["energy_report_s"] * 1000:
            self._report_ms = now
            self.energy_report()

    async def _control(self) -> None:
        self._output(0)
        while True:
            self._tick()
            await asyncio.sleep_ms(_TICK_MS)

    def tasks(self) -> list:
        return [
            ("dimmer", self.dimmer.run()),
            ("presence", self._presence()),
            ("control", self._control()),
        ]
