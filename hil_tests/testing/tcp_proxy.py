"""A TCP proxy between a client and a broker that counts bytes and can misbehave
(test support): hold back everything the broker says (so PUBACKs never come while the
broker has the messages), or cut every connection at once.

    async with TcpProxy(broker.host, broker.port) as proxy:   # proxy.port to connect to
        proxy.hold()            # broker -> client bytes are kept, not forwarded
        await proxy.cut()       # every connection closed (RST), held bytes dropped
        proxy.unhold()
        proxy.up_bytes, proxy.down_bytes     # client -> broker, broker -> client
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct


class _Pipe:
    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.broker: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []


class TcpProxy:
    """See the module docstring."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.host = "127.0.0.1"
        self.port = 0
        self.up_bytes = 0
        self.down_bytes = 0
        self.connections = 0
        self._held = asyncio.Event()
        self._held.set()  # set: forwarding; clear: holding
        self._pipes: set[_Pipe] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
        await self.cut()
        if self._server is not None:
            await self._server.wait_closed()

    def hold(self) -> None:
        self._held.clear()

    def unhold(self) -> None:
        self._held.set()

    async def cut(self) -> None:
        """Reset every connection through the proxy, both sides."""
        pipes, self._pipes = self._pipes, set()
        for pipe in pipes:
            for writer in (pipe.client, pipe.broker):
                if writer is not None:
                    _reset(writer)
            for task in pipe.tasks:
                task.cancel()
        for pipe in pipes:
            for task in pipe.tasks:
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pipe = _Pipe(writer)
        try:
            b_reader, b_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(writer)
            return
        pipe.broker = b_writer
        self.connections += 1
        self._pipes.add(pipe)
        pipe.tasks = [
            asyncio.create_task(self._pump(reader, b_writer, up=True)),
            asyncio.create_task(self._pump(b_reader, writer, up=False)),
        ]

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if up:
                    self.up_bytes += len(data)
                else:
                    await self._held.wait()
                    self.down_bytes += len(data)
                writer.write(data)
                await writer.drain()
            writer.close()
        except (OSError, RuntimeError):
            _reset(writer)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as a dead peer or a middlebox would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
