"""The MQTT 5 uplink against a real Mosquitto: every row reaches a subscribed backend with
its idempotency key; a row is acknowledged to the outbox only after the PUBACK of the
publish that carried it, and released when the connection ends before that PUBACK."""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hil_tests.testing.fake_outbox import FakeOutbox
from hil_tests.testing.mosquitto import Mosquitto, free_port, running_mosquitto
from hil_tests.testing.mqtt_backend import Backend
from hil_tests.testing.tcp_proxy import TcpProxy
from kommune.edge.northbound import Priority, Queued
from kommune.edge.uplink import (
    BackoffPolicy,
    BatchPolicy,
    Uplink,
    UplinkConfig,
    UplinkState,
    UplinkStopped,
)
from kommune.edge.uplink import mqtt as uplink_mqtt
from kommune.edge.uplink.batcher import DEFAULT_POLICIES

# Every wait in these tests is for something that must happen; the deadline only turns
# a hang into a failure.
DEADLINE_S = 20.0
AGENT = "edge-1"


def uplink_config(host: str, port: int, **changes: object) -> UplinkConfig:
    fields: dict[str, object] = {
        "host": host,
        "port": port,
        "site": "oslo",
        "agent": AGENT,
        "backoff": BackoffPolicy(initial_s=0.02, max_s=0.2),
        "drain_s": 2.0,
        "connect_timeout_s": 5.0,
    }
    fields.update(changes)
    return UplinkConfig(**fields)  # type: ignore[arg-type]


def with_policies(**by_class: BatchPolicy) -> dict[Priority, BatchPolicy]:
    policies = dict(DEFAULT_POLICIES)
    policies.update({Priority[k.upper()]: v for k, v in by_class.items()})
    return policies


def keys(rows: list[Queued]) -> set[tuple[str, str, int]]:
    return {(AGENT, r.event.stream, r.seq) for r in rows}


def ids(rows: list[Queued]) -> set[int]:
    return {r.row_id for r in rows}


async def until(uplink: Uplink, predicate: object) -> UplinkState:
    async with asyncio.timeout(DEADLINE_S):
        return await uplink.wait_state(predicate)  # type: ignore[arg-type]


async def settled(outbox: FakeOutbox) -> None:
    """After the uplink stopped: it holds nothing and broke no rule of the contract."""
    assert outbox.violations == []
    assert outbox.handed_out == set(), "rows neither acknowledged nor released"


@pytest.fixture
async def backend(mosquitto: Mosquitto) -> AsyncIterator[Backend]:
    async with asyncio.timeout(DEADLINE_S), Backend(mosquitto.host, mosquitto.port) as b:
        yield b


@pytest.fixture
def outbox() -> Iterator[FakeOutbox]:
    yield FakeOutbox()


# -- delivery -----------------------------------------------------------------------------


async def test_every_row_reaches_the_backend_with_its_key(
    mosquitto: Mosquitto, backend: Backend, outbox: FakeOutbox
) -> None:
    sent = [outbox.add("lock-3/audit", Priority.AUDIT, "entry", b"\x01\x02opened")]
    for i in range(300):
        sent.append(
            outbox.add(f"bay-{i % 7}/occupancy", Priority.OCCUPANCY, "occupied", i % 2 == 0)
        )
    for i in range(200):
        sent.append(
            outbox.add(f"lamp-{i % 4}/energy", Priority.TELEMETRY, "energy_wh", i * 0.5, "Wh")
        )
    sent.append(outbox.add("lamp-1/state", Priority.TELEMETRY, "mode", "dimmed"))
    # Telemetry would wait up to 30 s for more rows; here a moment is enough.
    policies = with_policies(telemetry=BatchPolicy(max_events=500, max_age_s=0.2))
    config = uplink_config(mosquitto.host, mosquitto.port, policies=policies)
    async with Uplink(config, outbox) as uplink, asyncio.timeout(DEADLINE_S):
        await outbox.wait_empty()
        await backend.wait_for_keys(keys(sent))
        state = uplink.state
    await settled(outbox)
    assert state.acked_rows == len(sent) and state.released_rows == 0
    assert state.connected and state.reconnects == 0 and state.last_error is None
    unique = backend.unique()
    assert set(unique) == keys(sent)
    for q in sent:
        rec = unique[(AGENT, q.event.stream, q.seq)]
        assert (rec.time_ms, rec.name, rec.value, rec.unit) == (
            q.event.time_ms,
            q.event.name,
            q.event.value,
            q.event.unit,
        )
    topics = {m.topic for m in backend.messages}
    assert topics == {f"kommune/oslo/{AGENT}/{c}" for c in ("audit", "occupancy", "telemetry")}
    for m in backend.messages:
        assert {outbox_priority(sent, r.stream) for r in m.records} == {m.topic.rsplit("/", 1)[1]}
    # 502 rows in a handful of publishes, not 502.
    assert state.publishes <= 6


