"""The lamp control loop as a part of the agent, with its links part on a real UDP link to
simulated lamps and a real outbox: a lamp that boots is told its groups and its level, a
presence report lights the lamp and the one ahead at once, they are held and then faded
back to idle, and all of it is reported to the outbox and in /healthz and /metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from agent_support import write_site
from node_sim import DROP, HOST, SimNode, free_udp_port
from outbox_producer import stored_rows

from kommune.edge.agent import site as S
from kommune.edge.agent.outbox_part import OutboxPart
from kommune.edge.lighting.control import level_of_percent
from kommune.edge.lighting.part import LightingPart
from kommune.edge.links.part import LinksPart
from kommune.protocols import lamp, runtime
from kommune.protocols.message import Message

IDLE = level_of_percent(20)
HOLD_S = 0.3


@contextlib.asynccontextmanager
async def agent_parts(folder: Path) -> AsyncIterator[tuple[LightingPart, LinksPart, int, Path]]:
    """Outbox, links and lighting parts of an agent with four lamps on a UDP link."""
    port = free_udp_port()
    extra = (
        f'\n[[links]]\nid = "lan"\nudp = "{HOST}:{port}"\nnodes = [1, 2, 3, 4]\n'
        '\n[[streets]]\nname = "storgata"\nlamps = [1, 2, 3, 4]\n'
        f"ahead = 1\nbehind = 0\nhold_s = {HOLD_S}\nfade_s = 0.5\n"
        "[[streets.groups]]\nid = 7\nlamps = [3, 4]\n"
    )
    site = S.load(write_site(folder, extra=extra))
    site.outbox.dir.mkdir()
    outbox = OutboxPart(site)
    await outbox.start()
    links = LinksPart(site, outbox)
    lighting = LightingPart(site, links, outbox, deadline_s=0.5)
    try:
        await links.start()
        await lighting.start()
        running = asyncio.create_task(lighting.run())
        try:
            yield lighting, links, port, outbox.outbox.path
        finally:
            await lighting.stop()
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
            await links.stop()
    finally:
        await outbox.stop()


async def next_commands(*nodes: SimNode) -> list[Message]:
    """The next frame from the edge each of `nodes` gets (counted from now)."""
    counts = [len(node.copies) for node in nodes]
    for node, count in zip(nodes, counts, strict=True):
        await node.wait_copies(count + 1)
    return [node.copies[count][2] for node, count in zip(nodes, counts, strict=True)]


async def test_presence_lights_the_lamp_and_the_one_ahead_then_they_fade_to_idle(
    tmp_path: Path,
) -> None:
    async with agent_parts(tmp_path) as (lighting, links, port, path):
        nodes = [SimNode(n, (HOST, port)) for n in (1, 2, 3, 4)]
        async with contextlib.AsyncExitStack() as stack:
            for node in nodes:
                await stack.enter_async_context(node)
            # At the start no lamp was heard over UDP: the idle commands found nobody.
            assert lighting.commands[("unicast", "unreachable")] == 2
            assert lighting.commands[("group", "unreachable")] == 1
            # Each lamp says Hello: it is told its groups (3 and 4) and its level.
            for node in nodes:
                assert await node.send(runtime.Hello(kind=runtime.KIND_LAMP, boot_count=1)) is None
            for node in nodes:
                want = 2 if node.node in (3, 4) else 1
                await node.wait_copies(want)
            assert [m.fields() for _, _, m in nodes[2].copies] == [
                {"groups": [7]},
                {"level": IDLE, "fade_ms": 0},
            ]
            assert [m.fields() for _, _, m in nodes[0].copies] == [{"level": IDLE, "fade_ms": 0}]

            # Someone at lamp 2: it and lamp 3 (ahead) on at once; 1 and 4 stay.
            seen = {n.node: len(n.copies) for n in nodes}
            commands = asyncio.create_task(next_commands(nodes[1], nodes[2]))
            assert await nodes[1].send(lamp.Presence(present=1)) is None
            on = await commands
            assert [m.fields() for m in on] == [{"level": 254, "fade_ms": 0}] * 2
            # The area clears: held HOLD_S, then both fade back to idle over fade_s.
            loop = asyncio.get_running_loop()
            cleared = loop.time()
            commands = asyncio.create_task(next_commands(nodes[1], nodes[2], nodes[3]))
            assert await nodes[1].send(lamp.Presence(present=0)) is None
            back = await commands
            held = loop.time() - cleared
            # Lamp 2 by itself; lamp 3 with lamp 4 by one group-7 frame (4 was idle already).
            assert [m.fields() for m in back] == [{"level": IDLE, "fade_ms": 500}] * 3
            assert nodes[3].copies[seen[4]][1] == 0, "a group frame asks for no ack"
            assert HOLD_S <= held < HOLD_S + 0.5, held
            assert len(nodes[0].copies) == seen[1]

            # A lamp that does not answer: the command fails, and says so.
            nodes[3].decide = lambda _f, _m: DROP
            nodes[3].groups = set()
            assert await nodes[3].send(lamp.Presence(present=1)) is None
            await nodes[3].wait_copies(1)
            task = lighting.under_way(4)
            assert task is not None
            assert (await task).result == "timeout"
            assert lighting.commands[("unicast", "timeout")] == 1
            health = links.health()["links"]["lan"]["per_node"]
            assert health["4"]["failures"] >= 1
            # (lamp 2's one failure: unreachable at the start, before its Hello)
            assert health["2"]["failures"] == 1 and health["2"]["heard_s_ago"] is not None
        metrics = {m.name: m.samples for m in links.metrics() + lighting.metrics()}
        assert metrics["link_commands_total"][(("link", "lan"), ("result", "acked"))] >= 8
        assert metrics["lighting_presence_total"][(("change", "present"),)] == 2
        assert lighting.health()["decision_ms_max"] < 1.0
    streams = {stream for _, stream, _, _ in stored_rows(path)}
    assert {
        "lamp-2/presence",
        "lamp-2/command",
        "lamp-3/command",
        "group-7/command",
        "lamp-4/command-failed",
    } <= streams
    assert [s for _, s, _, _ in stored_rows(path)].count("lamp-2/presence") == 2
