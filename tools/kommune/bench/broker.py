"""A bench's own Mosquitto, and a TCP proxy that counts the bytes between client and broker.

    with own_mosquitto(workdir) as broker:          # started on a free port, always killed
        async with ByteCounter(broker.host, broker.port) as wire:
            ...                                      # clients connect to wire.port
            wire.total_bytes                         # both directions, TCP payload only

The broker runs from `workdir` (its config and log live there; no persistence: a bench
needs none) and dies with the bench process if that is killed (PR_SET_PDEATHSIG).
`own_mosquitto` returns once the broker answers an MQTT CONNECT, and raises BenchError
with the end of its log if it does not. The test suite has a fuller broker helper
(hil_tests/testing/mosquitto.py: stop, restart, pause); it is test support, not part of
the installed package, so the bench keeps this small one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

from kommune.bench.report import BenchError

MOSQUITTO = os.environ.get("KOMMUNE_MOSQUITTO", "/usr/sbin/mosquitto")
HOST = "127.0.0.1"
READY_TIMEOUT_S = 10.0
_PR_SET_PDEATHSIG = 1
# MQTT 3.1.1 CONNECT: clean session, keepalive 60, empty client id; the answer is a CONNACK.
_CONNECT = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"
_DISCONNECT = b"\xe0\x00"


def _load_prctl() -> Callable[..., int] | None:
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return None
    return prctl


# Looked up now: between fork and exec only the call itself may run.
_prctl = _load_prctl()
#: A preexec_fn that has the child killed when the thread that started it ends (Linux's
#: PR_SET_PDEATHSIG); None where there is no prctl. The test's broker uses it too.
die_with_parent: Callable[[], None] | None = None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    assert _prctl is not None
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


if _prctl is not None:
    die_with_parent = _die_with_parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the broker retries if it is taken)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def mqtt_answers(port: int, timeout_s: float = 1.0, *, host: str = HOST) -> bool:
    """True if something on host:port answers an MQTT CONNECT with a CONNACK."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.sendall(_CONNECT)
            answer = s.recv(4)
            with contextlib.suppress(OSError):
                s.sendall(_DISCONNECT)
    except OSError:
        return False
    return answer[:1] == b"\x20"


class Broker:
    """A running Mosquitto: where it listens and its process."""

    def __init__(self, workdir: Path, port: int, process: subprocess.Popen[bytes]) -> None:
        self.host = HOST
        self.port = port
        self.workdir = workdir
        self.process = process


def _spawn(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} {HOST}\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "max_queued_messages 0\n"
        "max_inflight_messages 100\n"
        f"log_dest file {workdir / 'mosquitto.log'}\n"
        "log_type error\nlog_type warning\n"
    )
    with (workdir / "mosquitto.out").open("ab") as out:
        return subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # noqa: PLW1509
        )


def _log_tail(workdir: Path) -> str:
    lines: list[str] = []
    for name in ("mosquitto.log", "mosquitto.out"):
        with contextlib.suppress(OSError):
            lines += (workdir / name).read_text(errors="replace").strip().splitlines()
    return f": {lines[-1]}" if lines else ""


def _stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    process.wait()


@contextlib.contextmanager
def own_mosquitto(workdir: Path) -> Iterator[Broker]:
    """A Mosquitto on a free port run from `workdir`, killed and reaped when the block
    ends, however it ends (an error, Ctrl-C)."""
    if not os.access(MOSQUITTO, os.X_OK):
        raise BenchError(f"{MOSQUITTO} not found: install mosquitto (./run does)")
    for _ in range(5):
        port = free_port()
        process = _spawn(workdir, port)
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not mqtt_answers(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.005)  # poll interval, not a wait for something
            else:
                yield Broker(workdir, port, process)
                return
            taken = "Address already in use" in _log_tail(workdir)
        finally:
            _stop(process)
        if not taken:
            raise BenchError(f"mosquitto did not start on port {port}{_log_tail(workdir)}")
    raise BenchError("mosquitto found no free port in 5 tries")


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary directory, removed when the block ends, however it ends."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class ByteCounter:
    """A TCP proxy on 127.0.0.1 to (host, port) that counts what passes, both ways: the
    TCP payload (MQTT packets whole), not IP/TCP headers."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.host = HOST
        self.port = 0
        self.up_bytes = 0
        self.down_bytes = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def total_bytes(self) -> int:
        return self.up_bytes + self.down_bytes

    def reset(self) -> None:
        self.up_bytes = self.down_bytes = 0

    async def __aenter__(self) -> ByteCounter:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            b_reader, b_writer = await asyncio.open_connection(*self.target)
        except OSError:
            c_writer.close()
            return
        self._writers |= {c_writer, b_writer}
        for task in (
            asyncio.create_task(self._pump(c_reader, b_writer, up=True)),
            asyncio.create_task(self._pump(b_reader, c_writer, up=False)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if up:
                    self.up_bytes += len(data)
                else:
                    self.down_bytes += len(data)
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
            self._writers.discard(writer)
