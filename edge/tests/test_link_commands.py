"""Commands from the edge to nodes over a real UDP node link: a unicast command is acked
(or nacked) by the node, retransmitted with FLAG_RETRY and the same seq while frames or
answers are lost, given up at its deadline; a group or broadcast frame reaches the
nodes that take it, unacked, a fixed number of times; the edge's seqs start at a random
value at every start; and the node's health shows what happened."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from agent_support import write_site
from node_sim import DROP, HOST, SimNode, free_udp_port

from kommune.edge.agent import site as S
from kommune.edge.agent.outbox_part import OutboxPart
from kommune.edge.links.boots import BootCounts
from kommune.edge.links.commands import GROUP_COPIES
from kommune.edge.links.handler import LinkHandler
from kommune.edge.links.part import LinksPart
from kommune.edge.links.udp import UdpTransport
from kommune.edge.outbox import Outbox
from kommune.protocols import frame as F
from kommune.protocols import lamp, runtime
from kommune.protocols.message import Message

LAMPS = frozenset({1, 2, 3})
ON = lamp.SetLevel(level=254, fade_ms=0)


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = await Outbox.open(tmp_path / "outbox.db", agent="edge-1", budget_bytes=64 << 20)
    try:
        yield box
    finally:
        await box.aclose()


@asynccontextmanager
async def link(outbox: Outbox, state: Path) -> AsyncIterator[tuple[LinkHandler, int]]:
    """A UDP link for lamps 1-3 on 127.0.0.1, with short command timeouts."""
    boots = BootCounts(state / "boots.json")
    handler = LinkHandler("lan", LAMPS, outbox=outbox, boots=boots, lamps=LAMPS)
    handler.commands.ack_timeout_s = 0.05
    handler.commands.max_backoff_s = 0.2
    handler.commands.deadline_s = 2.0
    transport = UdpTransport(handler, HOST, 0)
    await transport.open()
    handler.start()
    try:
        yield handler, transport.port
    finally:
        handler.close()
        await handler.drain()
        transport.close()


@asynccontextmanager
async def heard_nodes(port: int, *ids: int) -> AsyncIterator[list[SimNode]]:
    """Nodes that have said Hello, so the link knows their addresses."""
    nodes = [SimNode(n, (HOST, port)) for n in ids]
    for node in nodes:
        await node.__aenter__()
    try:
        for node in nodes:
            assert await node.send(runtime.Hello(kind=runtime.KIND_LAMP, boot_count=1)) is None
        yield nodes
    finally:
        for node in nodes:
            await node.__aexit__()


async def test_a_command_is_acked_by_the_node(tmp_path: Path, outbox: Outbox) -> None:
    async with link(outbox, tmp_path) as (handler, port), heard_nodes(port, 1) as [node]:
        outcome = await handler.commands.send(1, ON)
        assert outcome.result == "acked" and outcome.ok
        assert outcome.sends == 1 and outcome.round_trip_s is not None
        assert [m.to_bytes() for m in node.commands] == [ON.to_bytes()]
        [(seq, flags, _)] = node.copies
        assert seq == outcome.seq and flags == F.FLAG_ACK_REQUESTED
        health = handler.node_health[1]
        assert (health.commands, health.pending, health.failures) == (1, 0, 0)
        assert health.last_heard is not None
        assert handler.commands.results["acked"] == 1
        assert handler.results["answer"] == 1
        # Many in a row: each answered, round trips over real UDP on this machine.
        trips = []
        for level in range(100):
            done = await handler.commands.send(1, lamp.SetLevel(level=level))
            assert done.result == "acked"
            assert done.round_trip_s is not None
            trips.append(done.round_trip_s)
        trips.sort()
        print(
            f"\nUDP command round trip: p50 {trips[50] * 1e3:.2f} ms, p99 {trips[98] * 1e3:.2f} ms"
        )


async def test_a_nack_ends_the_command_with_its_code(tmp_path: Path, outbox: Outbox) -> None:
    async with link(outbox, tmp_path) as (handler, port), heard_nodes(port, 1) as [node]:
        node.decide = lambda _f, _m: runtime.NACK_NOT_SUPPORTED
        outcome = await handler.commands.send(1, ON)
        assert (outcome.result, outcome.code, outcome.sends) == (
            "nacked",
            runtime.NACK_NOT_SUPPORTED,
            1,
        )
        assert not outcome.ok
        assert handler.node_health[1].failures == 1


async def test_busy_is_tried_again_with_the_same_seq(tmp_path: Path, outbox: Outbox) -> None:
    async with link(outbox, tmp_path) as (handler, port), heard_nodes(port, 1) as [node]:
        busy = [True]

        def once_busy(_f: F.Frame, _m: Message) -> int | None:
            if busy[0]:
                busy[0] = False
                return runtime.NACK_BUSY
            return None

        node.decide = once_busy
        outcome = await handler.commands.send(1, ON)
        assert (outcome.result, outcome.sends) == ("acked", 2)
        assert [seq for seq, _, _ in node.copies] == [outcome.seq] * 2
        assert len(node.commands) == 1


async def test_lost_frames_are_retransmitted_with_the_same_seq(
    tmp_path: Path, outbox: Outbox
) -> None:
    async with link(outbox, tmp_path) as (handler, port), heard_nodes(port, 1) as [node]:
        node.decide = lambda _f, _m: DROP if len(node.copies) <= 2 else None
        outcome = await handler.commands.send(1, ON)
        assert (outcome.result, outcome.sends) == ("acked", 3)
        assert [(seq, flags) for seq, flags, _ in node.copies] == [
            (outcome.seq, F.FLAG_ACK_REQUESTED),
            (outcome.seq, F.FLAG_ACK_REQUESTED | F.FLAG_RETRY),
            (outcome.seq, F.FLAG_ACK_REQUESTED | F.FLAG_RETRY),
        ]
        assert len(node.commands) == 1
        assert handler.commands.retries == 2
        assert handler.node_health[1].retries == 2


class LosesFirstAnswer(SimNode):
    """A node whose first Ack is lost on the way back."""

    lost = 0

    def _reply(self, seq: int, code: int | None) -> None:
        if self.lost == 0 and self.copies and self.commands:
            self.lost += 1
            return
        super()._reply(seq, code)


async def test_a_lost_ack_gets_the_same_answer_without_acting_twice(
    tmp_path: Path, outbox: Outbox
) -> None:
    async with (
        link(outbox, tmp_path) as (handler, port),
        LosesFirstAnswer(2, (HOST, port)) as node,
    ):
        assert await node.send(runtime.Hello(kind=runtime.KIND_LAMP, boot_count=1)) is None
        outcome = await handler.commands.send(2, ON)
        assert (outcome.result, outcome.sends) == ("acked", 2)
        assert node.lost == 1
        assert len(node.commands) == 1, "the retransmission was not acted on again"
        assert len(node.copies) == 2


async def test_no_answer_until_the_deadline_is_a_timeout(tmp_path: Path, outbox: Outbox) -> None:
    async with link(outbox, tmp_path) as (handler, port), heard_nodes(port, 1) as [node]:
        node.decide = lambda _f, _m: DROP
        loop = asyncio.get_running_loop()
        began = loop.time()
        outcome = await handler.commands.send(1, ON, deadline_s=0.6)
        took = loop.time() - began
        assert outcome.result == "timeout" and not outcome.ok
        assert 0.6 <= took < 1.0
        # Back-off 0.05, 0.1, 0.2, 0.2 s: the first copy and four retransmissions.
        assert outcome.sends == len(node.copies) == 5
        assert {seq for seq, _, _ in node.copies} == {outcome.seq}
        health = handler.node_health[1]
        assert (health.failures, health.pending) == (1, 0)
        assert handler.commands.pending == 0
        assert handler.commands.results["timeout"] == 1


async def test_a_node_never_heard_over_udp_is_unreachable(tmp_path: Path, outbox: Outbox) -> None:
    async with link(outbox, tmp_path) as (handler, _port):
        outcome = await handler.commands.send(3, ON)
        assert (outcome.result, outcome.sends) == ("unreachable", 0)
        assert handler.node_health[3].failures == 1


async def test_group_and_broadcast_frames_are_repeated_and_not_acked(
    tmp_path: Path, outbox: Outbox
) -> None:
    async with link(outbox, tmp_path) as (handler, port), heard_nodes(port, 1, 2, 3) as nodes:
        nodes[0].groups = {5}
        nodes[1].groups = {5, 6}
        outcome = await handler.commands.send(F.group_address(5), ON)
        assert (outcome.result, outcome.sends) == ("sent", GROUP_COPIES)
        for node in nodes[:2]:
            await node.wait_copies(GROUP_COPIES)
            assert len(node.copies) == GROUP_COPIES
            assert [flags for _, flags, _ in node.copies] == [0] + [F.FLAG_RETRY] * (
                GROUP_COPIES - 1
            )
        assert nodes[2].copies == [], "not in the group: not taken"
        outcome = await handler.commands.send(F.BROADCAST, lamp.SetLevel(level=100))
        assert outcome.result == "sent"
        await nodes[0].wait_copies(2 * GROUP_COPIES)
        await nodes[1].wait_copies(2 * GROUP_COPIES)
        await nodes[2].wait_copies(GROUP_COPIES)
        assert [len(n.copies) for n in nodes] == [2 * GROUP_COPIES, 2 * GROUP_COPIES, GROUP_COPIES]
        assert handler.results["answer"] == 0, "nobody answers a group frame"


async def test_the_edge_seq_starts_at_a_random_value_at_every_start(
    tmp_path: Path, outbox: Outbox
) -> None:
    firsts = []
    for _ in range(6):
        async with link(outbox, tmp_path) as (handler, port), heard_nodes(port, 1):
            # The Hello's ack took one seq; each new frame takes the next.
            one = await handler.commands.send(1, ON)
            two = await handler.commands.send(1, ON)
            assert two.seq == (one.seq + 1) & 0xFFFF
            firsts.append(one.seq)
    assert len(set(firsts)) > 1, firsts
    assert firsts != [2] * 6


async def test_a_cancelled_command_stops_retransmitting(tmp_path: Path, outbox: Outbox) -> None:
    async with link(outbox, tmp_path) as (handler, port), heard_nodes(port, 1) as [node]:
        node.decide = lambda _f, _m: DROP
        task = handler.commands.send(1, ON)  # the first copy goes before send() returns
        task.cancel()  # before its task ever ran: nothing of it may stay pending
        with pytest.raises(asyncio.CancelledError):
            await task
        # A later command is answered, and no copy of the cancelled one came after it.
        node.decide = lambda _f, _m: None
        later = await handler.commands.send(1, ON)
        assert later.result == "acked"
        assert [seq for seq, _, _ in node.copies] == [(later.seq - 1) & 0xFFFF, later.seq]
        assert handler.commands.results["cancelled"] == 1
        assert handler.node_health[1].pending == 0


async def test_the_links_part_routes_a_command_to_the_link_of_its_node_or_group(
    tmp_path: Path,
) -> None:
    east, west = free_udp_port(), free_udp_port()
    extra = (
        f'\n[[links]]\nid = "east"\nudp = "{HOST}:{east}"\nnodes = [1, 2]\n'
        f'\n[[links]]\nid = "west"\nudp = "{HOST}:{west}"\nnodes = [3]\n'
        '\n[[streets]]\nname = "storgata"\nlamps = [1, 2, 3]\n'
        "[[streets.groups]]\nid = 5\nlamps = [1, 2]\n"
    )
    site = S.load(write_site(tmp_path, extra=extra))
    site.outbox.dir.mkdir()
    outbox = OutboxPart(site)
    await outbox.start()
    links = LinksPart(site, outbox)
    try:
        assert (await links.send(1, ON)).result == "unreachable", "not started yet"
        await links.start()
        with pytest.raises(ValueError, match="node 9 is on no link"):
            links.send(9, ON)
        async with heard_nodes(east, 1, 2) as (one, two), heard_nodes(west, 3) as [three]:
            one.groups = two.groups = three.groups = {5}
            assert (await links.send(3, ON)).result == "acked"
            assert len(three.copies) == 1
            # Group 5 is lamps 1 and 2: it goes on the east link only.
            assert (await links.send(F.group_address(5), ON)).result == "sent"
            await one.wait_copies(GROUP_COPIES)
            await two.wait_copies(GROUP_COPIES)
            # Broadcast: every link (west's node takes it; the group frame never came).
            assert (await links.send(F.BROADCAST, ON)).result == "sent"
            await three.wait_copies(1 + GROUP_COPIES)
            assert [flags for _, flags, _ in three.copies] == [
                F.FLAG_ACK_REQUESTED,
                0,
                F.FLAG_RETRY,
            ]
        metrics = {m.name: m.samples for m in links.metrics()}
        assert metrics["link_commands_total"][(("link", "west"), ("result", "acked"))] == 1
        assert metrics["link_commands_total"][(("link", "east"), ("result", "sent"))] == 2
        per_node = links.health()["links"]["west"]["per_node"]["3"]
        assert per_node["commands"] == 1 and per_node["round_trip_ms"] is not None
    finally:
        await links.stop()
        await outbox.stop()
