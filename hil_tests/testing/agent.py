"""`kommune edge run` as a child process, watched through its JSON log lines (test
support: the edge tests and the HIL tests that run an agent beside boards share it).

    agent = AgentProcess(site, env={"KOMMUNE_BLE_TRANSPORT": transport})
    port, started_s = agent.wait_healthy()       # /healthz said 200
    agent.wait_record(lambda r: "listening" in r["message"])
    agent.records()                              # every JSON record so far
    agent.signal(signal.SIGTERM); agent.wait()   # or close(): kill and reap, always safe
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .http import http_get

KOMMUNE = str(Path(sys.executable).with_name("kommune"))


class AgentProcess:
    """`kommune edge run --log-format json` in a child; its log records as they come."""

    def __init__(self, site: Path, *args: str, env: Mapping[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [KOMMUNE, "edge", "run", "--site", str(site), "--log-format", "json", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=None if env is None else {**os.environ, **env},
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
                    if not line.startswith("{"):
                        continue
                    record: dict[str, Any] = json.loads(line)
                    if match(record):
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
