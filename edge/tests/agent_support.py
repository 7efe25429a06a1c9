"""What the edge agent's tests share: a strict reader of Prometheus' text format and site
files; the HTTP client and `kommune edge run` as a child process live in hil_tests/testing
(the HIL tests use them too) and are re-exported here."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from hil_tests.testing.agent import KOMMUNE, AgentProcess
from hil_tests.testing.http import Response, http_get, http_request, parse_response

__all__ = [
    "KOMMUNE",
    "MINIMAL_SITE",
    "REPO",
    "SAMPLE_SITE",
    "AgentProcess",
    "Family",
    "Response",
    "http_get",
    "http_request",
    "parse_prometheus",
    "parse_response",
    "write_site",
]

REPO = Path(__file__).resolve().parents[2]
SAMPLE_SITE = REPO / "docs" / "site.example.toml"

# -- Prometheus text exposition format 0.0.4, read strictly -------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
_LABEL_VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(
    rf"({_NAME})(?:\{{((?:{_LABEL_NAME}={_LABEL_VALUE})(?:,{_LABEL_NAME}={_LABEL_VALUE})*)?,?\}})?"
    r" (\S+)(?: (-?\d+))?"
)
_ONE_LABEL = re.compile(rf"({_LABEL_NAME})=({_LABEL_VALUE})")


@dataclass
class Family:
    name: str
    help: str | None = None
    type: str | None = None
    samples: dict[tuple[tuple[str, str], ...], float] = field(default_factory=dict)


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), text)


def _number(text: str) -> float:
    special = {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}
    if text in special:
        return special[text]
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text):
        raise AssertionError(f"not a sample value: {text!r}")
    return float(text)


def parse_prometheus(text: str) -> dict[str, Family]:
    """Every family in `text`; AssertionError at the first thing the format does not allow
    (a bad name, label or value; TYPE after samples or twice; a family's samples not
    together; a sample given twice; no final newline)."""
    assert text == "" or text.endswith("\n"), "the exposition must end with a newline"
    families: dict[str, Family] = {}
    finished: set[str] = set()
    current: str | None = None

    def family(name: str) -> Family:
        nonlocal current
        if name != current:
            assert name not in finished, f"{name}: its lines are not together"
            if current is not None:
                finished.add(current)
            current = name
        return families.setdefault(name, Family(name))

    for number, line in enumerate(text.split("\n")[:-1], 1):
        where = f"line {number} ({line!r})"
        if not line.strip():
            continue
        if line.startswith("#"):
            words = line.split(" ", 3)
            if len(words) >= 3 and words[1] in ("HELP", "TYPE"):
                assert re.fullmatch(_NAME, words[2]), f"{where}: bad metric name"
                fam = family(words[2])
                rest = words[3] if len(words) > 3 else ""
                if words[1] == "HELP":
                    assert fam.help is None, f"{where}: a second HELP"
                    assert re.fullmatch(r"(?:[^\\\n]|\\[\\n])*", rest), f"{where}: bad HELP"
                    fam.help = _unescape(rest)
                else:
                    assert fam.type is None, f"{where}: a second TYPE"
                    assert not fam.samples, f"{where}: TYPE after the samples"
                    assert rest in ("counter", "gauge", "histogram", "summary", "untyped"), where
                    fam.type = rest
            continue
        match = _SAMPLE.fullmatch(line)
        assert match, f"{where}: not a sample line"
        name, labels_text, value, _stamp = match.groups()
        base = re.sub(r"_(sum|count|bucket)$", "", name)
        fam = family(base if base in families and families[base].type else name)
        labels = tuple((k, _unescape(v[1:-1])) for k, v in _ONE_LABEL.findall(labels_text or ""))
        assert len({k for k, _ in labels}) == len(labels), f"{where}: a label twice"
        assert labels not in fam.samples, f"{where}: the same sample twice"
        fam.samples[labels] = _number(value)
    return families


# -- site files ---------------------------------------------------------------------------

MINIMAL_SITE = """\
[agent]
id = "test-agent"
site = "lab"

[broker]
host = "localhost"
tls = false
"""


def write_site(folder: Path, *, port: int = 0, extra: str = "", name: str = "site.toml") -> Path:
    """A runnable site in `folder`: its state in folder/state, health on `port`."""
    path = folder / name
    path.write_text(
        MINIMAL_SITE + f'\n[outbox]\ndir = "state"\n\n[health]\nbind = "127.0.0.1:{port}"\n' + extra
    )
    return path
