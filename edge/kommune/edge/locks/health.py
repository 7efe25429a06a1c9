"""What the lock manager knows of each lock, for /healthz and /metrics."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kommune.edge.agent.metrics import Labels, Metric, counter, gauge
from kommune.edge.agent.site import LockConfig


@dataclass
class LockHealth:
    """What the manager knows of one lock."""

    config: LockConfig
    due: float = 0.0  # loop time of the next visit
    visits: int = 0
    failures: int = 0  # failed visits, all told
    failing: int = 0  # failed visits since the last good one
    last_error: str | None = None
    last_seen_ms: int | None = None  # end of the last good visit (Unix ms)
    last_visit_ms: float | None = None  # its duration
    battery_mv: int | None = None
    battery_percent: int | None = None
    drift_s: int | None = None  # at the start of the last good visit, before a time set
    epoch: int | None = None
    backlog: int | None = None
    entries: int = 0
    duplicates: int = 0
    time_sets: int = 0
    epoch_sets: int = 0
    deny_pushes: int = 0
    deny_known: tuple[int, int] | None = None
    audit_problem: str | None = None
    audit_problems: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "ble": self.config.ble,
            "ok": self.failing == 0 and self.audit_problem is None,
            "last_seen_ms": self.last_seen_ms,
            "last_visit_ms": self.last_visit_ms,
            "battery_mv": self.battery_mv,
            "battery_percent": self.battery_percent,
            "clock_drift_s": self.drift_s,
            "epoch": self.epoch,
            "audit_backlog": self.backlog,
            "audit_entries": self.entries,
            "audit_problem": self.audit_problem,
            "visits": self.visits,
            "failed_visits": self.failures,
            "failing": self.failing,
            "last_error": self.last_error,
        }


def lock_metrics(locks: Mapping[int, LockHealth]) -> list[Metric]:
    """Each lock's counters and gauges (label `lock`), for /metrics."""

    def per_lock(value: Callable[[LockHealth], float | None]) -> dict[Labels, float]:
        out: dict[Labels, float] = {}
        for i, h in sorted(locks.items()):
            v = value(h)
            if v is not None:
                out[(("lock", str(i)),)] = float(v)
        return out

    visits: dict[Labels, float] = {}
    problems: dict[Labels, float] = {}
    for i, h in sorted(locks.items()):
        visits[(("lock", str(i)), ("result", "ok"))] = float(h.visits - h.failures)
        visits[(("lock", str(i)), ("result", "failed"))] = float(h.failures)
        for reason, n in h.audit_problems.items():
            problems[(("lock", str(i)), ("reason", reason))] = float(n)
    metrics = [counter("lock_visits_total", "lock visits by result", visits)]
    for name, make, text, value in _PER_LOCK:
        metrics.append(make(name, text, per_lock(value)))
    if problems:
        metrics.append(counter("lock_audit_problems_total", "audit chains refused", problems))
    return metrics


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000


#: Per-lock metrics: name, kind, help, value (None: no sample yet).
_PER_LOCK: tuple[tuple[str, Callable[..., Metric], str, Callable[[LockHealth], Any]], ...] = (
    ("lock_visits_failing", gauge, "failed visits since the last good one", lambda h: h.failing),
    (
        "lock_last_seen_timestamp_seconds",
        gauge,
        "end of the last good visit, Unix time",
        lambda h: _seconds(h.last_seen_ms),
    ),
    ("lock_visit_seconds", gauge, "the last good visit took", lambda h: _seconds(h.last_visit_ms)),
    ("lock_battery_percent", gauge, "battery, as the lock reports it", lambda h: h.battery_percent),
    ("lock_battery_millivolts", gauge, "battery voltage", lambda h: h.battery_mv),
    (
        "lock_clock_drift_seconds",
        gauge,
        "lock clock minus the agent's at the last visit, before any time set",
        lambda h: h.drift_s,
    ),
    ("lock_audit_backlog_entries", gauge, "entries the lock holds unacked", lambda h: h.backlog),
    ("lock_audit_entries_total", counter, "audit entries committed", lambda h: h.entries),
    (
        "lock_audit_duplicates_total",
        counter,
        "re-read audit entries the outbox already held",
        lambda h: h.duplicates,
    ),
    ("lock_time_sets_total", counter, "lock clocks set", lambda h: h.time_sets),
    ("lock_epoch_sets_total", counter, "lock epochs raised", lambda h: h.epoch_sets),
    ("lock_deny_pushes_total", counter, "deny-lists delivered", lambda h: h.deny_pushes),
)
