# The node's log: the last few records in RAM, numbered (the edge sees gaps),
# printed on the console as they are made. Records at or above push_level
# are sent to the edge at once; Request(LOG) sends those not sent yet.
import time

from kommune.protocols import runtime

LEVEL_NAMES = ("", "debug", "info", "warning", "error", "critical")


class LogRing:
    def __init__(self, size: int = 16, push_level: int = runtime.LOG_WARNING) -> None:
        self._records: list = []  # [index, level, uptime_ms, text bytes, sent]
        self._size = size
        self.push_level = push_level
        self.next_index = 0
        self.sink: object = None  # sink(LogRecord): the node sends it

    def log(self, level: int, text: str) -> None:
        print("log:", LEVEL_NAMES[level] if 0 < level < 6 else level, text)
        data = text.encode()[: runtime.MAX_LOG_TEXT]
        rec = [self.next_index, level, time.ticks_ms(), data, False]
        self.next_index = (self.next_index + 1) & 0xFFFF
        if len(self._records) >= self._size:
            self._records.pop(0)
        self._records.append(rec)
        if level >= self.push_level:
            self._send(rec)

    def _send(self, rec: list) -> None:
        if self.sink is None or rec[4]:
            return
        rec[4] = True
        msg = runtime.LogRecord(index=rec[0], level=rec[1], uptime_ms=rec[2], text=rec[3])
        self.sink(msg)  # type: ignore[operator]

    def send_unsent(self) -> int:
        n = 0
        for rec in self._records:
            if not rec[4]:
                self._send(rec)
                n += 1
        return n

    def records(self) -> list:
        return self._records
