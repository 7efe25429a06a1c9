"""Times as people type them, turned into site time (Unix seconds, UTC).

parse_time("2026-12-01T08:00")        local time (this machine's zone)
parse_time("2026-12-01T08:00+01:00")  the offset given ("Z" for UTC)
parse_time("now"), parse_time("+45m") relative to now: s, m, h, d; "-10m" too
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

_RELATIVE = re.compile(r"([+-])(\d+)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


class TimeFormatError(ValueError):
    """Not a time we understand; the message says what is accepted."""


def parse_time(text: str, *, now_s: float | None = None) -> int:
    """Unix seconds for an ISO 8601 time or `now`/`+N{s,m,h,d}`/`-N{...}`."""
    now = time.time() if now_s is None else now_s
    value = text.strip()
    if value == "now":
        return int(now)
    match = _RELATIVE.fullmatch(value)
    if match:
        sign, amount, unit = match.groups()
        delta = int(amount) * _UNIT_S[unit]
        return int(now) + (delta if sign == "+" else -delta)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise TimeFormatError(
            f"{text!r} is not a time: give ISO 8601 (2026-12-01T08:00, local time unless an "
            "offset such as +01:00 or Z is given), 'now', or +45m / +2h / +1d"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time
    return int(moment.timestamp())


def format_time(unix_s: int, *, utc: bool = False) -> str:
    """ISO 8601 with its offset: local time for people, UTC (Z) for files."""
    moment = datetime.fromtimestamp(unix_s, UTC)
    if utc:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return moment.astimezone().isoformat(timespec="seconds")
