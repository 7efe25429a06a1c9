"""One device's HCI transport on the air: a TCP port its host stack connects to.

The host (Bumble in another process: the edge's bleak backend, a board's
`bluetooth` bridge) opens `tcp-client:127.0.0.1:PORT` and speaks H4 HCI
packets. A host connecting powers the device's controller on; the host going
away (process killed, power cut) powers it off, so its peers lose their links
by supervision timeout, as they would with real hardware. One host at a time:
a new one replaces (and disconnects) the old.
"""

from __future__ import annotations

import asyncio
import logging

from bumble import hci
from bumble.core import InvalidPacketError
from bumble.transport.common import PacketParser

from kommune.hil.radio.controller import AirController
from kommune.hil.radio.link import AirLink

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"


class _HostSink:
    """Controller -> host: H4 packets onto the TCP stream."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def on_packet(self, packet: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(packet)


class _HostProtocol(asyncio.Protocol):
    def __init__(self, port: HciPort) -> None:
        self.port = port
        self.parser: PacketParser | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.parser = PacketParser(self.port.power_on(self))

    def data_received(self, data: bytes) -> None:
        if self.parser is None:
            return
        try:
            self.parser.feed_data(data)
        except InvalidPacketError as e:
            # H4 has no resync: a stream out of step is dropped, like a UART reset.
            logger.warning("%s: bad HCI stream from host (%s); disconnecting it", self.port.name, e)
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.parser is not None:
            self.port.power_off(self)
        self.parser = None


class HciPort:
    """The HCI server of one device: name, public address, transport spec."""

    def __init__(self, name: str, address: hci.Address, air: AirLink) -> None:
        self.name = name
        self.address = address
        self.air = air
        self.controller: AirController | None = None
        self._host: _HostProtocol | None = None
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def transport_spec(self) -> str:
        """What the device's host passes to `bumble.transport.open_transport`."""
        return f"tcp-client:{HOST}:{self.port}"

    @property
    def host_attached(self) -> bool:
        return self._host is not None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _HostProtocol(self), HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._host is not None and self._host.transport is not None:
            self._host.transport.close()
        if self._host is not None:
            self.power_off(self._host)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def power_on(self, host: _HostProtocol) -> AirController:
        """A host connected. It replaces any host still attached: a host that
        closed and reopens may get here before its old connection's EOF does."""
        if self._host is not None:
            logger.info("%s: new host replaces the attached one", self.name)
            old = self._host
            self.power_off(old)
            if old.transport is not None:
                old.transport.close()
        assert host.transport is not None
        self._host = host
        # A fresh controller per power-on: no advertising or links survive a reset.
        self.controller = AirController(self.name, self.air, self.address)
        self.controller.host = _HostSink(host.transport)
        logger.info("%s: host attached, controller on", self.name)
        return self.controller

    def power_off(self, host: _HostProtocol) -> None:
        if host is not self._host:
            return
        self._host = None
        if self.controller is not None:
            self.controller.host = None
            self.controller.le_legacy_advertiser.stop()
            for advertising_set in self.controller.advertising_sets.values():
                advertising_set.stop()
            self.air.remove_controller(self.controller)
            self.controller = None
        logger.info("%s: host gone, controller off", self.name)