def outbox_priority(sent: list[Queued], stream: str) -> str:
    return next(q.event.priority.name.lower() for q in sent if q.event.stream == stream)


async def test_a_batch_closes_at_its_count_and_not_before_its_age(
    mosquitto: Mosquitto, backend: Backend, outbox: FakeOutbox
) -> None:
    policies = with_policies(
        occupancy=BatchPolicy(max_events=3, max_age_s=3600),
        telemetry=BatchPolicy(max_events=100, max_age_s=0.3),
    )
    config = uplink_config(mosquitto.host, mosquitto.port, policies=policies)
    async with Uplink(config, outbox), asyncio.timeout(DEADLINE_S):
        by_count = [
            outbox.add("bay-1/occupancy", Priority.OCCUPANCY, "occupied", v) for v in (True, False)
        ]
        by_count.append(outbox.add("bay-1/occupancy", Priority.OCCUPANCY, "occupied", True))
        await backend.wait_for_keys(keys(by_count))
        by_age = outbox.add("lamp-1/energy", Priority.TELEMETRY, "energy_wh", 7, "Wh")
        await backend.wait_for_keys(keys([by_age]))
        await outbox.wait_empty()
    await settled(outbox)
    occupancy = [m for m in backend.messages if m.topic.endswith("/occupancy")]
    assert [len(m.records) for m in occupancy] == [3]  # one publish, closed by its count
    [telemetry] = [m for m in backend.messages if m.topic.endswith("/telemetry")]
    # Closed by age: not before 0.3 s after the event (1 ms for clock rounding).
    assert telemetry.received_at - by_age.event.time_ms / 1000 >= 0.299


# -- acknowledged only after PUBACK ----------------------------------------------------------


async def test_rows_are_acknowledged_only_after_their_puback(
    mosquitto: Mosquitto, backend: Backend, outbox: FakeOutbox
) -> None:
    """The broker has the publish (the backend got it) but its PUBACK is held back on
    the way: the rows are not acknowledged. The connection breaks: they are released,
    go again after the reconnect, and only that PUBACK acknowledges them."""
    async with TcpProxy(mosquitto.host, mosquitto.port) as proxy:
        config = uplink_config(proxy.host, proxy.port)
        async with Uplink(config, outbox) as uplink, asyncio.timeout(DEADLINE_S):
            await uplink.wait_state(lambda s: s.connected)
            proxy.hold()
            rows = [outbox.add("lock-3/audit", Priority.AUDIT, "entry", f"e{i}") for i in range(5)]
            await backend.wait_for_keys(keys(rows))  # the broker has them
            state = await uplink.wait_state(lambda s: s.in_flight == 1)
            assert outbox.acked_row_ids() == set() and state.acked_publishes == 0

            await proxy.cut()
            await outbox.wait_for(lambda o: ids(rows) <= o.released_row_ids())
            assert outbox.acked_row_ids() == set()  # released, never acknowledged
            proxy.unhold()
            await outbox.wait_empty()
            await backend.wait_until(lambda b: all(b.keys()[k] == 2 for k in keys(rows)))
            state = uplink.state
    await settled(outbox)
    [release] = outbox.ops("release")
    [ack] = outbox.ops("acknowledge")
    assert set(release.row_ids) == set(ack.row_ids) == ids(rows)
    assert release.at < ack.at
    assert state.reconnects == 1 and state.acked_rows == 5 and state.released_rows == 5
    assert "lost" in (state.last_error or "")
    # Duplicates at the backend, dropped by key: each event exactly once, in order.
    assert backend.duplicates() == keys(rows)
    assert set(backend.unique()) == keys(rows)
    assert backend.first_arrivals() == {"lock-3/audit": [1, 2, 3, 4, 5]}


