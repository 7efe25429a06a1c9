"""The air process: one `AirLink`, one HCI port per device, a JSON-lines control channel.

Run it as `python -m kommune.hil.radio.air [--control HOST:PORT] [--seed N]
[--device NAME[=ADDRESS] ...] [--parent-pid PID]`. When ready it prints one JSON
line on stdout, `{"control": "127.0.0.1:PORT", "devices": [...]}`, then serves
until SIGTERM, SIGINT or a `shutdown` request -- or, with --parent-pid, until
process PID (its parent) ends: the kernel then kills it (PR_SET_PDEATHSIG).
`kommune.hil.radio.client.Air` drives it.

Control channel (TCP, one JSON object per line each way; one reply per request,
in order; `{"ok": false, "error": "..."}` on failure):

    {"op": "add_device", "name": "lock-1", "address": "F0:4B:00:00:00:01"?}
        -> {"ok": true, "name": ..., "address": ..., "transport": "tcp-client:127.0.0.1:PORT"}
    {"op": "remove_device", "name": ...}
    {"op": "devices"} -> {"ok": true, "devices": [{name, address, transport, host_attached}]}
    {"op": "set_link", "a": ..., "b": ..., "profile": {LinkProfile fields}}  (merged into the
        pair's profile; without a/b: into the default profile) -> {"ok": true, "profile": {...}}
    {"op": "disconnect", "a": ..., "b": ..., "reason": 8?} -> {"ok": true, "dropped": bool}
    {"op": "arm_cut", "a": ..., "b": ..., "att_opcode": 18?}
    {"op": "stats", "a": ..., "b": ...} -> {"ok": true, "connected": bool, "stats": {...}}
    {"op": "shutdown"}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from bumble import hci

from kommune.hil.radio.hci_port import HciPort
from kommune.hil.radio.link import AirLink

logger = logging.getLogger(__name__)

Request = dict[str, Any]
Reply = dict[str, Any]

#: Public addresses handed out when a device is added without one.
AUTO_ADDRESS_PREFIX = "F0:4B:00:00"


class ControlError(Exception):
    """A control request is malformed or refers to something unknown."""


class AirServer:
    """The devices on one air and the control channel that manages them."""

    def __init__(self, seed: int = 0) -> None:
        self.link = AirLink(seed)
        self.ports: dict[str, HciPort] = {}
        self.stopped = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._clients: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._next_address = 1
        self._ops: dict[str, Callable[[Request], Awaitable[Reply]]] = {
            "add_device": self._add_device,
            "remove_device": self._remove_device,
            "devices": self._devices,
            "set_link": self._set_link,
            "disconnect": self._disconnect,
            "arm_cut": self._arm_cut,
            "stats": self._stats,
            "shutdown": self._shutdown,
        }

    async def start(self, host: str, port: int) -> str:
        self._server = await asyncio.start_server(self._serve_client, host, port)
        bound = self._server.sockets[0].getsockname()
        return f"{bound[0]}:{bound[1]}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        # Close the clients' streams rather than cancel their tasks: asyncio's
        # stream server logs a cancelled handler task as an error.
        for writer in self._clients.values():
            writer.close()
        await asyncio.gather(*self._clients, return_exceptions=True)
        for port in list(self.ports.values()):
            await port.close()
        self.ports.clear()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def add_device(self, name: str, address: str | None = None) -> HciPort:
        """Put a device on the air; its host connects to `port.transport_spec`."""
        if not name or name in self.ports:
            raise ControlError(f"device name {name!r} empty or taken")
        if address is None:
            address = self._free_address()
        try:
            public = hci.Address(address, hci.Address.PUBLIC_DEVICE_ADDRESS)
        except (ValueError, TypeError) as e:
            raise ControlError(f"bad address {address!r}: {e}") from e
        if any(p.address == public for p in self.ports.values()):
            raise ControlError(f"address {address} taken")
        port = HciPort(name, public, self.link)
        await port.open()
        self.ports[name] = port
        return port

    def _free_address(self) -> str:
        taken = {p.address.to_string(False) for p in self.ports.values()}
        while True:
            n = self._next_address
            self._next_address += 1
            address = f"{AUTO_ADDRESS_PREFIX}:{n >> 8 & 0xFF:02X}:{n & 0xFF:02X}"
            if address not in taken:
                return address

    async def handle(self, request: Request) -> Reply:
        op = self._ops.get(str(request.get("op")))
        if op is None:
            return {"ok": False, "error": f"unknown op {request.get('op')!r}"}
        try:
            return {"ok": True, **await op(request)}
        except (ControlError, ValueError) as e:
            return {"ok": False, "error": str(e)}

    # -- control channel --------------------------------------------------------

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients[task] = writer
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise ControlError("request must be a JSON object")
                    reply = await self.handle(request)
                except (json.JSONDecodeError, ControlError) as e:
                    reply = {"ok": False, "error": f"bad request: {e}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, ValueError):  # ValueError: a line over the stream limit
            pass
        finally:
            self._clients.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    def _port(self, request: Request, key: str = "name") -> HciPort:
        name = request.get(key)
        if not isinstance(name, str) or name not in self.ports:
            raise ControlError(f"no device {name!r}")
        return self.ports[name]

    def _pair(self, request: Request) -> tuple[str, str]:
        return self._port(request, "a").name, self._port(request, "b").name

    async def _add_device(self, request: Request) -> Reply:
        name, address = request.get("name"), request.get("address")
        if not isinstance(name, str) or (address is not None and not isinstance(address, str)):
            raise ControlError("name and address must be strings")
        port = await self.add_device(name, address)
        return _describe(port)

    async def _remove_device(self, request: Request) -> Reply:
        port = self._port(request)
        del self.ports[port.name]
        await port.close()
        return {}

    async def _devices(self, request: Request) -> Reply:
        return {"devices": [_describe(p) for p in self.ports.values()]}

    async def _set_link(self, request: Request) -> Reply:
        changes = request.get("profile", {})
        if not isinstance(changes, dict):
            raise ControlError("profile must be an object")
        if "a" not in request and "b" not in request:
            return {"profile": self.link.set_default_profile(changes).to_json()}
        a, b = self._pair(request)
        return {"profile": self.link.set_profile(a, b, changes).to_json()}

    async def _disconnect(self, request: Request) -> Reply:
        a, b = self._pair(request)
        reason = request.get("reason", hci.HCI_ErrorCode.CONNECTION_TIMEOUT_ERROR)
        if not isinstance(reason, int) or not 0 < reason < 0x100:
            raise ControlError(f"bad reason {reason!r}")
        return {"dropped": self.link.disconnect(a, b, reason)}

    async def _arm_cut(self, request: Request) -> Reply:
        a, b = self._pair(request)
        opcode = request.get("att_opcode")
        if opcode is not None and (not isinstance(opcode, int) or not 0 <= opcode < 0x100):
            raise ControlError(f"bad att_opcode {opcode!r}")
        self.link.arm_cut(a, b, opcode)
        return {}

    async def _stats(self, request: Request) -> Reply:
        a, b = self._pair(request)
        return {"connected": self.link.connected(a, b), "stats": self.link.stats(a, b).to_json()}

    async def _shutdown(self, request: Request) -> Reply:
        self.stopped.set()
        return {}


def _describe(port: HciPort) -> Reply:
    return {
        "name": port.name,
        "address": port.address.to_string(False),
        "transport": port.transport_spec,
        "host_attached": port.host_attached,
    }


async def serve(control: str, seed: int, devices: list[tuple[str, str | None]]) -> None:
    server = AirServer(seed)
    host, _, port = control.rpartition(":")
    try:
        endpoint = await server.start(host or "127.0.0.1", int(port))
        ports = [await server.add_device(name, address) for name, address in devices]
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, server.stopped.set)
        ready = {"control": endpoint, "devices": [_describe(p) for p in ports]}
        sys.stdout.write(json.dumps(ready) + "\n")
        sys.stdout.flush()
        await server.stopped.wait()
    finally:
        await server.close()


def _device_arg(text: str) -> tuple[str, str | None]:
    name, _, address = text.partition("=")
    return name, address or None


_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> bool:
    """Be killed when the parent's thread that started us ends; False if it is gone."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    return os.getppid() == parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kommune.hil.radio.air",
        description="Serve a virtual BLE air: Bumble controllers on one link, HCI over TCP.",
        epilog="example:\n  python -m kommune.hil.radio.air --seed 7 --device edge --device lock-1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--control", default="127.0.0.1:0", help="HOST:PORT of the control channel")
    parser.add_argument("--seed", type=int, default=0, help="seed for the link model's loss draws")
    parser.add_argument(
        "--device", type=_device_arg, action="append", default=[], metavar="NAME[=ADDRESS]"
    )
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument(
        "--parent-pid", type=int, metavar="PID", help="exit when this process (the parent) ends"
    )
    args = parser.parse_args(argv)
    if args.parent_pid is not None and not _die_with(args.parent_pid):
        return 1
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    asyncio.run(serve(args.control, args.seed, args.device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
