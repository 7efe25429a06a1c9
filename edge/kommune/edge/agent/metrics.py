"""Counters and gauges, and their Prometheus text exposition (format 0.0.4).

A part reports what it counts as `Metric`s; the names get the `kommune_` prefix here,
so a part says "outbox_rows" and the scrape shows "kommune_outbox_rows".

    def metrics(self) -> list[Metric]:
        return [
            counter("uplink_publishes_total", "MQTT publishes sent", self.published),
            gauge("outbox_rows", "rows waiting, per class",
                  {(("class", "audit"),): 3, (("class", "telemetry"),): 120}),
        ]

`render` checks names (a wrong one is a ValueError, not a broken scrape), merges metrics
of the same name from different parts into one family, and escapes help and labels.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

PREFIX: Final = "kommune_"
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

Kind = Literal["counter", "gauge"]
#: Label pairs of one sample, in order: (("part", "uplink"), ("class", "audit")).
Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    kind: Kind
    help: str
    #: One value per label set; () is the sample without labels.
    samples: Mapping[Labels, float]


def counter(name: str, help: str, value: float | Mapping[Labels, float]) -> Metric:
    return Metric(name, "counter", help, value if isinstance(value, Mapping) else {(): value})


def gauge(name: str, help: str, value: float | Mapping[Labels, float]) -> Metric:
    return Metric(name, "gauge", help, value if isinstance(value, Mapping) else {(): value})


def full_name(name: str) -> str:
    return name if name.startswith(PREFIX) else PREFIX + name


def check(metric: Metric) -> None:
    """ValueError if `metric` cannot be exposed as it is."""
    name = full_name(metric.name)
    if not _NAME.fullmatch(name):
        raise ValueError(f"metric name {name!r} is not a Prometheus name")
    if metric.kind not in ("counter", "gauge"):
        raise ValueError(f"metric {name}: kind {metric.kind!r} is not counter or gauge")
    for labels in metric.samples:
        names = [label for label, _ in labels]
        if len(set(names)) != len(names):
            raise ValueError(f"metric {name}: a label is given twice in {labels!r}")
        for label, value in labels:
            if not _LABEL.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"metric {name}: label name {label!r} is not allowed")
            if not isinstance(value, str):
                raise ValueError(f"metric {name}: label {label} has a non-string value")


def render(metrics: Iterable[Metric]) -> str:
    """The text exposition of `metrics`: HELP and TYPE once per name, then its samples.
    Metrics of one name merge (the first one's help and kind win; a sample given twice
    keeps its first value); a metric that fails `check` raises ValueError."""
    families: dict[str, tuple[Metric, dict[Labels, float]]] = {}
    for metric in metrics:
        check(metric)
        name = full_name(metric.name)
        if name not in families:
            families[name] = (metric, {})
        first, samples = families[name]
        if first.kind != metric.kind:
            raise ValueError(f"metric {name} is both a {first.kind} and a {metric.kind}")
        for labels, value in metric.samples.items():
            samples.setdefault(labels, value)
    lines: list[str] = []
    for name, (first, samples) in families.items():
        lines.append(f"# HELP {name} {_escape_help(first.help)}")
        lines.append(f"# TYPE {name} {first.kind}")
        for labels, value in samples.items():
            lines.append(f"{name}{_labels(labels)} {_value(value)}")
    return "".join(line + "\n" for line in lines)


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{name}="{_escape_label(value)}"' for name, value in labels)
    return "{" + inner + "}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
