# The lamp's own presence sensor (a PIR or radar module's output on a pin:
# 1 while something is there). The IRQ handler only records and wakes the
# app's task (aioble's style); the app decides.
import asyncio
import time


class PresenceInput:
    def __init__(self, pin: object) -> None:
        self._pin = pin  # machine.Pin, input, made by main
        self.flag = asyncio.ThreadSafeFlag()
        self.edge_ms = 0  # ticks of the last edge
        pin.irq(handler=self._irq, trigger=3)  # type: ignore[attr-defined]  # both edges

    def _irq(self, _pin: object) -> None:
        self.edge_ms = time.ticks_ms()  # type: ignore[assignment]  # an int on every port
        self.flag.set()

    def present(self) -> bool:
        return bool(self._pin.value())  # type: ignore[attr-defined]