async def test_a_broker_that_hangs_then_dies_before_puback_gets_nothing_acknowledged(
    mosquitto: Mosquitto, outbox: FakeOutbox
) -> None:
    config = uplink_config(mosquitto.host, mosquitto.port)
    async with Uplink(config, outbox) as uplink, asyncio.timeout(DEADLINE_S):
        await uplink.wait_state(lambda s: s.connected)
        mosquitto.pause()  # SIGSTOP: the kernel takes our bytes, nobody answers
        row = outbox.add("lock-3/audit", Priority.AUDIT, "entry", "opened")
        await uplink.wait_state(lambda s: s.publishes == 1)
        mosquitto.kill()  # its socket goes away with a reset
        await outbox.wait_for(lambda o: row.row_id in o.released_row_ids())
        assert outbox.acked_row_ids() == set()
        mosquitto.start()
        await outbox.wait_empty()
        state = uplink.state
    await settled(outbox)
    assert state.publishes == 2 and state.acked_publishes == 1 and state.reconnects == 1


async def test_the_in_flight_window_bounds_publishes_waiting_for_puback(
    mosquitto: Mosquitto, backend: Backend, outbox: FakeOutbox
) -> None:
    policies = with_policies(audit=BatchPolicy(max_events=1, max_age_s=0))
    async with TcpProxy(mosquitto.host, mosquitto.port) as proxy:
        config = uplink_config(proxy.host, proxy.port, window=3, policies=policies)
        async with Uplink(config, outbox) as uplink, asyncio.timeout(DEADLINE_S):
            await uplink.wait_state(lambda s: s.connected)
            proxy.hold()
            rows = [outbox.add("lock-3/audit", Priority.AUDIT, "entry", i) for i in range(10)]
            await backend.wait_for_keys(keys(rows[:3]))
            state = await uplink.wait_state(lambda s: s.in_flight == 3)
            # Three publishes at once, each waiting for its PUBACK, and no fourth.
            assert state.publishes == 3 and outbox.acked_row_ids() == set()
            proxy.unhold()
            await outbox.wait_empty()
            state = uplink.state
    await settled(outbox)
    assert state.max_in_flight == 3 and state.publishes == 10
    assert backend.first_arrivals() == {"lock-3/audit": list(range(1, 11))}


async def test_audit_overtakes_telemetry_waiting_to_be_sent(
    mosquitto: Mosquitto, backend: Backend, outbox: FakeOutbox
) -> None:
    policies = with_policies(telemetry=BatchPolicy(max_events=10, max_age_s=0))
    async with TcpProxy(mosquitto.host, mosquitto.port) as proxy:
        config = uplink_config(proxy.host, proxy.port, window=1, policies=policies)
        async with Uplink(config, outbox) as uplink, asyncio.timeout(DEADLINE_S):
            await uplink.wait_state(lambda s: s.connected)
            proxy.hold()
            telemetry = [
                outbox.add("lamp-1/energy", Priority.TELEMETRY, "energy_wh", i) for i in range(30)
            ]
            await backend.wait_for_keys(keys(telemetry[:10]))  # the first batch, in flight
            audit = outbox.add("lock-3/audit", Priority.AUDIT, "entry", "opened")
            await outbox.wait_for(lambda o: audit.row_id in o.handed_out)  # batched
            proxy.unhold()
            await outbox.wait_empty()
    await settled(outbox)
    classes = [m.topic.rsplit("/", 1)[1] for m in backend.messages]
    assert classes == ["telemetry", "audit", "telemetry", "telemetry"]


# -- refusals and failures ------------------------------------------------------------------


