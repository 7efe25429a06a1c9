"""A node link over UDP, with real sockets and a real outbox file: a frame is acked only
once its events are committed, retransmissions are recognised (also across a restart and
told apart from a rebooted node's new frames), frames from nodes not on the link and
datagrams that are not frames are counted and dropped, and a full outbox answers busy."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from node_sim import HOST, SimNode
from outbox_producer import stored_rows

from kommune.edge.links.boots import BootCounts
from kommune.edge.links.handler import LinkHandler
from kommune.edge.links.readings import source_seq
from kommune.edge.links.udp import UdpTransport
from kommune.edge.northbound import Event, Priority
from kommune.edge.outbox import Outbox, OutboxFull
from kommune.protocols import frame as F
from kommune.protocols import lamp, parking, runtime
from kommune.protocols.message import decode_frame, encode_frame

BUDGET = 64 << 20
LAMPS = frozenset({1, 2})
BAYS = frozenset({11, 12})
NODES = LAMPS | BAYS | {21}


@asynccontextmanager
async def link(
    outbox: Outbox | Gate, state: Path, *, nodes: frozenset[int] = NODES, port: int = 0
) -> AsyncIterator[tuple[LinkHandler, int]]:
    """A UDP link for `nodes` on 127.0.0.1 appending to `outbox`; (handler, port)."""
    boots = BootCounts(state / "boots.json")
    boots.load()
    handler = LinkHandler("lan", nodes, outbox=outbox, boots=boots, lamps=LAMPS, bays=BAYS)
    transport = UdpTransport(handler, HOST, port)
    await transport.open()
    handler.start()
    try:
        yield handler, transport.port
    finally:
        handler.close()
        await handler.drain()
        transport.close()


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = await Outbox.open(tmp_path / "outbox.db", agent="edge-1", budget_bytes=BUDGET)
    try:
        yield box
    finally:
        await box.aclose()


def in_file(path: Path) -> list[tuple[str, int]]:
    """(stream, source_seq) of every row in the outbox file, by a fresh connection."""
    return [(stream, sseq) for _, stream, sseq, _ in stored_rows(path)]


class Gate:
    """The outbox behind a gate: `append` waits until the test opens it."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.reached = asyncio.Event()
        self.open = asyncio.Event()

    async def append(self, events: Sequence[Event]) -> list[int | None]:
        self.reached.set()
        await self.open.wait()
        return await self.outbox.append(events)


class CheckingNode(SimNode):
    """A node that looks into the outbox file the moment each Ack arrives."""

    def __init__(self, node: int, agent: tuple[str, int], path: Path) -> None:
        super().__init__(node, agent)
        self.path = path
        self.rows_at_ack: list[list[tuple[str, int]]] = []

    def datagram_received(self, data: bytes, addr: object) -> None:
        if isinstance(decode_frame(F.Frame.from_bytes(data)), runtime.Ack):
            self.rows_at_ack.append(in_file(self.path))
        super().datagram_received(data, addr)


async def test_a_frame_is_acked_only_after_its_event_is_committed(
    tmp_path: Path, outbox: Outbox
) -> None:
    gate = Gate(outbox)
    async with (
        link(gate, tmp_path) as (handler, port),
        CheckingNode(11, (HOST, port), outbox.path) as node,
    ):
        sending = asyncio.create_task(node.send(parking.Occupancy(state=1, event_seq=1)))
        await gate.reached.wait()
        # The link has the frame and is appending it: nothing answered, nothing stored.
        assert handler.acks_sent == 0
        assert in_file(outbox.path) == []
        gate.open.set()
        assert await sending is None
        # The ack found the row in the file already.
        assert node.rows_at_ack == [[("bay-11/occupancy", 0)]]
        for state in (0, 1, 2, 0):
            await node.send(parking.Occupancy(state=state, event_seq=9))
        assert len(node.rows_at_ack) == 5
        for i, rows in enumerate(node.rows_at_ack):
            assert ("bay-11/occupancy", i) in rows
    assert handler.results["stored"] == 5


