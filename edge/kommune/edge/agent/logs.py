"""The agent's logs: one line per record on stderr, for people or as JSON.

Parts log with the standard `logging` module. Structured values go in `fields`:

    log = logging.getLogger(__name__)              # kommune.edge.uplink -> part "uplink"
    log.info("connected to %s", host, extra=fields(port=8883, session_present=True))

human:  2026-11-28 10:00:00.123 INFO    uplink: connected to mqtt.example port=8883 ...
json:   {"time": "2026-11-28T09:00:00.123Z", "level": "info", "part": "uplink",
         "message": "connected to mqtt.example", "fields": {"port": 8883, ...}}

The part is the record's `part` attribute when the host sets it, else read from the
logger's name (kommune.edge.agent.X and kommune.edge.X give X; others keep their name,
e.g. "aiomqtt"). A record with an exception carries its traceback: indented lines
after a human line, the "exception" key in JSON.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from typing import Any, Final, Literal, TextIO

Format = Literal["human", "json"]
FORMATS: Final = ("human", "json")
LEVELS: Final = ("debug", "info", "warning", "error")


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for a log call: structured values that travel with the record."""
    return {"fields": values}


def part_of(record: logging.LogRecord) -> str:
    part = getattr(record, "part", None)
    if isinstance(part, str):
        return part
    name = record.name
    for prefix in ("kommune.edge.agent.", "kommune.edge."):
        if name.startswith(prefix):
            return name[len(prefix) :].split(".")[0]
    return "agent" if name in ("root", "kommune.edge.agent") else name


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    values = getattr(record, "fields", None)
    return dict(values) if isinstance(values, dict) else {}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        doc: dict[str, Any] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "part": part_of(record),
            "message": record.getMessage(),
            "fields": _fields(record),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class HumanFormatter(logging.Formatter):
    """`TIME LEVEL part: message key=value ...`, a traceback indented below."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        pairs = "".join(f" {k}={_human_value(v)}" for k, v in _fields(record).items())
        line = (
            f"{stamp}.{int(record.msecs):03d} {record.levelname:<7} "
            f"{part_of(record)}: {record.getMessage()}{pairs}"
        )
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            line += "\n" + "\n".join("    " + t for t in trace.splitlines())
        return line


def _human_value(value: Any) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in "\"'=" for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class LevelCounter(logging.Handler):
    """Counts records per level (a metric: warnings and errors logged)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.levelname.lower()] += 1


class _QuietStream(logging.StreamHandler[TextIO]):
    """A stream handler that never lets a broken stream (a closed pipe) stop the agent."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


_installed: list[logging.Handler] = []


def configure(
    fmt: Format = "human", level: str = "info", stream: TextIO | None = None
) -> LevelCounter:
    """Send every log record at `level` or above to `stream` (stderr) in `fmt`; returns
    the counter of records per level. Replaces handlers an earlier call installed."""
    root = logging.getLogger()
    for old in _installed:
        root.removeHandler(old)
    handler = _QuietStream(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    counter = LevelCounter()
    _installed[:] = [handler, counter]
    for h in _installed:
        root.addHandler(h)
    root.setLevel(getattr(logging, level.upper()))
    return counter
