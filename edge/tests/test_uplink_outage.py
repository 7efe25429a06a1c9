"""The broker goes away for a while and comes back while producers keep committing rows:
everything arrives at the backend, at least once; exactly once after dropping
duplicates by idempotency key; and in sequence order within every stream."""

from __future__ import annotations

import asyncio
import itertools

from hil_tests.testing.fake_outbox import FakeOutbox
from hil_tests.testing.mosquitto import Mosquitto
from hil_tests.testing.mqtt_backend import Backend
from kommune.edge.northbound import Priority, Queued
from kommune.edge.uplink import BackoffPolicy, BatchPolicy, Uplink, UplinkConfig
from kommune.edge.uplink.batcher import DEFAULT_POLICIES

DEADLINE_S = 60.0
AGENT = "edge-1"
STREAMS = [
    ("lock-1/audit", Priority.AUDIT, "entry"),
    ("lock-2/audit", Priority.AUDIT, "entry"),
    ("bay-1/occupancy", Priority.OCCUPANCY, "occupied"),
    ("bay-2/occupancy", Priority.OCCUPANCY, "occupied"),
    ("bay-3/occupancy", Priority.OCCUPANCY, "occupied"),
    ("lamp-1/energy", Priority.TELEMETRY, "energy_wh"),
    ("lamp-2/energy", Priority.TELEMETRY, "energy_wh"),
]


async def test_broker_stopped_for_a_while_and_restarted_everything_arrives(
    mosquitto: Mosquitto,
) -> None:
    outbox = FakeOutbox()
    produced: list[Queued] = []
    producing = True

    async def produce() -> None:
        for i in itertools.count():
            if not producing:
                return
            stream, priority, name = STREAMS[i % len(STREAMS)]
            value: int | bool | str = i if priority is Priority.TELEMETRY else i % 2 == 0
            if priority is Priority.AUDIT:
                value = f"door {i}"
            produced.append(outbox.add(stream, priority, name, value))
            await asyncio.sleep(0.001)  # a producer's pace, not a wait for anything

    policies = dict(DEFAULT_POLICIES)
    policies[Priority.OCCUPANCY] = BatchPolicy(max_events=50, max_age_s=0.05)
    policies[Priority.TELEMETRY] = BatchPolicy(max_events=50, max_age_s=0.2)
    config = UplinkConfig(
        host=mosquitto.host,
        port=mosquitto.port,
        site="oslo",
        agent=AGENT,
        backoff=BackoffPolicy(initial_s=0.02, max_s=0.2),
        policies=policies,
    )
    async with (
        asyncio.timeout(DEADLINE_S),
        Backend(mosquitto.host, mosquitto.port) as backend,
        Uplink(config, outbox) as uplink,
    ):
        producer = asyncio.create_task(produce())
        await outbox.wait_for(lambda o: len(o.acknowledged) >= 200)

        mosquitto.stop()  # SIGTERM: it saves what it holds (the backend's queue) and exits
        # Down "for a while": until the uplink has failed to reconnect five times, with
        # the producers committing all along.
        await uplink.wait_state(lambda s: s.connect_failures >= 5)
        before_restart = len(produced)
        mosquitto.start()

        # Everything from before and during the outage goes out, and rows keep flowing.
        await outbox.wait_for(
            lambda o: {r.row_id for r in produced[:before_restart]} <= o.acked_row_ids()
        )
        await outbox.wait_for(lambda o: len(o.acknowledged) >= before_restart + 200)
        producing = False
        await producer
        await outbox.wait_empty()
        expected = {(AGENT, q.event.stream, q.seq) for q in produced}
        await backend.wait_for_keys(expected)
        state = uplink.state

    assert outbox.violations == [] and outbox.handed_out == set()
    assert state.reconnects >= 1 and state.connect_failures >= 5
    assert backend.errors == []
    # At least once, and exactly once after dropping duplicates: nothing extra.
    unique = backend.unique()
    assert set(unique) == expected
    for q in produced:
        rec = unique[(AGENT, q.event.stream, q.seq)]
        assert (rec.time_ms, rec.name, rec.value) == (q.event.time_ms, q.event.name, q.event.value)
    # In per-stream order: first copies arrive 1, 2, 3, ... in every stream.
    arrivals = backend.first_arrivals()
    assert set(arrivals) == {s for s, _, _ in STREAMS}
    for stream, seqs in arrivals.items():
        assert seqs == list(range(1, len(seqs) + 1)), stream