async def test_a_publish_the_broker_refuses_is_not_acknowledged(
    tmp_path: Path, outbox: FakeOutbox
) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic read kommune/#\n")  # anonymous clients may not publish there
    with running_mosquitto(tmp_path / "broker", extra_config=f"acl_file {acl}") as broker:
        config = uplink_config(broker.host, broker.port)
        row = outbox.add("lock-3/audit", Priority.AUDIT, "entry", "opened")
        async with Uplink(config, outbox) as uplink, asyncio.timeout(DEADLINE_S):
            # PUBACK "not authorized" (Mosquitto 2.0.11 also drops the connection): the
            # row goes back to the outbox, again and again, and is never acknowledged.
            await outbox.wait_for(lambda o: len(o.ops("release")) >= 2)
            state = uplink.state
    await settled(outbox)
    assert outbox.acked_row_ids() == set() and state.acked_rows == 0
    assert row.row_id in outbox.available
    assert state.publishes >= 2 and state.acked_publishes == 0


async def test_no_subscriber_keeps_the_rows_when_the_uplink_requires_one(
    mosquitto: Mosquitto, outbox: FakeOutbox
) -> None:
    config = uplink_config(mosquitto.host, mosquitto.port, require_subscriber=True)
    row = outbox.add("lock-3/audit", Priority.AUDIT, "entry", "opened")
    async with Uplink(config, outbox) as uplink, asyncio.timeout(DEADLINE_S):
        await outbox.wait_for(lambda o: row.row_id in o.released_row_ids())
        assert outbox.acked_row_ids() == set()  # PUBACK 0x10: nobody got it
        assert "No matching subscribers" in (uplink.state.last_error or "")
        async with Backend(mosquitto.host, mosquitto.port) as backend:
            await outbox.wait_empty()
            await backend.wait_for_keys(keys([row]))
    await settled(outbox)


async def test_a_row_that_cannot_be_encoded_is_kept_aside_and_the_rest_flows(
    mosquitto: Mosquitto, backend: Backend, outbox: FakeOutbox
) -> None:
    good = outbox.add("bay-1/occupancy", Priority.OCCUPANCY, "occupied", True)
    bad = outbox.add("bay-1/occupancy", Priority.OCCUPANCY, "zwei wörter", True)
    after = outbox.add("bay-1/occupancy", Priority.OCCUPANCY, "occupied", False)
    config = uplink_config(mosquitto.host, mosquitto.port)
    async with Uplink(config, outbox) as uplink, asyncio.timeout(DEADLINE_S):
        await backend.wait_for_keys(keys([good, after]))
        await outbox.wait_for(lambda o: o.pending() == 1)
        state = uplink.state
        assert bad.row_id in outbox.handed_out  # held aside, not acknowledged, not retried
    await settled(outbox)
    assert state.unencodable_rows == 1 and "kept aside" in (state.last_error or "")
    assert outbox.acked_row_ids() == {good.row_id, after.row_id}
    assert bad.row_id in outbox.available  # released when the uplink stopped


class FailingOutbox(FakeOutbox):
    async def acknowledge(self, rows: object) -> None:
        raise RuntimeError("disk on fire")


async def test_an_outbox_failure_stops_the_uplink_and_comes_out_of_stop(
    mosquitto: Mosquitto,
) -> None:
    outbox = FailingOutbox()
    outbox.add("lock-3/audit", Priority.AUDIT, "entry", "opened")
    uplink = Uplink(uplink_config(mosquitto.host, mosquitto.port), outbox)
    with pytest.raises(RuntimeError, match="disk on fire"):
        async with uplink, asyncio.timeout(DEADLINE_S):
            await uplink.wait_state(lambda s: False)
    assert "disk on fire" in (uplink.state.last_error or "")
    with pytest.raises(RuntimeError, match="disk on fire"):
        await uplink.stop()


# -- connecting -----------------------------------------------------------------------------


