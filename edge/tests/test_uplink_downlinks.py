"""Downlinks on the uplink's connection, against a real Mosquitto: the uplink subscribes
to its agent's and its site's downlink topics, hands each message to its handler in
order, acknowledges a message only once its handler returned (a message whose handler
did not finish comes again on the next connection), and a handler that raises does not
stop the uplink."""

from __future__ import annotations

import asyncio

import pytest

from hil_tests.testing.fake_outbox import FakeOutbox
from hil_tests.testing.mosquitto import Mosquitto
from hil_tests.testing.mqtt_backend import Publisher
from hil_tests.testing.tcp_proxy import TcpProxy
from kommune.edge.northbound import Priority
from kommune.edge.uplink import BackoffPolicy, Uplink, UplinkConfig, UplinkState
from kommune.edge.uplink import session as uplink_session

NO_SUBSCRIBERS = 0x10

DEADLINE_S = 20.0


def config(host: str, port: int) -> UplinkConfig:
    return UplinkConfig(
        host=host,
        port=port,
        site="oslo",
        agent="edge-1",
        backoff=BackoffPolicy(initial_s=0.02, max_s=0.2),
        drain_s=1.0,
        connect_timeout_s=5.0,
    )


class Handler:
    """Records what it gets; can be told to fail or to hang on a payload."""

    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.changed = asyncio.Event()
        self.fail_on: set[bytes] = set()
        self.hang_on: set[bytes] = set()
        self.release = asyncio.Event()

    async def __call__(self, topic: str, payload: bytes) -> None:
        self.got.append((topic, payload))
        self.changed.set()
        if payload in self.hang_on:
            self.hang_on.discard(payload)
            await self.release.wait()
        if payload in self.fail_on:
            raise RuntimeError("the handler broke")

    async def wait_count(self, n: int) -> None:
        while len(self.got) < n:
            self.changed.clear()
            await self.changed.wait()


async def until(uplink: Uplink, predicate: object) -> UplinkState:
    async with asyncio.timeout(DEADLINE_S):
        return await uplink.wait_state(predicate)  # type: ignore[arg-type]


async def test_downlinks_for_the_agent_and_its_site_reach_the_handler_in_order(
    mosquitto: Mosquitto, publisher: Publisher
) -> None:
    handler = Handler()
    outbox = FakeOutbox()
    async with Uplink(config(mosquitto.host, mosquitto.port), outbox, on_downlink=handler) as up:
        await until(up, lambda s: s.downlink_subscribed)
        assert await publisher.publish("kommune/oslo/edge-1/down/config", b"one") == 0
        assert await publisher.publish("kommune/oslo/all/down/deny-list", b"two") == 0
        # Not ours: another agent, another site, our uplink topics. Nobody subscribed.
        for topic in (
            "kommune/oslo/edge-2/down/config",
            "kommune/bergen/all/down/config",
            "kommune/oslo/edge-1/audit",
            "kommune/oslo/edge-1/down/config/x",
        ):
            assert await publisher.publish(topic, b"not ours") == NO_SUBSCRIBERS
        assert await publisher.publish("kommune/oslo/edge-1/down/firmware", b"three") == 0
        # The uplink still publishes on the same connection.
        rows = [outbox.add("lock-3/audit", Priority.AUDIT, "entry", "e1")]
        async with asyncio.timeout(DEADLINE_S):
            await handler.wait_count(3)
            await outbox.wait_empty()
        state = await until(up, lambda s: s.downlinks_received == 3)
    assert handler.got == [
        ("kommune/oslo/edge-1/down/config", b"one"),
        ("kommune/oslo/all/down/deny-list", b"two"),
        ("kommune/oslo/edge-1/down/firmware", b"three"),
    ]
    assert state.acked_rows == len(rows) and state.downlink_handler_errors == 0


async def test_without_a_handler_nothing_is_subscribed(
    mosquitto: Mosquitto, publisher: Publisher
) -> None:
    async with Uplink(config(mosquitto.host, mosquitto.port), FakeOutbox()) as up:
        await until(up, lambda s: s.connected)
        code = await publisher.publish("kommune/oslo/edge-1/down/config", b"x")
        state = up.state
    assert code == NO_SUBSCRIBERS
    assert not state.downlink_subscribed and state.downlinks_received == 0


async def test_a_handler_that_raises_is_counted_and_the_next_message_still_comes(
    mosquitto: Mosquitto, publisher: Publisher
) -> None:
    handler = Handler()
    handler.fail_on.add(b"bad")
    async with Uplink(
        config(mosquitto.host, mosquitto.port), FakeOutbox(), on_downlink=handler
    ) as up:
        await until(up, lambda s: s.downlink_subscribed)
        await publisher.publish("kommune/oslo/edge-1/down/config", b"bad")
        await publisher.publish("kommune/oslo/edge-1/down/config", b"good")
        async with asyncio.timeout(DEADLINE_S):
            await handler.wait_count(2)
        state = await until(up, lambda s: s.downlink_handler_errors == 1)
    assert [p for _, p in handler.got] == [b"bad", b"good"]
    assert state.connections == 1, "the failing handler must not end the connection"


async def test_a_message_is_acknowledged_only_once_its_handler_returned(
    mosquitto: Mosquitto, publisher: Publisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The connection drops while the handler is still at work: no PUBACK went out, so
    # the broker sends the message again on the next connection (our session persists).
    monkeypatch.setattr(uplink_session, "HANDLER_GRACE_S", 0.05)
    handler = Handler()
    handler.hang_on.add(b"slow")
    async with TcpProxy(mosquitto.host, mosquitto.port) as proxy:
        cfg = config(proxy.host, proxy.port)
        async with Uplink(cfg, FakeOutbox(), on_downlink=handler) as up:
            await until(up, lambda s: s.downlink_subscribed)
            await publisher.publish("kommune/oslo/edge-1/down/config", b"slow")
            async with asyncio.timeout(DEADLINE_S):
                await handler.wait_count(1)
            await proxy.cut()
            async with asyncio.timeout(DEADLINE_S):
                await handler.wait_count(2)  # the same message, again
            handler.release.set()
            state = await until(up, lambda s: s.connections >= 2)
            # Once handled and acknowledged, it does not come a third time: a later
            # message arrives next.
            await publisher.publish("kommune/oslo/edge-1/down/config", b"later")
            async with asyncio.timeout(DEADLINE_S):
                await handler.wait_count(3)
    assert [p for _, p in handler.got] == [b"slow", b"slow", b"later"]
    assert state.reconnects >= 1