async def test_retransmissions_are_acked_again_and_stored_once(
    tmp_path: Path, outbox: Outbox
) -> None:
    async with link(outbox, tmp_path) as (handler, port), SimNode(1, (HOST, port)) as node:
        report = lamp.EnergyReport(energy_wh=1200, power_w_x10=355, level=200, burn_hours=9)
        assert await node.send(report) is None
        again = encode_frame(
            report, dst=F.EDGE, src=1, seq=0, flags=F.FLAG_ACK_REQUESTED | F.FLAG_RETRY
        )
        # The ack was lost, the node sends the same frame again: acked again at once.
        node.send_raw(again)
        await wait_for(lambda: handler.acks_sent == 2)
        assert handler.results["duplicate"] == 1
    rows = in_file(outbox.path)
    assert sorted(rows) == [("lamp-1/burn-time", 0), ("lamp-1/energy", 0), ("lamp-1/power", 0)]
    # After a restart of the link (the agent's), the outbox itself recognises it.
    async with link(outbox, tmp_path) as (handler, port), SimNode(1, (HOST, port)) as node:
        node.next_seq = 0
        assert await node.send(report) is None
        assert handler.results["duplicate"] == 1
        assert handler.results["stored"] == 0
    assert sorted(in_file(outbox.path)) == sorted(rows)
    assert outbox.stats.duplicates == 3


async def test_a_rebooted_node_starting_its_seqs_again_is_not_a_retransmission(
    tmp_path: Path, outbox: Outbox
) -> None:
    occupied = parking.Occupancy(state=1, event_seq=1)
    async with link(outbox, tmp_path) as (_, port), SimNode(12, (HOST, port)) as node:
        await node.send(runtime.Hello(kind=runtime.KIND_PARKING, boot_count=4))
        await node.send(occupied)  # seq 1 of boot 4
    # It reboots: seq 0 again, the same content as before: a new event all the same.
    async with link(outbox, tmp_path) as (handler, port), SimNode(12, (HOST, port)) as node:
        await node.send(runtime.Hello(kind=runtime.KIND_PARKING, boot_count=5))
        await node.send(occupied)  # seq 1 of boot 5
        assert handler.results["stored"] == 2
    occupancy = [sseq for stream, sseq in in_file(outbox.path) if stream == "bay-12/occupancy"]
    assert occupancy == [source_seq(4, 1), source_seq(5, 1)]
    # The boot count is on disk: a restarted agent folds in the same one, so a
    # retransmission of boot 5's frame is still recognised.
    saved = json.loads((tmp_path / "boots.json").read_text())
    assert saved == {"boot_counts": {"12": 5}}
    async with link(outbox, tmp_path) as (handler, port), SimNode(12, (HOST, port)) as node:
        node.next_seq = 1
        await node.send(occupied)
        assert handler.results["duplicate"] == 1


async def test_unknown_nodes_and_frames_for_others_are_dropped_and_counted(
    tmp_path: Path, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "kommune.edge.links")
    async with link(outbox, tmp_path) as (handler, port), SimNode(1, (HOST, port)) as known:
        for seq in range(5):
            wire = encode_frame(parking.Occupancy(state=1), dst=F.EDGE, src=999, seq=seq, flags=1)
            known.send_raw(wire)
        known.send_raw(encode_frame(lamp.SetLevel(level=3), dst=2, src=1, seq=7))
        # The link is in order: a known node's frame after those is acked.
        assert await known.send(lamp.FailureReport(faults=lamp.FAULT_LAMP_OPEN)) is None
        assert handler.results["unknown_node"] == 5
        assert handler.results["not_for_edge"] == 1
        assert handler.acks_sent == 1 and not handler.nacks_sent
    warnings = [r.getMessage() for r in caplog.records if "999" in r.getMessage()]
    assert len(warnings) == 1  # once per node, not per frame
    assert {s for s, _ in in_file(outbox.path)} == {"lamp-1/faults", "lamp-1/driver-temp"}


