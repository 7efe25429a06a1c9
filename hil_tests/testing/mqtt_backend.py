"""A backend as a city would run one, for tests: it consumes what edge agents publish.

An MQTT 5 client with a persistent session (Clean Start 0, a session expiry) and a
shared subscription, so the broker queues for it while it is away and several such
consumers would split the load. It decodes every message with the uplink's decoder,
keeps what arrived in order, and reconnects on its own when the broker comes back.

    async with Backend(broker.host, broker.port) as backend:   # subscribed on return
        ...
        await backend.wait_for_keys(expected)                    # {(agent, stream, seq)}
        backend.first_arrivals()     # per stream: seqs in the order of their first copy
        backend.duplicates()         # keys that came more than once
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from kommune.edge.uplink import Record, SenmlError, records_of
from kommune.edge.uplink.client import MqttClient, publish_properties

Key = tuple[str, str, int]

#: Every agent's every class, shared among the consumers of group "backend".
SHARED_TOPIC = "$share/backend/kommune/+/+/+"
RETRY_S = 0.02


@dataclass(frozen=True, slots=True)
class Received:
    """One message: its topic, its records, and when it came (time.time())."""

    topic: str
    records: tuple[Record, ...]
    received_at: float


class Backend:
    """See the module docstring."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        topic: str = SHARED_TOPIC,
        client_id: str = "kommune-backend-1",
        session_expiry_s: int = 3600,
    ) -> None:
        self.host, self.port, self.topic = host, port, topic
        self.client_id = client_id
        self.session_expiry_s = session_expiry_s
        self.messages: list[Received] = []
        self.records: list[Record] = []
        self.errors: list[str] = []
        self.connections = 0
        self._subscribed = asyncio.Event()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Backend:
        self._task = asyncio.create_task(self._run(), name="test-backend")
        waiter = asyncio.ensure_future(self._subscribed.wait())
        await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if self._task.done():
            waiter.cancel()
            self._task.result()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- what arrived --------------------------------------------------------------------

    def keys(self) -> Counter[Key]:
        return Counter((r.agent, r.stream, r.seq) for r in self.records)

    def duplicates(self) -> set[Key]:
        return {k for k, n in self.keys().items() if n > 1}

    def first_arrivals(self) -> dict[str, list[int]]:
        """Per stream, the seqs in the order their first copies arrived."""
        seen: set[Key] = set()
        out: dict[str, list[int]] = {}
        for r in self.records:
            key = (r.agent, r.stream, r.seq)
            if key not in seen:
                seen.add(key)
                out.setdefault(r.stream, []).append(r.seq)
        return out

    def unique(self) -> dict[Key, Record]:
        """Each key's first record (what a backend keeps after dropping duplicates)."""
        out: dict[Key, Record] = {}
        for r in self.records:
            out.setdefault((r.agent, r.stream, r.seq), r)
        return out

    async def wait_for_keys(self, keys: set[Key]) -> None:
        await self.wait_until(lambda b: keys <= b.keys().keys())

    async def wait_until(self, predicate: Callable[[Backend], bool]) -> None:
        while not predicate(self):
            if self._task is not None and self._task.done():
                self._task.result()
                raise RuntimeError("the backend stopped")
            self._changed.clear()
            await self._changed.wait()

    # -- inside --------------------------------------------------------------------------

    async def _run(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.session_expiry_s
        while True:
            client = aiomqtt.Client(
                self.host,
                self.port,
                identifier=self.client_id,
                protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=False,
                properties=props,
                timeout=5,
            )
            try:
                async with client:
                    self.connections += 1
                    await client.subscribe(self.topic, qos=1)
                    self._subscribed.set()
                    async for message in client.messages:
                        self._take(message)
            except aiomqtt.MqttError:
                await asyncio.sleep(RETRY_S)  # poll until the broker is back

    def _take(self, message: aiomqtt.Message) -> None:
        try:
            records = records_of(message)
        except SenmlError as exc:
            self.errors.append(f"{message.topic}: {exc}")
        else:
            self.messages.append(Received(str(message.topic), tuple(records), time.time()))
            self.records += records
        self._changed.set()


class Publisher:
    """The backend's other side: publishes (downlinks) with QoS 1 on its own MQTT 5
    connection and gives each PUBACK's reason code (0x10: no subscriber matched)."""

    #: How long a connect or a PUBACK may take.
    DEADLINE_S = 20.0

    def __init__(self, client: MqttClient) -> None:
        self.client = client

    @classmethod
    @contextlib.asynccontextmanager
    async def connected(cls, host: str, port: int) -> AsyncIterator[Publisher]:
        client = MqttClient(host, port, protocol=aiomqtt.ProtocolVersion.V5, timeout=5)
        async with asyncio.timeout(cls.DEADLINE_S):
            await client.connect()
        try:
            yield cls(client)
        finally:
            await client.__aexit__(None, None, None)

    async def publish(self, topic: str, payload: bytes) -> int:
        async with asyncio.timeout(self.DEADLINE_S):
            code = await self.client.publish_nowait(topic, payload, publish_properties(False))
        return int(code.value)
