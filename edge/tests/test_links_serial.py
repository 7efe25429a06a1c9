"""A node link on a serial line, here a pseudo-terminal as the HIL rig gives: the byte
stream may split frames anywhere and carry noise, answers come back on the same line,
and a device that goes away is reported (the part stays up and tries to open it again)
while the other links go on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from agent_support import write_site
from outbox_producer import stored_rows

from kommune.edge.agent import site as S
from kommune.edge.agent.outbox_part import OutboxPart
from kommune.edge.links.part import LinksPart
from kommune.protocols import frame as F
from kommune.protocols import lamp, parking, runtime
from kommune.protocols.message import Message, decode_frame, encode_frame
from kommune.protocols.stream import StreamDecoder


class NodeSide:
    """The far end of the pty: what the nodes on the bus write and read."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        os.set_blocking(self.master, False)
        self.path = Path(os.ttyname(self.slave))
        self.answers: list[Message] = []
        self._changed = asyncio.Event()
        self._decoder = StreamDecoder(self._on_frame)
        asyncio.get_running_loop().add_reader(self.master, self._readable)

    def _on_frame(self, frame: F.Frame) -> None:
        self.answers.append(decode_frame(frame))
        self._changed.set()

    def _readable(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._decoder.feed(os.read(self.master, 4096))

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    async def wait_answers(self, count: int) -> list[Message]:
        async with asyncio.timeout(5):
            while len(self.answers) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.answers

    def close(self) -> None:
        if self.master >= 0:
            asyncio.get_running_loop().remove_reader(self.master)
            os.close(self.master)
            self.master = -1
        if self.slave >= 0:
            os.close(self.slave)
            self.slave = -1


@pytest.fixture
async def bus() -> AsyncIterator[NodeSide]:
    side = NodeSide()
    try:
        yield side
    finally:
        side.close()


@contextlib.asynccontextmanager
async def agent_links(folder: Path, device: Path) -> AsyncIterator[tuple[LinksPart, Path]]:
    """The outbox and links parts of an agent whose site has one serial link."""
    links = f'\n[[links]]\nid = "bus"\nserial = "{device}"\nnodes = [1, 2, 11]\n'
    streets = '\n[[streets]]\nname = "storgata"\nlamps = [1, 2]\nbays = [11]\n'
    site = S.load(write_site(folder, extra=links + streets))
    site.outbox.dir.mkdir()  # (the agent makes it: statedir)
    outbox = OutboxPart(site)
    await outbox.start()
    part = LinksPart(site, outbox)
    try:
        await part.start()
        try:
            yield part, outbox.outbox.path
        finally:
            await part.stop()
    finally:
        await outbox.stop()


def frames(*msgs: tuple[int, int, Message]) -> Iterator[bytes]:
    for src, seq, msg in msgs:
        yield encode_frame(msg, dst=F.EDGE, src=src, seq=seq, flags=F.FLAG_ACK_REQUESTED)


async def test_frames_split_anywhere_with_noise_between_are_stored_and_acked(
    tmp_path: Path, bus: NodeSide
) -> None:
    async with agent_links(tmp_path, bus.path) as (part, path):
        await wait_open(part)
        wire = b"".join(
            frames(
                (11, 5, parking.Occupancy(state=1, event_seq=1)),
                (1, 9, lamp.FailureReport(faults=lamp.FAULT_LAMP_SHORT, level=40)),
            )
        )
        stream = b"\x13\x37noise\x00" + wire[:7]
        for i in range(len(stream)):  # byte by byte
            bus.write(stream[i : i + 1])
        bus.write(wire[7:])
        answers = await bus.wait_answers(2)
        assert [(type(a).__name__, a.fields()) for a in answers] == [
            ("Ack", {"acked_seq": 5}),
            ("Ack", {"acked_seq": 9}),
        ]
        health = part.health()
        assert health["ok"] is True
        assert health["links"]["bus"]["nodes_heard"] == 2
        metrics = {m.name: m.samples for m in part.metrics()}
        assert metrics["link_bad_packets_total"] == {
            (("link", "bus"), ("reason", "bad_encoding")): 1
        }
        streams = {stream for _, stream, _, _ in stored_rows(path)}
        assert streams == {"bay-11/occupancy", "lamp-1/faults", "lamp-1/driver-temp"}


async def test_a_device_that_goes_away_is_reported_and_the_part_stays_up(
    tmp_path: Path, bus: NodeSide
) -> None:
    async with agent_links(tmp_path, bus.path) as (part, _):
        await wait_open(part)
        running = asyncio.create_task(part.run())
        bus.write(next(frames((2, 1, runtime.Status(uptime_s=5)))))
        assert len(await bus.wait_answers(1)) == 1
        bus.close()  # the adapter is unplugged
        async with asyncio.timeout(5):
            while part.health()["links"]["bus"]["open"]:  # noqa: ASYNC110 - no event
                await asyncio.sleep(0.01)
        assert part.health()["ok"] is False
        assert not running.done()  # the links part did not crash: it tries again
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def wait_open(part: LinksPart) -> None:
    async with asyncio.timeout(5):
        while not all(link["open"] for link in part.health()["links"].values()):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
