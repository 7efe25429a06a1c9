"""The real-time clock and its RTC memory.

Both survive resets and deep sleep; a power cut loses them and the clock
starts again at 2000-01-01 00:00:00, as an ESP32 without a backup battery does.
The clock runs `drift_ppm` parts per million fast (negative: slow), as a real
crystal does; the VM's own clock (board/emutime.py) drifts by the same rate.
"""

from __future__ import annotations

import time

EPOCH_2000_S = 946_684_800  # 2000-01-01T00:00:00Z in Unix seconds
MEMORY_SIZE = 2048  # bytes of RTC slow memory MicroPython's ESP32 port offers


class RtcModel:
    def __init__(self, drift_ppm: int = 0) -> None:
        self.drift_ppm = drift_ppm
        self._base_epoch_s = 0.0  # the board's clock at host time _base_host_s
        self._base_host_s = 0.0
        self.memory = b""
        self.power_on()

    def power_on(self) -> None:
        self.set(EPOCH_2000_S)
        self.memory = b""

    def now(self) -> float:
        """The board's wall clock, Unix seconds."""
        elapsed_s = time.time() - self._base_host_s
        return self._base_epoch_s + elapsed_s * (1 + self.drift_ppm / 1_000_000)

    def set(self, epoch_s: float) -> None:
        self._base_epoch_s = epoch_s
        self._base_host_s = time.time()

    def vm_memory(self, data: bytes) -> bytes:
        """RTC.memory(): empty `data` reads, anything else writes."""
        if data:
            if len(data) > MEMORY_SIZE:
                raise ValueError(f"RTC memory holds {MEMORY_SIZE} bytes")
            self.memory = data
            return b""
        return self.memory
