"""Benchmark plumbing: a suite's metrics, its human table and its JSON report."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Metrics = dict[str, float | int]


class BenchError(RuntimeError):
    """A benchmark could not run (missing tool, VM failure)."""


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    goal: str = ""


@dataclass(frozen=True)
class Suite:
    name: str
    metrics: tuple[Metric, ...]
    run: Callable[[], Metrics]


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def default_report_path(suite: str) -> Path:
    from kommune.hil.paths import REPO_ROOT

    return REPO_ROOT / "bench" / "results" / f"{suite}.json"


def write(suite: str, results: Metrics, path: Path | None = None) -> Path:
    path = path or default_report_path(suite)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "suite": suite,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "results": results,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def render(suite: Suite, results: Metrics) -> str:
    rows = [("metric", "value", "goal")]
    for m in suite.metrics:
        value = results.get(m.key)
        if value is None:
            shown = "-"
        elif float(value).is_integer():
            shown = f"{value:,.0f} {m.unit}".strip()
        else:
            shown = f"{value:,.1f} {m.unit}".strip()
        rows.append((m.label, shown, m.goal))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return f"bench {suite.name} ({machine_description()})\n" + "\n".join(lines)