async def test_garbage_is_counted_and_never_stops_the_link(tmp_path: Path, outbox: Outbox) -> None:
    good = encode_frame(parking.Occupancy(state=1), dst=F.EDGE, src=11, seq=1, flags=1)
    bad_crc = bytearray(good)
    bad_crc[12] ^= 0x40
    garbage = [
        b"\x00\x00\x00",  # (an empty datagram asyncio does not even send)
        b"\xff" * 40,
        bytes(range(256)) * 8,  # longer than any frame
        good[:-6] + b"\x00",  # cut short
        bytes(bad_crc),
        good + good,  # two frames in one datagram: not allowed on UDP
        b"\x03\x01\x01\x01\x01\x02\x12\x09\x07\x20\x03\xc8\x05\xdc\xfd\x74\x00",  # CRC off
    ]
    async with link(outbox, tmp_path) as (handler, port), SimNode(11, (HOST, port)) as node:
        for datagram in garbage:
            node.send_raw(datagram)
        assert await node.send(parking.Occupancy(state=2, event_seq=3)) is None
        await wait_for(lambda: sum(handler.bad_packets.values()) == len(garbage))
        assert set(handler.bad_packets) <= {"truncated", "too_long", "bad_encoding", "bad_crc"}
        # A leading 0x00 before a frame is allowed (it ends line noise on a serial line).
        node.send_raw(
            b"\x00" + encode_frame(parking.Occupancy(state=0), dst=0, src=11, seq=9, flags=1)
        )
        await wait_for(lambda: handler.acks_sent == 2)
    assert handler.results["stored"] == 2


async def test_bad_payloads_and_wrong_messages_get_a_nack_with_the_reason(
    tmp_path: Path, outbox: Outbox
) -> None:
    async with (
        link(outbox, tmp_path) as (handler, port),
        SimNode(11, (HOST, port)) as bay,
        SimNode(1, (HOST, port)) as lamp_node,
    ):
        short = F.Frame(parking.OCCUPANCY, b"\x01\x00", dst=F.EDGE, src=11, seq=0, flags=1)
        bay.send_raw(short.to_bytes())
        await wait_for(lambda: bay.answers == [(0, runtime.NACK_TRUNCATED)])
        bay.next_seq = 1
        # A lamp message from a parking sensor, an edge -> node message from a node.
        assert await bay.send(lamp.EnergyReport(), retry_busy=False) == runtime.NACK_NOT_SUPPORTED
        assert await lamp_node.send(lamp.SetLevel(level=5)) == runtime.NACK_NOT_SUPPORTED
        # A time request is answered with the edge's clock.
        before_s = int(time.time())
        assert await bay.send(runtime.TimeRequest(node_ms=777)) is None
        sync = [m for m in bay.received if isinstance(m, runtime.TimeSync)]
        assert len(sync) == 1 and sync[0].node_ms == 777
        assert before_s <= sync[0].unix_s <= time.time()
    assert in_file(outbox.path) == []
    assert handler.results["bad_payload"] == 1
    assert handler.results["not_supported"] == 2
    assert handler.results["local"] == 1


async def test_a_full_outbox_answers_busy_and_the_retry_gets_in(tmp_path: Path) -> None:
    path = tmp_path / "small.db"
    async with await Outbox.open(
        path, agent="edge-1", budget_bytes=1 << 20, max_txn_rows=100
    ) as outbox:
        audit = 1
        for size, per_append in ((200, 20), (0, 1)):  # lock audit fills it, to the last byte
            with pytest.raises(OutboxFull):  # (audit is never evicted)
                while True:
                    entries = [audit_entry(s, size) for s in range(audit, audit + per_append)]
                    await outbox.append(entries)
                    audit += per_append
        async with link(outbox, tmp_path) as (handler, port), SimNode(11, (HOST, port)) as node:
            code = await node.send(parking.Occupancy(state=1), retry_busy=False)
            assert code == runtime.NACK_BUSY
            assert handler.results["refused"] == 1
            assert "bay-11/occupancy" not in {s for s, _ in in_file(path)}
            # The uplink delivers some audit: room again, and the node's retry gets in.
            await outbox.acknowledge(await outbox.next_batch(Priority.AUDIT, 500))
            node.next_seq = 0
            assert await node.send(parking.Occupancy(state=1)) is None
            assert ("bay-11/occupancy", 0) in in_file(path)


