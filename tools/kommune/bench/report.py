"""Benchmark plumbing: a suite's metrics, its human table and its JSON report.

Where a report goes (`report_path`, decided before the suite runs, so a bad
path costs nothing): by default bench/results/SUITE.json (created as needed);
`--report DIR`, an existing directory, gets a dated file SUITE-YYYYmmdd-HHMMSS.json;
`--report FILE` is written (replaced) in its directory, which must exist.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: A metric's value; a string says why a measurement stopped (e.g. rig's max_boards_limit).
Metrics = dict[str, float | int | str]


class BenchError(RuntimeError):
    """A benchmark could not run (missing tool, VM failure)."""


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    goal: str = ""
    #: Whether the results meet the goal (the table shows pass/miss); None: not judged.
    check: Callable[[Metrics], bool] | None = None
    #: Decimals the table shows for a value that is not whole.
    decimals: int = 1


@dataclass(frozen=True)
class Suite:
    name: str
    metrics: tuple[Metric, ...]
    #: Runs the suite; `options` names the keyword arguments it takes from the CLI.
    run: Callable[..., Metrics]
    options: tuple[str, ...] = ()


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


def report_path(suite: str, given: Path | None, now: dt.datetime | None = None) -> Path:
    """Where the report goes (see the module's doc); raises BenchError if it cannot be
    written there."""
    if given is None:
        return default_report_path(suite)
    if given.is_dir():
        stamp = (now or dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
        path, folder = given / f"{suite}-{stamp}.json", given
    else:
        path, folder = given, given.parent
        if not folder.is_dir():
            raise BenchError(f"--report: directory {folder} does not exist")
        if path.exists() and not path.is_file():
            raise BenchError(f"--report: {path} is not a regular file")
        if path.exists() and not os.access(path, os.W_OK):
            raise BenchError(f"--report: {path} is not writable")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BenchError(f"--report: directory {folder} is not writable")
    return path


def write(suite: str, results: Metrics, path: Path | None = None) -> Path:
    """Write the report to `path` (from `report_path`; None: the default place)."""
    path = path or default_report_path(suite)
    if path == default_report_path(suite):
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
    judged = any(m.check is not None for m in suite.metrics)
    rows = [("metric", "value", "goal", "met" if judged else "")]
    for m in suite.metrics:
        value = results.get(m.key)
        if value is None:
            shown = "-"
        elif isinstance(value, str):
            shown = value
        elif float(value).is_integer():
            shown = f"{value:,.0f} {m.unit}".strip()
        else:
            shown = f"{value:,.{m.decimals}f} {m.unit}".strip()
        verdict = ""
        if m.check is not None and value is not None:
            verdict = "pass" if m.check(results) else "MISS"
        rows.append((m.label, shown, m.goal, verdict))
    columns = 4 if judged else 3
    widths = [max(len(r[i]) for r in rows) for i in range(columns)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r[:columns], widths, strict=True)).rstrip()
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return f"bench {suite.name} ({machine_description()})\n" + "\n".join(lines)