async def test_reconnect_waits_are_jittered_exponential_and_bounded(
    monkeypatch: pytest.MonkeyPatch, outbox: FakeOutbox
) -> None:
    waits: list[float] = []
    real_pause = uplink_mqtt.Uplink._pause

    async def pause(self: Uplink, seconds: float) -> None:
        waits.append(seconds)
        await real_pause(self, seconds)

    monkeypatch.setattr(uplink_mqtt.Uplink, "_pause", pause)
    policy = BackoffPolicy(initial_s=0.005, max_s=0.04)
    config = uplink_config("127.0.0.1", free_port(), backoff=policy)  # nobody listens
    uplink = Uplink(config, outbox, rng=random.Random(7))
    async with uplink:
        state = await until(uplink, lambda s: s.connect_failures >= 8)
    assert not state.connected and state.connections == 0
    assert "Connection refused" in (state.last_error or "") and "\n" not in (state.last_error or "")
    for n, wait in enumerate(waits[:8]):
        ceiling = min(policy.max_s, policy.initial_s * 2**n)
        assert ceiling / 2 <= wait <= ceiling
    assert len(set(waits)) == len(waits)  # jittered


async def test_stop_publishes_what_it_holds_then_releases_nothing(
    mosquitto: Mosquitto, backend: Backend, outbox: FakeOutbox
) -> None:
    # Telemetry waits up to an hour for more rows; stop() sends the open batch anyway.
    policies = with_policies(telemetry=BatchPolicy(max_events=500, max_age_s=3600))
    config = uplink_config(mosquitto.host, mosquitto.port, policies=policies)
    async with Uplink(config, outbox) as uplink, asyncio.timeout(DEADLINE_S):
        rows = [outbox.add("lamp-1/energy", Priority.TELEMETRY, "energy_wh", i) for i in range(5)]
        await outbox.wait_for(lambda o: o.handed_out == ids(rows))
        assert uplink.state.publishes == 0
    await settled(outbox)
    assert outbox.acked_row_ids() == ids(rows) and outbox.ops("release") == []
    async with asyncio.timeout(DEADLINE_S):
        await backend.wait_for_keys(keys(rows))


async def test_stop_without_a_broker_releases_everything_at_once(outbox: FakeOutbox) -> None:
    rows = [outbox.add("lamp-1/energy", Priority.TELEMETRY, "energy_wh", i) for i in range(5)]
    config = uplink_config("127.0.0.1", free_port())
    started = time.monotonic()
    async with Uplink(config, outbox) as uplink:
        await until(uplink, lambda s: s.connect_failures >= 1)
    assert time.monotonic() - started < DEADLINE_S
    await settled(outbox)
    assert outbox.available == ids(rows) and outbox.acked_row_ids() == set()


async def test_wait_state_after_stop_raises_stopped(
    mosquitto: Mosquitto, outbox: FakeOutbox
) -> None:
    uplink = Uplink(uplink_config(mosquitto.host, mosquitto.port), outbox)
    async with uplink:
        await until(uplink, lambda s: s.connected)
    with pytest.raises(UplinkStopped):
        await uplink.wait_state(lambda s: s.publishes > 0)
    assert not uplink.state.connected


@pytest.fixture
def passwords(tmp_path: Path) -> Path:
    path = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), "edge-1", "right horse"], check=True)
    return path


async def test_username_and_password(tmp_path: Path, passwords: Path, outbox: FakeOutbox) -> None:
    extra = f"allow_anonymous false\npassword_file {passwords}"
    with running_mosquitto(tmp_path / "broker", extra_config=extra) as broker:
        row = outbox.add("lock-3/audit", Priority.AUDIT, "entry", "opened")
        wrong = uplink_config(broker.host, broker.port, username="edge-1", password="wrong")
        async with Uplink(wrong, outbox) as uplink:
            state = await until(uplink, lambda s: s.connect_failures >= 2)
        assert state.connections == 0
        assert "cannot connect" in (state.last_error or "")
        assert "not authorized" in (state.last_error or "").lower()  # what Mosquitto says
        right = uplink_config(broker.host, broker.port, username="edge-1", password="right horse")
        async with Uplink(right, outbox), asyncio.timeout(DEADLINE_S):
            await outbox.wait_empty()
    await settled(outbox)
    assert outbox.acked_row_ids() == {row.row_id}
