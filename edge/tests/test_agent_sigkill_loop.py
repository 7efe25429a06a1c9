"""SIGKILL loses nothing acknowledged, end to end: eight simulated nodes keep sending over
a UDP node link, each one frame at a time and again until acked, while `kommune edge run`
is SIGKILLed and started again 20 times at varied moments (before it is up, the moment
its link listens, mid-burst). Then the nodes stop, the last agent drains, and a backend
subscribed to a real Mosquitto must have every acknowledged event at least once and,
after dropping duplicates by idempotency key, exactly once, in send order, with the
outbox's per-stream seqs 1..n and no gaps.

The lamps send EnergyReports with a counter that never repeats (energy_wh), so each
record names the very frame it came from: a frame stored twice would show as a value
twice, a lost one as a value missing. The parking sensors send Occupancy changes.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from pathlib import Path

from agent_support import MINIMAL_SITE, AgentProcess, http_get
from node_sim import HOST, SimNode, free_udp_port

from hil_tests.testing.mosquitto import Mosquitto
from hil_tests.testing.mqtt_backend import Backend
from hil_tests.testing.processes import running
from kommune.edge.uplink import Record
from kommune.protocols import lamp, parking, runtime
from kommune.protocols.message import Message

AGENT = "test-agent"
CYCLES = 20
LAMPS = (1, 2, 3, 4)
BAYS = (11, 12, 13, 14)
BOOT_COUNT = 7
SEED = 20261129


def _site(folder: Path, broker_port: int, link_port: int) -> Path:
    path = folder / "site.toml"
    text = MINIMAL_SITE.replace("tls = false", f"tls = false\nport = {broker_port}")
    nodes = ", ".join(str(n) for n in LAMPS + BAYS)
    path.write_text(
        text
        + '\n[outbox]\ndir = "state"\n\n[health]\nbind = "127.0.0.1:0"\n'
        + f'\n[[links]]\nid = "lan"\nudp = "{HOST}:{link_port}"\nnodes = [{nodes}]\n'
        + f'\n[[streets]]\nname = "storgata"\nlamps = {list(LAMPS)}\nbays = {list(BAYS)}\n'
        # The lamps' telemetry leaves within a second, not the default 30 s: the drain
        # at the end waits for it.
        + "\n[uplink.telemetry]\nbatch_age_s = 1\n"
    )
    return path


class Progress:
    """Acks received by all nodes together; a waiter for the next ones."""

    def __init__(self) -> None:
        self.acks = 0
        self._changed = asyncio.Event()

    def acked(self, _node: SimNode) -> None:
        self.acks += 1
        self._changed.set()

    async def wait_for(self, acks: int) -> None:
        while self.acks < acks:
            self._changed.clear()
            await self._changed.wait()


async def _produce(node: SimNode, stop: asyncio.Event, rng: random.Random) -> None:
    """What a node sends: its Hello, then readings until told to stop (the frame out at
    that moment is still sent until acked)."""
    kind = runtime.KIND_LAMP if node.node in LAMPS else runtime.KIND_PARKING
    assert await node.send(runtime.Hello(kind=kind, boot_count=BOOT_COUNT, fw_minor=3)) is None
    count = 0
    while not stop.is_set():
        count += 1
        msg: Message
        if node.node in LAMPS:
            msg = lamp.EnergyReport(
                energy_wh=node.node * 1_000_000 + count,
                power_w_x10=count % 1000,
                level=count % 255,
                burn_hours=count // 100,
            )
        else:
            msg = parking.Occupancy(state=rng.randrange(3), event_seq=count & 0xFFFF)
        assert await node.send(msg) is None


async def _progress(agent: AgentProcess, progress: Progress, acks: int) -> None:
    """Until the nodes got `acks` more acks (from this agent: it must be running)."""
    try:
        async with asyncio.timeout(30):
            await progress.wait_for(progress.acks + acks)
    except TimeoutError:
        state = "running" if agent.proc.poll() is None else f"exited {agent.proc.returncode}"
        raise AssertionError(
            f"no {acks} more acks in 30 s; the agent is {state}: {agent.lines[-10:]}"
        ) from None


def _expected(nodes: list[SimNode]) -> dict[str, list[object]]:
    """Per stream, the values of every acked frame, in the order sent (= acked)."""
    want: dict[str, list[object]] = {}
    for node in nodes:
        for _, msg in node.acked:
            if isinstance(msg, lamp.EnergyReport):
                want.setdefault(f"lamp-{node.node}/energy", []).append(msg.energy_wh)
            elif isinstance(msg, parking.Occupancy):
                want.setdefault(f"bay-{node.node}/occupancy", []).append(msg.state)
            else:
                assert isinstance(msg, runtime.Hello)
                want.setdefault(f"node-{node.node}/boot", []).append(msg.boot_count)
    return want


def _what_is_missing(
    backend: Backend, want: dict[str, list[object]], agent: AgentProcess, broker: Mosquitto
) -> str:
    """Why the backend is short: per stream what it lacks, the agent's view, the logs."""
    got = _by_stream(backend)
    short = {}
    for stream, values in want.items():
        values_got = [r.value for r in got.get(stream, [])]
        if len(values_got) < len(values):
            missing = [v for v in values if v not in values_got]
            short[stream] = (len(values_got), len(values), missing[:5])
    try:
        port = agent.port()
        health = http_get(port, "/healthz").json()
    except (AssertionError, OSError) as e:
        health = f"no /healthz: {e}"
    conflicts = _conflicting_copies(backend)
    task = backend._task
    backend_state = "running" if task is not None and not task.done() else f"ended: {task!r}"
    warnings = [line for line in agent.lines if '"level": "info"' not in line]
    return (
        f"the backend is short: {short}\nkeys whose copies differ: {conflicts[:5]}"
        f"\nhealth: {health}\nbackend: {backend_state}, "
        f"{backend.connections} connections, errors {backend.errors[:3]}"
        f"\nagent warnings: {warnings[-20:]}\nagent log: {agent.lines[-15:]}"
        f"\nbroker log: {broker.log_text()[-3000:]}"
    )


