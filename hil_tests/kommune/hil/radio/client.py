"""Start, drive and stop an air process from asyncio code (tests, the demo, the rig)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from kommune.hil import children
from kommune.hil.errors import RigError
from kommune.hil.radio.link import LinkStats
from kommune.hil.radio.profile import LinkProfile

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
CONNECTION_TIMEOUT = 0x08


class AirError(RigError):
    """The air did not start, died, or refused a control request."""


@dataclass(frozen=True)
class AirDevice:
    """A device on the air. Its host stack opens `transport` (a Bumble transport spec)."""

    name: str
    address: str  # public address, "AA:BB:CC:DD:EE:FF"
    transport: str  # e.g. "tcp-client:127.0.0.1:40123"
    host_attached: bool = False

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> AirDevice:
        return cls(
            name=str(doc["name"]),
            address=str(doc["address"]),
            transport=str(doc["transport"]),
            host_attached=bool(doc.get("host_attached", False)),
        )


@dataclass(frozen=True)
class PairStats:
    connected: bool
    stats: LinkStats


class Air:
    """A handle on a running air: its control channel, and its process if we started it."""

    def __init__(
        self,
        control: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        process: asyncio.subprocess.Process | None = None,
    ) -> None:
        self.control = control
        self._reader = reader
        self._writer = writer
        self._process = process
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        """The air process's id, when `spawn` started it."""
        return None if self._process is None else self._process.pid

    @classmethod
    async def spawn(
        cls, *, seed: int = 0, devices: Iterable[str] = (), log_level: str = "WARNING"
    ) -> Air:
        """Start `python -m kommune.hil.radio.air` and connect to its control channel.

        The air runs in a session of its own (a terminal's Ctrl-C is for this process,
        which stops the air in order) and dies with this process (--parent-pid: the
        kernel kills it when the thread that runs this loop ends, SIGKILL included)."""
        args = ["--control", "127.0.0.1:0", "--seed", str(seed), "--log-level", log_level]
        args += ["--parent-pid", str(os.getpid())]
        for name in devices:
            args += ["--device", name]
        try:
            process, ready = await children.spawn_ready(
                [sys.executable, "-m", "kommune.hil.radio.air", *args],
                what="the air",
                timeout_s=START_TIMEOUT_S,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        except children.ChildError as e:
            raise AirError(str(e)) from e
        try:
            reader, writer = await _open(ready["control"])
        except BaseException:
            await children.stop(process, grace_s=0.0)
            raise
        return cls(ready["control"], reader, writer, process)

    @classmethod
    async def attach(cls, control: str) -> Air:
        """Drive an air someone else started (`HOST:PORT` of its control channel)."""
        reader, writer = await _open(control)
        return cls(control, reader, writer)

    async def close(self) -> None:
        """Disconnect; stop the process too if `spawn` started it."""
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(AirError, ConnectionError):
                await self.request("shutdown")
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()
        if self._process is not None:
            await children.stop(self._process, grace_s=STOP_TIMEOUT_S)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """One control request; raises `AirError` when the air refuses it."""
        async with self._lock:
            self._writer.write(json.dumps({"op": op, **fields}).encode() + b"\n")
            await self._writer.drain()
            line = await self._reader.readline()
        if not line:
            raise AirError("air closed its control channel")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise AirError(f"{op}: {reply.get('error')}")
        return reply

    # -- devices -------------------------------------------------------------------

    async def add_device(self, name: str, address: str | None = None) -> AirDevice:
        """Put a device on the air; give `device.transport` to its host stack."""
        fields: dict[str, Any] = {"name": name}
        if address is not None:
            fields["address"] = address
        return AirDevice.from_json(await self.request("add_device", **fields))

    async def remove_device(self, name: str) -> None:
        await self.request("remove_device", name=name)

    async def devices(self) -> list[AirDevice]:
        reply = await self.request("devices")
        return [AirDevice.from_json(d) for d in reply["devices"]]

    # -- link model and faults -------------------------------------------------------

    async def set_link(self, a: str, b: str, **changes: float | None) -> LinkProfile:
        """Change the pair's `LinkProfile` fields (interval_ms, loss, rssi_dbm, ...)."""
        reply = await self.request("set_link", a=a, b=b, profile=changes)
        return LinkProfile(**reply["profile"])

    async def set_default_link(self, **changes: float | None) -> LinkProfile:
        """Change the profile of every pair without one of its own."""
        reply = await self.request("set_link", profile=changes)
        return LinkProfile(**reply["profile"])

    async def disconnect(self, a: str, b: str, reason: int = CONNECTION_TIMEOUT) -> bool:
        """Drop the link between `a` and `b` now; False if they were not connected."""
        reply = await self.request("disconnect", a=a, b=b, reason=reason)
        return bool(reply["dropped"])

    async def arm_cut(self, a: str, b: str, att_opcode: int | None = None) -> None:
        """The next PDU between `a` and `b` (carrying `att_opcode`, if given) is lost
        and the link drops, e.g. `att_opcode=0x12` cuts in the middle of a GATT write."""
        await self.request("arm_cut", a=a, b=b, att_opcode=att_opcode)

    async def stats(self, a: str, b: str) -> PairStats:
        reply = await self.request("stats", a=a, b=b)
        return PairStats(bool(reply["connected"]), LinkStats(**reply["stats"]))


@contextlib.asynccontextmanager
async def running_air(
    *, seed: int = 0, devices: Iterable[str] = (), log_level: str = "WARNING"
) -> AsyncIterator[Air]:
    """`async with running_air() as air:` an air process for the block's duration."""
    air = await Air.spawn(seed=seed, devices=devices, log_level=log_level)
    try:
        yield air
    finally:
        await air.close()


async def _open(control: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, _, port = control.rpartition(":")
    try:
        return await asyncio.open_connection(host, int(port))
    except OSError as e:
        raise AirError(f"cannot reach the air's control channel at {control}: {e}") from e
