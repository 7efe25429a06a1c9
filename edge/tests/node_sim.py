"""A node on a UDP node link, for tests: it speaks the node-link protocol with the
protocols package, as a node's firmware does — one frame at a time, sent with
FLAG_ACK_REQUESTED and sent again (same seq, same bytes, FLAG_RETRY) until the edge
answers, however long that takes (the agent may be dead for a while) — and records what
was acknowledged.

    async with SimNode(17, ("127.0.0.1", port)) as node:
        await node.send(runtime.Hello(kind=runtime.KIND_PARKING, boot_count=3))
        await node.send(parking.Occupancy(state=1, event_seq=1))
        node.acked      # [(seq, message), ...] in the order they were acked

It also takes the edge's commands as a node does: frames to its address, to a group in
`groups` or to BROADCAST; those asking for an ack are answered as `decide(frame, msg)`
says (None: Ack, a NACK_* code: Nack, DROP: nothing, as if the frame was lost), once per
seq -- a retransmission (FLAG_RETRY) of a frame it answered gets the same answer again
without being acted on twice (`commands` holds what it acted on, `copies` every frame).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kommune.protocols import frame as F
from kommune.protocols import runtime
from kommune.protocols.errors import ProtocolError
from kommune.protocols.message import Message, decode_frame, encode_frame

HOST = "127.0.0.1"
#: decide() -> DROP: the frame is lost (no answer, not acted on).
DROP = -1


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that is free now and below the kernel's ephemeral range (so
    no socket the kernel numbers itself takes it while the agent is down)."""
    lo = 32768
    with contextlib.suppress(OSError, ValueError):
        lo = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(20000, lo - 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free UDP port")


class SimNode(asyncio.DatagramProtocol):
    """See the module docstring. `timeout_s` is the first wait for an answer; each retry
    waits twice as long, up to `max_timeout_s`."""

    def __init__(
        self,
        node: int,
        agent: tuple[str, int],
        *,
        first_seq: int = 0,
        timeout_s: float = 0.05,
        max_timeout_s: float = 0.4,
        on_acked: Callable[[SimNode], None] | None = None,
    ) -> None:
        self.node = node
        self.agent = agent
        self.next_seq = first_seq & 0xFFFF
        self.timeout_s = timeout_s
        self.max_timeout_s = max_timeout_s
        #: Called after each frame the edge acked (for a test waiting on progress).
        self.on_acked = on_acked
        #: (frame seq, message) of every frame the edge acked, in order.
        self.acked: list[tuple[int, Message]] = []
        #: (frame seq, nack code) of every Nack answering a send().
        self.nacks: list[tuple[int, int]] = []
        #: Every answer received, to send() or to send_raw(): (acked seq, None for an Ack
        #: or the Nack's code).
        self.answers: list[tuple[int, int | None]] = []
        #: Other frames the edge sent us (TimeSync, ...).
        self.received: list[Message] = []
        self.sent = 0
        self.retries = 0
        #: Groups whose frames it takes (frame.accepts).
        self.groups: set[int] = set()
        #: How it answers a command (see the module docstring); acks everything by default.
        self.decide: Callable[[F.Frame, Message], int | None] = lambda _f, _m: None
        #: Commands acted on, once per seq; every copy received: (seq, flags, message).
        self.commands: list[Message] = []
        self.copies: list[tuple[int, int, Message]] = []
        self._copy_arrived = asyncio.Event()
        self._answered: dict[int, int | None] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._waiting_seq: int | None = None
        self._answer: asyncio.Future[int] | None = None

    async def __aenter__(self) -> SimNode:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(HOST, 0))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    @property
    def busy(self) -> bool:
        """A frame is out and not answered yet."""
        return self._waiting_seq is not None

    def send_raw(self, wire: bytes) -> None:
        assert self._transport is not None
        self._transport.sendto(wire, self.agent)

    async def send(self, msg: Message, *, retry_busy: bool = True) -> int | None:
        """Send `msg` with a new seq until it is answered: None when acked, else the Nack
        code (busy is retried after a pause, unless retry_busy is False)."""
        seq = self.next_seq
        self.next_seq = (seq + 1) & 0xFFFF
        first = encode_frame(msg, dst=F.EDGE, src=self.node, seq=seq, flags=F.FLAG_ACK_REQUESTED)
        again = encode_frame(
            msg, dst=F.EDGE, src=self.node, seq=seq, flags=F.FLAG_ACK_REQUESTED | F.FLAG_RETRY
        )
        wire = first
        timeout_s = self.timeout_s
        self._waiting_seq = seq
        try:
            while True:
                self._answer = asyncio.get_running_loop().create_future()
                self.send_raw(wire)
                self.sent += 1
                try:
                    async with asyncio.timeout(timeout_s):
                        code = await self._answer
                except TimeoutError:
                    self.retries += 1
                    wire = again
                    timeout_s = min(timeout_s * 2, self.max_timeout_s)
                    continue
                if code < 0:
                    self.acked.append((seq, msg))
                    if self.on_acked is not None:
                        self.on_acked(self)
                    return None
                self.nacks.append((seq, code))
                if code == runtime.NACK_BUSY and retry_busy:
                    await asyncio.sleep(timeout_s)  # a node's back-off before it retries
                    wire = again
                    continue
                return code
        finally:
            self._waiting_seq = None
            self._answer = None

    # -- asyncio.DatagramProtocol -------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            frame = F.Frame.from_bytes(data)
            msg = decode_frame(frame)
        except ProtocolError:
            return
        if not F.accepts(frame.dst, self.node, list(self.groups)):
            return
        if isinstance(msg, runtime.Ack | runtime.Nack):
            self.answers.append(
                (msg.acked_seq, msg.code if isinstance(msg, runtime.Nack) else None)
            )
            answer = self._answer
            if msg.acked_seq == self._waiting_seq and answer is not None and not answer.done():
                answer.set_result(msg.code if isinstance(msg, runtime.Nack) else -1)
            return
        self.received.append(msg)
        self._take_command(frame, msg)

    def _take_command(self, frame: F.Frame, msg: Message) -> None:
        self.copies.append((frame.seq, frame.flags, msg))
        self._copy_arrived.set()
        ask = frame.ack_requested()
        if ask and frame.flags & F.FLAG_RETRY and frame.seq in self._answered:
            self._reply(frame.seq, self._answered[frame.seq])  # our answer was lost
            return
        code = self.decide(frame, msg)
        if code == DROP:
            return
        if code != runtime.NACK_BUSY:
            self.commands.append(msg)
            if code is None and isinstance(msg, runtime.Groups):
                self.groups = set(msg.groups)  # as a node's runtime keeps them
        if ask:
            if code != runtime.NACK_BUSY:
                self._answered[frame.seq] = code
            self._reply(frame.seq, code)

    async def wait_copies(self, count: int, timeout_s: float = 5.0) -> None:
        """Until `count` frames from the edge have arrived (copies included)."""
        async with asyncio.timeout(timeout_s):
            while len(self.copies) < count:
                self._copy_arrived.clear()
                await self._copy_arrived.wait()

    def _reply(self, seq: int, code: int | None) -> None:
        answer: Message = (
            runtime.Ack(acked_seq=seq) if code is None else runtime.Nack(acked_seq=seq, code=code)
        )
        own = self.next_seq
        self.next_seq = (own + 1) & 0xFFFF
        self.send_raw(encode_frame(answer, dst=F.EDGE, src=self.node, seq=own))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable while the agent is down: the retry timer handles it.
        pass