def _conflicting_copies(backend: Backend) -> list[tuple[object, ...]]:
    """Keys that arrived with different content: one (agent, stream, seq) given to two
    events, which a backend dropping duplicates by key would lose one of."""
    first: dict[tuple[str, str, int], Record] = {}
    conflicts: list[tuple[object, ...]] = []
    for r in backend.records:
        seen = first.setdefault((r.agent, r.stream, r.seq), r)
        if seen != r:
            conflicts.append((r.stream, r.seq, seen.value, r.value))
    return conflicts


def _by_stream(backend: Backend) -> dict[str, list[Record]]:
    """Per stream, each key's first record, in the order of the outbox's seqs."""
    out: dict[str, list[Record]] = {}
    for (_, stream, _), record in sorted(backend.unique().items()):
        out.setdefault(stream, []).append(record)
    return out


async def test_sigkill_in_a_loop_loses_no_acked_event_and_stores_none_twice(
    tmp_path: Path, mosquitto: Mosquitto, agents: list[AgentProcess]
) -> None:
    rng = random.Random(SEED)
    link_port = free_udp_port()
    site = _site(tmp_path, mosquitto.port, link_port)
    progress = Progress()
    stop = asyncio.Event()
    nodes = [
        SimNode(n, (HOST, link_port), timeout_s=0.02, max_timeout_s=0.2, on_acked=progress.acked)
        for n in LAMPS + BAYS
    ]
    began = time.monotonic()
    async with Backend("127.0.0.1", mosquitto.port) as backend:
        for node in nodes:
            await node.__aenter__()
        producers = [
            asyncio.create_task(_produce(node, stop, random.Random(SEED + node.node)))
            for node in nodes
        ]
        try:
            kills = []
            for cycle in range(CYCLES):
                agent = AgentProcess(site)
                agents.append(agent)
                when = cycle % 4
                if when == 0:
                    what = "at once"  # before it is even up
                elif when == 1:
                    what = "as its link listens"
                    await asyncio.to_thread(
                        agent.wait_record,
                        lambda r: r["part"] == "links" and "listening" in r["message"],
                    )
                else:
                    # Mid-burst: after some more acks (a few, or many), at a random moment.
                    more = rng.randint(1, 60) if when == 2 else rng.randint(200, 1500)
                    what = f"after {more} more acks"
                    await _progress(agent, progress, more)
                agent.proc.send_signal(signal.SIGKILL)
                code = await asyncio.to_thread(agent.wait)
                assert code == -signal.SIGKILL, f"cycle {cycle}: {agent.lines[-5:]}"
                assert not running(agent.pid)
                kills.append((what, progress.acks))
            cycles_done = time.monotonic()
            # The last agent stays: more traffic, then the nodes stop (each finishing the
            # frame it has out), and everything drains to the backend.
            agent = AgentProcess(site)
            agents.append(agent)
            await asyncio.to_thread(agent.wait_healthy)
            await _progress(agent, progress, 500)
            stop.set()
            await asyncio.gather(*producers)
        finally:
            stop.set()
            for task in producers:
                task.cancel()
            await asyncio.gather(*producers, return_exceptions=True)
            for node in nodes:
                await node.__aexit__()

        want = _expected(nodes)
        assert set(want) == {f"lamp-{n}/energy" for n in LAMPS} | {
            f"bay-{n}/occupancy" for n in BAYS
        } | {f"node-{n}/boot" for n in LAMPS + BAYS}

        seen: set[tuple[str, str, int]] = set()
        distinct: Counter[str] = Counter()
        looked_at = 0

        def complete(b: Backend) -> bool:
            # Called at every message: only looks at the records that are new since.
            nonlocal looked_at
            for r in b.records[looked_at:]:
                if (key := (r.agent, r.stream, r.seq)) not in seen:
                    seen.add(key)
                    distinct[r.stream] += 1
            looked_at = len(b.records)
            return all(distinct[stream] >= len(values) for stream, values in want.items())

        stopped = time.monotonic()
        try:
            async with asyncio.timeout(60):
                await backend.wait_until(complete)
        except TimeoutError:
            raise AssertionError(_what_is_missing(backend, want, agent, mosquitto)) from None
        drained = time.monotonic()
        # A key that came twice came as the same record (a publish sent again).
        assert _conflicting_copies(backend) == []
        got = _by_stream(backend)
        firsts = backend.first_arrivals()
        for stream, values in want.items():
            records = got[stream]
            # Exactly once after dropping duplicate keys: the values of the acked frames,
            # each once, in the order sent; nothing more.
            assert [r.value for r in records] == values, stream
            # The outbox's seqs: 1..n, arriving in order, no gaps.
            assert firsts[stream] == list(range(1, len(values) + 1)), stream
        # A lamp's other readings of the same frames came along (one stream each).
        assert [r.value for r in got["lamp-1/power"]] == [
            v % 1_000_000 % 1000 / 10 for v in want["lamp-1/energy"]
        ]
        assert backend.errors == []
        agent.signal(signal.SIGTERM)
        assert await asyncio.to_thread(agent.wait) == 0

    acked = sum(len(node.acked) for node in nodes)
    retries = sum(node.retries for node in nodes)
    print(
        f"\n{CYCLES} SIGKILLs in {cycles_done - began:.1f} s, the last agent ran "
        f"{stopped - cycles_done:.1f} s and drained in {drained - stopped:.1f} s: "
        f"{acked} frames acked "
        f"({retries} retransmissions), {sum(backend.keys().values())} records received, "
        f"{len(backend.duplicates())} keys more than once; kills: {kills}"
    )
