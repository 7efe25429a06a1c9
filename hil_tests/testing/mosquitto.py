"""A real Mosquitto for a test: its own port, config and persistence (test support).

    def test_x(mosquitto):                 # the pytest fixture: started, killed at teardown
        mosquitto.port                     # 127.0.0.1:<port>, MQTT 3.1.1 and 5
        mosquitto.stop()                   # SIGTERM: it saves its database and exits
        mosquitto.start()                  # again, on the same port, with the same data
        mosquitto.pause(); mosquitto.resume()   # SIGSTOP / SIGCONT: a broker that hangs
        mosquitto.kill()                   # SIGKILL: gone without saving

    with running_mosquitto(tmp_path, extra_config="...") as broker: ...   # without pytest

`start()` returns once the broker answers an MQTT CONNECT with a CONNACK (polled
with a deadline; no fixed sleeps), and raises `MosquittoError` with the end of its
log if it exits or stays silent. The port is picked outside the kernel's ephemeral
range, so no client socket (ours, reconnecting while the broker is down) can take it
between a `stop()` and the next `start()`. Whatever happens, `close()` (and the
fixture's teardown) leaves no broker behind.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kommune.bench.broker import die_with_parent, mqtt_answers

MOSQUITTO = os.environ.get("KOMMUNE_MOSQUITTO", "/usr/sbin/mosquitto")
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
HOST = "127.0.0.1"

# MQTT 3.1.1 CONNECT: clean session, keepalive 60, empty client id (the broker names it).


class MosquittoError(RuntimeError):
    """The broker did not start, or did not stop."""


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and that the kernel never hands out on
    its own (below its ephemeral range)."""
    lo, _ = _ephemeral_range()
    top = lo - 1 if lo > 20000 else 65535
    bottom = 20000 if lo > 20000 else max(lo, 1024)
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(bottom, top)
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
        return port
    raise MosquittoError(f"no free port in {bottom}..{top}")


class Mosquitto:
    """One broker process at a time in `workdir`, always on the same port."""

    def __init__(self, workdir: Path, *, port: int | None = None, extra_config: str = "") -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.extra_config = extra_config
        self.conf = self.workdir / "mosquitto.conf"
        self.log = self.workdir / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._paused = False
        self.starts = 0

    # -- life --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the broker and return once it accepts MQTT connections."""
        if self.running:
            raise MosquittoError("the broker is running already")
        for _ in range(5):
            self._write_config()
            self._spawn()
            try:
                self._wait_ready()
            except MosquittoError:
                in_use = "Address already in use" in self.log_text()
                self.close()
                if in_use and not self._fixed_port and self.starts == 0:
                    self.port = free_port()  # taken between our check and its bind
                    continue
                raise
            self.starts += 1
            return
        raise MosquittoError("could not find a free port for the broker")

    def stop(self) -> None:
        """SIGTERM: the broker saves its database and exits (SIGKILL if it does not)."""
        proc = self._proc()
        self.resume()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.close()
            raise MosquittoError(f"mosquitto ignored SIGTERM for {STOP_TIMEOUT_S:.0f} s") from None
        self.process = None

    def kill(self) -> None:
        """SIGKILL: gone at once, nothing saved since the last save."""
        proc = self._proc()
        proc.kill()
        proc.wait()
        self.process = None
        self._paused = False

    def pause(self) -> None:
        """SIGSTOP: the socket stays open, the kernel still takes bytes, nothing answers."""
        self._proc().send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        if self._paused and self.process is not None:
            self.process.send_signal(signal.SIGCONT)
        self._paused = False

    def close(self) -> None:
        """Kill and reap the broker if there is one (idempotent, for teardown)."""
        proc, self.process = self.process, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        self._paused = False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        return self._proc().pid

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Mosquitto:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- inside --------------------------------------------------------------------------

    def _proc(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise MosquittoError("the broker is not running")
        return self.process

    def _write_config(self) -> None:
        user = pwd.getpwuid(os.geteuid()).pw_name
        self.conf.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "autosave_interval 0\n"
            # Queue for offline persistent sessions without a cap, deliver 100 at a time.
            "max_queued_messages 0\n"
            "max_inflight_messages 100\n"
            f"user {user}\n"
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            "connection_messages true\n"
            f"{self.extra_config}\n"
        )

    def _spawn(self) -> None:
        # The broker dies with us if we die without teardown; PR_SET_PDEATHSIG follows the
        # thread that started it, so only from the main thread (where tests start it).
        main = threading.current_thread() is threading.main_thread()
        pre = die_with_parent if main else None
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=pre,  # noqa: PLW1509
            )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        proc = self._proc()
        while True:
            if proc.poll() is not None:
                raise MosquittoError(
                    f"mosquitto exited with {proc.returncode} on port {self.port}{self._log_tail()}"
                )
            if mqtt_answers(self.port, timeout_s=1.0, host=self.host):
                return
            if time.monotonic() > deadline:
                raise MosquittoError(
                    f"mosquitto did not answer on port {self.port} within "
                    f"{READY_TIMEOUT_S:.0f} s{self._log_tail()}"
                )
            time.sleep(0.005)  # poll interval, not a wait for something

    def _log_tail(self) -> str:
        lines = self.log_text().strip().splitlines()
        return f": {lines[-1]}" if lines else ""


@contextlib.contextmanager
def running_mosquitto(
    workdir: Path, *, port: int | None = None, extra_config: str = ""
) -> Iterator[Mosquitto]:
    """A started broker in `workdir`, killed when the block ends, whatever happens."""
    broker = Mosquitto(workdir, port=port, extra_config=extra_config)
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto for this test on a free port (see the module docstring)."""
    with running_mosquitto(tmp_path / "mosquitto") as broker:
        yield broker
