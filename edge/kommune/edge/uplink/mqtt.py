"""The MQTT 5 uplink: batches from the outbox to the broker, rows gone only after PUBACK.

    async with Uplink(config, outbox) as uplink:   # connects, publishes, reconnects
        ...
        uplink.state                                # connected, publishes, acked rows, ...
    # leaving: publishes what it holds for up to config.drain_s, releases the rest

Per connection (a fresh aiomqtt client each time, MQTT 5, Clean Start 0 with a session
expiry, so the broker keeps our session across drops):

    outbox ──next_batch──► Batcher ──closed batch──► ready (per class, audit first)
                                                        │ while fewer than `window`
                                                        ▼ wait for their PUBACK
                  acknowledge(rows) ◄── PUBACK ◄── PUBLISH QoS 1 kommune/<site>/<agent>/<class>

Downlinks (when an `on_downlink` handler is given): on every connection, right after
the CONNACK, the session subscribes (QoS 1) to this agent's and its site's downlink
topics (`UplinkConfig.downlink_filters`) and hands each message to the handler, one at
a time, in order of arrival. Its PUBACK goes to the broker only once the handler has
returned (manual ack): the handler returns once the message is dealt with durably
(applied or refused, and recorded), so a message the agent did not finish with is sent
again by the broker on the next connection (our session persists), and the handler's
idempotence makes the second copy harmless. A handler that raises is logged and
counted, and its message acknowledged all the same: unacknowledged, the broker would
send it again only after a reconnect, and a message that always fails must not hold
the connection that carries the uplink. A session that ends gives a handler at work up
to HANDLER_GRACE_S (2 s) to finish and then leaves it running, unacknowledged: the next
connection may call the handler (with the same message again) while that one still
runs, so a handler serialises its own work. Not acknowledging until handled is also
the flow control: our CONNECT sets Receive Maximum to RECEIVE_MAXIMUM, the most QoS 1
messages the broker may send us unacknowledged, so a flood of downlinks queues at the
broker, not in the agent.

When the connection ends for any reason (broker gone, keepalive, a refused publish,
stop) every row the uplink still holds that no PUBACK covers — in flight, in closed
batches not yet sent, in open batches — is handed back with one `release` call, in row
order, and the uplink waits a jittered back-off before it connects again. Holding
nothing across connections keeps each stream in order at the backend: the first copy
of every event arrives in sequence order; later copies are duplicates the idempotency
key (agent, stream, seq) removes.

Outbox calls are never cancelled half-way: pulls run to completion in the filler, and
`acknowledge`/`release` run one at a time in their own task, which finishes its queue
before the uplink stops. An exception from the outbox stops the uplink and comes out of
`stop()` (and the context manager).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from kommune.edge.northbound import BatchSource, Queued

from .backoff import Backoff
from .client import MqttClient, records_of
from .config import UplinkConfig
from .session import Session

__all__ = ["DownlinkHandler", "Uplink", "UplinkState", "UplinkStopped", "records_of"]

#: Gets each downlink message (topic, payload); returns once it is dealt with durably.
DownlinkHandler = Callable[[str, bytes], Awaitable[None]]

#: Our CONNECT's Receive Maximum: QoS 1 downlinks the broker may have unacknowledged.
RECEIVE_MAXIMUM = 16

log = logging.getLogger("kommune.edge.uplink")
#: paho's own messages (packets at DEBUG, socket errors at ERROR).
_paho_log = logging.getLogger("kommune.edge.uplink.paho")


@dataclass(slots=True)
class UplinkState:
    """What the uplink has done, for health and metrics (a copy; counters only grow)."""

    connected: bool = False
    #: Connections that got a CONNACK; reconnects are those after the first.
    connections: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    #: PUBLISH packets handed to the socket, and those the broker acknowledged.
    publishes: int = 0
    acked_publishes: int = 0
    acked_rows: int = 0
    released_rows: int = 0
    #: Rows that cannot be encoded: kept aside (not acknowledged) until the uplink stops.
    unencodable_rows: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    #: Payload bytes and whole PUBLISH+PUBACK packet bytes of acknowledged publishes.
    payload_bytes: int = 0
    wire_bytes: int = 0
    last_error: str | None = None
    #: Downlinks: subscribed on the current connection (SUBACK granted both filters),
    #: messages handed to the handler, and those whose handler raised.
    downlink_subscribed: bool = False
    downlinks_received: int = 0
    downlink_handler_errors: int = 0


class UplinkStopped(RuntimeError):
    """The uplink has stopped (waited on with `wait_state`)."""


class Uplink:
    """Publishes what `source` holds to the broker in `config`; see the module docstring."""

    def __init__(
        self,
        config: UplinkConfig,
        source: BatchSource,
        *,
        rng: random.Random | None = None,
        on_downlink: DownlinkHandler | None = None,
    ) -> None:
        self._tls = config.check()
        self.config = config
        self._source = source
        #: None: no downlink subscription at all.
        self.on_downlink = on_downlink
        self._backoff = Backoff(config.backoff, rng)
        self._state = UplinkState()
        self._changed: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._stop_requested: asyncio.Event | None = None
        self._session: Session | None = None
        self._outbox_ops: asyncio.Queue[tuple[Literal["ack", "release"], list[Queued]] | None]
        self._quarantine: list[Queued] = []
        self._failure: BaseException | None = None

    # -- public ------------------------------------------------------------------------

    @property
    def state(self) -> UplinkState:
        return dataclasses.replace(self._state)

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("the uplink has been started already")
        self._stop_requested = asyncio.Event()
        self._outbox_ops = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="kommune-uplink")
        self._task.add_done_callback(lambda _: self.changed())

    async def stop(self) -> None:
        """Publish what is held for up to `config.drain_s`, release the rest, disconnect,
        and return once the outbox has heard of every row; raises the outbox's error if
        the uplink stopped because of one."""
        if self._task is None:
            return
        self._request_stop()
        await asyncio.shield(self._task)

    async def __aenter__(self) -> Uplink:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def wait_state(self, predicate: Callable[[UplinkState], bool]) -> UplinkState:
        """Wait until `predicate(state)` holds (give it a deadline with asyncio.timeout);
        raises the uplink's failure, or `UplinkStopped`, if it ends first."""
        while True:
            state = self.state
            if predicate(state):
                return state
            if self._task is not None and self._task.done():
                self._task.result()
                raise UplinkStopped("the uplink stopped")
            if self._changed is None or self._changed.done():
                self._changed = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._changed)

    # -- for the session (one connection's pump, session.py) ---------------------------

    @property
    def source(self) -> BatchSource:
        return self._source

    @property
    def counters(self) -> UplinkState:
        """The live state (`state` is a copy)."""
        return self._state

    @property
    def where(self) -> str:
        return f"{self.config.host}:{self.config.resolved_port}"

    def changed(self) -> None:
        """Wake whoever waits in `wait_state`."""
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    def report_error(self, message: str) -> None:
        self._state.last_error = message
        log.warning("uplink: %s", message)
        self.changed()

    def set_aside(self, row: Queued, why: str) -> None:
        """A row that cannot be encoded: held (not acknowledged, not retried) until the
        uplink stops, then released."""
        self._quarantine.append(row)
        self._state.unencodable_rows += 1
        self.report_error(f"row {row.row_id} ({row.event.stream}) kept aside: {why}")

    def acknowledge_later(self, rows: Sequence[Queued]) -> None:
        """Queue `acknowledge(rows)` for the outbox worker."""
        self._outbox_ops.put_nowait(("ack", list(rows)))

    def release_later(self, rows: Sequence[Queued]) -> None:
        """Queue `release(rows)`, in row order, for the outbox worker."""
        if rows:
            self._outbox_ops.put_nowait(("release", sorted(rows, key=lambda r: r.row_id)))

    # -- inside ------------------------------------------------------------------------

    def _request_stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._stop_requested is not None:
            self._stop_requested.set()
        if self._session is not None:
            self._session.begin_drain(asyncio.get_running_loop().time() + self.config.drain_s)

    async def _outbox_worker(self) -> None:
        """Runs `acknowledge`/`release` one at a time, in the order they were decided."""
        while True:
            op = await self._outbox_ops.get()
            if op is None:
                return
            kind, rows = op
            try:
                if kind == "ack":
                    await self._source.acknowledge(rows)
                    self._state.acked_rows += len(rows)
                else:
                    await self._source.release(rows)
                    self._state.released_rows += len(rows)
            except Exception as exc:
                self._failure = exc
                self.report_error(f"the outbox failed to {kind}: {exc!r}")
                self._request_stop()
                return
            self.changed()

    async def _run(self) -> None:
        worker = asyncio.create_task(self._outbox_worker(), name="kommune-uplink-outbox")
        try:
            await self._connect_loop()
        except Exception as exc:
            if self._failure is None:
                self._failure = exc
        finally:
            self.release_later(self._quarantine)
            self._quarantine = []
            self._outbox_ops.put_nowait(None)
            await worker
            self._state.connected = False
            self.changed()
        if self._failure is not None:
            raise self._failure

    def _new_client(self) -> MqttClient:
        cfg = self.config
        connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect.SessionExpiryInterval = cfg.session_expiry_s
        connect.ReceiveMaximum = RECEIVE_MAXIMUM
        client = MqttClient(
            cfg.host,
            cfg.resolved_port,
            username=cfg.username,
            password=cfg.password,
            identifier=cfg.resolved_client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            keepalive=cfg.keepalive_s,
            properties=connect,
            tls_context=self._tls,
            # paho sets the context's check_hostname from this (and checks names itself,
            # with a function Python 3.12 no longer has, only when the context does not).
            tls_insecure=None if cfg.tls is None else not cfg.tls.check_hostname,
            timeout=cfg.connect_timeout_s,
            max_inflight_messages=cfg.window,
            logger=_paho_log,
            manual_ack=self.on_downlink is not None,
        )
        client._client.connect_timeout = cfg.connect_timeout_s
        return client

    async def _pause(self, seconds: float) -> None:
        assert self._stop_requested is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop_requested.wait()

    async def _connect_loop(self) -> None:
        while not self._stopping:
            client = self._new_client()
            try:
                # Not cancelled half-way (the connect runs in a thread); bounded by
                # connect_timeout_s twice (TCP/TLS, then CONNACK).
                await client.connect()
            except aiomqtt.MqttError as exc:
                client.abort()
                self._state.connect_failures += 1
                self.report_error(f"cannot connect to {self.where}: {exc}")
                await self._pause(self._backoff.next_delay())
                continue
            st = self._state
            st.connected = True
            st.connections += 1
            st.reconnects = st.connections - 1
            self.changed()
            log.info("uplink: connected to %s as %s", self.where, client.identifier)
            started = time.monotonic()
            session = Session(self, client)
            self._session = session
            if self._stopped():  # stop() came while we connected
                session.begin_drain(asyncio.get_running_loop().time() + self.config.drain_s)
            try:
                await session.run()
            finally:
                self._session = None
                st.connected = False
                st.downlink_subscribed = False
                self.changed()
            if session.acked or time.monotonic() - started >= self.config.backoff.max_s:
                self._backoff.reset()
            if not self._stopping:
                await self._pause(self._backoff.next_delay())

    def _stopped(self) -> bool:
        return self._stopping
