"""What the edge agent's tests share: a strict reader of Prometheus' text format, a small
HTTP client, site files, and `kommune edge run` as a child process that is watched
through its JSON log lines."""

from __future__ import annotations

import json
import math
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KOMMUNE = str(Path(sys.executable).with_name("kommune"))
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


# -- HTTP --------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    port: int, raw: bytes, *, host: str = "127.0.0.1", timeout_s: float = 10.0
) -> bytes:
    """Send `raw`, read until the server closes; what it sent back."""
    with socket.create_connection((host, port), timeout=timeout_s) as conn:
        conn.sendall(raw)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def parse_response(raw: bytes) -> Response:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    assert int(headers["content-length"]) == len(body), "Content-Length is not the body's"
    return Response(status, headers, body)


def http_get(port: int, path: str, *, host: str = "127.0.0.1") -> Response:
    return parse_response(http_request(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()))


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


# -- the agent as a child process -------------------------------------------------------


class AgentProcess:
    """`kommune edge run --log-format json` in a child; its log records as they come."""

    def __init__(self, site: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [KOMMUNE, "edge", "run", "--site", str(site), "--log-format", "json", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.started_at = time.monotonic()
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def records(self) -> list[dict[str, Any]]:
        with self._changed:
            lines = list(self.lines)
        return [json.loads(line) for line in lines if line.startswith("{")]

    def wait_record(
        self, match: Callable[[dict[str, Any]], bool], timeout_s: float = 20.0
    ) -> dict[str, Any]:
        """The first log record `match` accepts, waiting for it until the deadline."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if line.startswith("{") and match(record := json.loads(line)):
                        return record
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    raise AssertionError(
                        f"no such log record ({'exited' if self._eof else 'timed out'});"
                        f" the log: {self.lines[-20:]}"
                    )
                self._changed.wait(left)

    def port(self) -> int:
        record = self.wait_record(lambda r: r["part"] == "health" and "port" in r["fields"])
        return int(record["fields"]["port"])

    def wait_healthy(self, timeout_s: float = 20.0) -> tuple[int, float]:
        """Poll /healthz until it says 200 (the port comes from the log); (port, seconds
        from the start of the process)."""
        deadline = time.monotonic() + timeout_s
        port = self.port()
        last: object = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the agent exited: {self.lines[-10:]}"
            try:
                response = http_get(port, "/healthz")
            except OSError as e:
                last = e
            else:
                if response.status == 200:
                    return port, time.monotonic() - self.started_at
                last = response.status
            with self._changed:  # poll again at the next log line or in 10 ms
                self._changed.wait(0.01)
        raise AssertionError(f"/healthz not 200 within {timeout_s} s (last: {last})")

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 30.0) -> int:
        code = self.proc.wait(timeout_s)
        self._reader.join(timeout_s)
        return code

    def close(self) -> None:
        """Kill it if it still runs (a test that failed half-way), and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._reader.join(30)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
