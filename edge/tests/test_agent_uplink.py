"""`kommune edge run` against a real Mosquitto: what its outbox holds reaches a backend,
also what was queued before it started, and a SIGTERM in the middle loses nothing."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from agent_support import MINIMAL_SITE, AgentProcess, http_get

from hil_tests.testing.mosquitto import Mosquitto
from hil_tests.testing.mqtt_backend import Backend
from hil_tests.testing.waiting import wait_until
from kommune.edge.agent.outbox_part import DATABASE_NAME
from kommune.edge.northbound import Event, Priority
from kommune.edge.outbox.outbox import Outbox

AGENT = "test-agent"


def _site(folder: Path, broker_port: int) -> Path:
    path = folder / "site.toml"
    text = MINIMAL_SITE.replace("tls = false", f"tls = false\nport = {broker_port}")
    path.write_text(text + '\n[outbox]\ndir = "state"\n\n[health]\nbind = "127.0.0.1:0"\n')
    return path


def _events(stream: str, priority: Priority, count: int, first: int = 1) -> list[Event]:
    return [
        Event(stream, priority, seq, 1_790_000_000_000 + seq * 250, "state", seq % 2)
        for seq in range(first, first + count)
    ]


async def _queue(folder: Path, events: list[Event]) -> None:
    """Commit events to the agent's outbox file, as its producers would have."""
    (folder / "state").mkdir(exist_ok=True)
    outbox = await Outbox.open(
        folder / "state" / DATABASE_NAME, agent=AGENT, budget_bytes=64 * 1024 * 1024
    )
    try:
        await outbox.append(events)
    finally:
        await outbox.aclose()


async def test_a_backlog_reaches_the_backend_once_the_agent_runs(
    tmp_path: Path, mosquitto: Mosquitto, agents: list[AgentProcess]
) -> None:
    audit = _events("lock-3/audit", Priority.AUDIT, 40)
    bays = _events("bay-17/occupancy", Priority.OCCUPANCY, 300)
    await _queue(tmp_path, audit + bays)
    async with Backend("127.0.0.1", mosquitto.port) as backend:
        agent = AgentProcess(_site(tmp_path, mosquitto.port))
        agents.append(agent)
        port, _ = await asyncio.to_thread(agent.wait_healthy)
        want = {(AGENT, e.stream, e.source_seq) for e in audit + bays}
        async with asyncio.timeout(30):
            await backend.wait_for_keys(want)
        # Per stream in order, and each record as it was committed.
        firsts = backend.first_arrivals()
        assert firsts["lock-3/audit"] == list(range(1, 41))
        assert firsts["bay-17/occupancy"] == list(range(1, 301))
        record = backend.unique()[(AGENT, "bay-17/occupancy", 17)]
        assert (record.time_ms, record.value) == (1_790_000_000_000 + 17 * 250, 1)

        def drained() -> bool:
            parts = http_get(port, "/healthz").json()["parts"]
            return sum(parts["outbox"]["queued"].values()) == 0 and parts["uplink"]["connected"]

        await asyncio.to_thread(
            wait_until, drained, 30.0, what="the outbox drained", interval_s=0.05
        )
        agent.signal(signal.SIGTERM)
        assert await asyncio.to_thread(agent.wait) == 0


async def test_a_broker_outage_while_the_agent_runs_loses_nothing(
    tmp_path: Path, mosquitto: Mosquitto, agents: list[AgentProcess]
) -> None:
    first = _events("lamp-4/energy", Priority.TELEMETRY, 200)
    await _queue(tmp_path, first)
    async with Backend("127.0.0.1", mosquitto.port) as backend:
        agent = AgentProcess(_site(tmp_path, mosquitto.port))
        agents.append(agent)
        await asyncio.to_thread(agent.wait_healthy)
        async with asyncio.timeout(30):
            await backend.wait_for_keys({(AGENT, e.stream, e.source_seq) for e in first})
        # The broker goes away, the agent stops (SIGTERM: it drains what it can), more
        # events are queued meanwhile, and everything arrives once both are back.
        mosquitto.stop()
        agent.signal(signal.SIGTERM)
        assert await asyncio.to_thread(agent.wait) == 0
        later = _events("lamp-4/energy", Priority.TELEMETRY, 100, first=201)
        await _queue(tmp_path, later)
        mosquitto.start()
        agent = AgentProcess(_site(tmp_path, mosquitto.port))
        agents.append(agent)
        await asyncio.to_thread(agent.wait_healthy)
        want = {(AGENT, e.stream, e.source_seq) for e in first + later}
        async with asyncio.timeout(30):
            await backend.wait_for_keys(want)
        assert backend.first_arrivals()["lamp-4/energy"] == list(range(1, 301))
        agent.signal(signal.SIGTERM)
        assert await asyncio.to_thread(agent.wait) == 0
