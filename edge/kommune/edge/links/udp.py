"""A node link over UDP: one frame per datagram, COBS-encoded and ended by 0x00 exactly as
on a serial line (protocols/README.md), answers sent to the address the node's frame came
from.

The socket is bound without SO_REUSEADDR on purpose: UDP has no TIME_WAIT, so the port
is free the moment a killed agent's process is gone and the next agent binds it at
once; with SO_REUSEADDR a second agent (another site file with the same port) could bind
it too and silently take part of the frames, where without it its start fails loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any, Final

from kommune.edge.agent.process import PartError
from kommune.edge.links.handler import LinkHandler
from kommune.protocols.errors import TRUNCATED, ProtocolError
from kommune.protocols.frame import Frame

#: Receive buffer asked for, so a burst of frames waits in the kernel, not dropped (the
#: kernel caps it at net.core.rmem_max).
RECEIVE_BUFFER_BYTES: Final = 4 * 1024 * 1024


class UdpTransport(asyncio.DatagramProtocol):
    kind = "udp"

    def __init__(self, handler: LinkHandler, host: str, port: int) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self._transport: asyncio.DatagramTransport | None = None
        self.errors_received = 0

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"udp {host}:{self.port}"

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                self.host, self.port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
            )
            family, kind, proto, _, address = infos[0]
            sock = socket.socket(family, kind, proto)
            try:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
                sock.setblocking(False)
                sock.bind(address)
            except BaseException:
                sock.close()
                raise
        except OSError as e:
            why = e.strerror or str(e)
            raise PartError(
                f"link {self.handler.link_id}: cannot listen on {self.where}: {why}"
            ) from e
        transport, _ = await loop.create_datagram_endpoint(lambda: self, sock=sock)
        self._transport = transport
        self.port = sock.getsockname()[1]
        self.handler.send = self._send
        self.handler.peer_required = True  # a node's address: where its frames came from

    @property
    def is_open(self) -> bool:
        return self._transport is not None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _send(self, wire: bytes, peer: Any) -> None:
        if self._transport is None:
            raise OSError("the link is closed")
        self._transport.sendto(wire, peer)

    # -- asyncio.DatagramProtocol -------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> None:
        start = 0
        while start < len(data) and data[start] == 0:  # a sender may lead with 0x00
            start += 1
        if start == len(data):
            self.handler.on_bad_packet(TRUNCATED)
            return
        try:
            frame = Frame.from_bytes(memoryview(data)[start:])
        except ProtocolError as e:
            self.handler.on_bad_packet(e.reason)
            return
        self.handler.on_frame(frame, addr)

    def error_received(self, exc: Exception) -> None:
        # An ICMP error for an answer we sent (a node that went away): nothing to do.
        self.errors_received += 1