async def test_many_nodes_at_once_are_committed_in_batches(tmp_path: Path, outbox: Outbox) -> None:
    """Throughput: 200 nodes, each one frame in flight at a time, as fast as acks come."""
    nodes = frozenset(range(100, 300))  # none of them a lamp
    frames_per_node = 50
    async with link(outbox, tmp_path, nodes=nodes) as (handler, port):
        sims = [SimNode(n, (HOST, port), timeout_s=1.0, max_timeout_s=1.0) for n in nodes]
        for sim in sims:
            await sim.__aenter__()
        try:

            async def run(sim: SimNode) -> None:
                for i in range(frames_per_node):
                    assert await sim.send(parking.Occupancy(state=i % 2, event_seq=i)) is None

            began = time.perf_counter()
            await asyncio.gather(*(run(sim) for sim in sims))
            took_s = time.perf_counter() - began
        finally:
            for sim in sims:
                await sim.__aexit__()
    total = len(nodes) * frames_per_node
    assert handler.results["stored"] == total
    assert len(in_file(outbox.path)) == total
    # Group commit: far fewer appends than frames.
    assert handler.appends < total / 10
    rate = total / took_s
    print(
        f"UDP link: {total} frames acked in {took_s:.2f} s = {rate:,.0f} frames/s, "
        f"{handler.appended_frames / handler.appends:.0f} frames per append"
    )
    assert rate > 1_000


# -- helpers ------------------------------------------------------------------------------


def audit_entry(seq: int, size: int) -> Event:
    return Event("lock-1/audit", Priority.AUDIT, seq, 1_790_000_000_000, "entry", "x" * size)


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Until `predicate()` holds, asking again every millisecond (the loop runs meanwhile)."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - the link's counters have no event to wait on
            await asyncio.sleep(0.001)


async def test_each_message_goes_north_as_the_docs_say(tmp_path: Path, outbox: Outbox) -> None:
    async with (
        link(outbox, tmp_path) as (_, port),
        SimNode(21, (HOST, port)) as node,
        SimNode(12, (HOST, port)) as bay,
    ):
        await node.send(runtime.Hello(kind=2, fw_major=1, fw_minor=3, reset_cause=3))
        await node.send(runtime.Status(uptime_s=60, heap_free=9000, supply_mv=3300, temp_c_x10=-52))
        await node.send(runtime.LogRecord(level=runtime.LOG_ERROR, text=b"r\xe6v \xff"))
        await node.send(lamp.Presence(present=1))  # for the control loop only
        await bay.send(parking.Heartbeat(battery_mv=2950, temp_c_x10=115))
    got = {
        row.event.stream: (row.event.name, row.event.value, row.event.unit)
        for row in await outbox.next_batch(Priority.TELEMETRY, 100)
    }
    assert got == {
        "node-21/boot": ("boot_count", 0, None),
        "node-21/reset-cause": ("reset_cause", 3, None),
        "node-21/firmware": ("version", "1.3.0", None),
        "node-21/uptime": ("uptime", 60, "s"),
        "node-21/heap-free": ("heap_free", 9000, "B"),
        "node-21/heap-min-free": ("heap_min_free", 0, "B"),
        "node-21/supply": ("supply", 3.3, "V"),
        "node-21/temp": ("temp", -5.2, "Cel"),
        "node-21/rx-bad": ("rx_bad", 0, None),
        "node-21/tx-retries": ("tx_retries", 0, None),
        "node-21/log": ("error", "r\ufffdv \ufffd", None),
        "bay-12/battery": ("battery", 2.95, "V"),
        "bay-12/temp": ("temp", 11.5, "Cel"),
    }
