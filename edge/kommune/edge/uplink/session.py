"""One connection's pump: fill batches from the outbox, publish them within the
in-flight window, and settle every row when the connection ends (see `mqtt.py`).

Three tasks (four with downlinks) share the session's state on one event loop: the
filler (outbox → batcher → ready batches; it is never cancelled inside an outbox call,
it stops at its next safe point), the sender (ready batches → PUBLISH, at most `window`
waiting for PUBACK; a PUBACK hands the rows to the uplink to acknowledge), the watcher
(ends the session when the connection drops; queues received messages) and, with a
downlink handler, the downlinks task (subscribes, then hands each message to the
handler in order; its PUBACK goes once the handler returned, see `mqtt.py`). `run()`
returns when the connection is gone or, when draining, once everything held is
acknowledged or the drain deadline passed; by then every row it held has been
acknowledged or handed back for release.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from kommune.edge.northbound import Priority, Queued

from . import senml
from .batcher import DEFAULT_POLICIES, Batch, Batcher, BatchPolicy
from .client import (
    NO_MATCHING_SUBSCRIBERS,
    PUBACK_BYTES,
    MqttClient,
    publish_packet_size,
    publish_properties,
)

if TYPE_CHECKING:
    from .mqtt import Uplink

log = logging.getLogger("kommune.edge.uplink")

#: While the ready batches fill the window, look for audit rows this often.
PRIORITY_POLL_S = 0.25
#: How long a clean DISCONNECT may take before the socket is just closed.
DISCONNECT_TIMEOUT_S = 2.0
#: At the session's end, how long a downlink handler at work may take to finish (so its
#: PUBACK still goes out) before it is left to finish on its own.
HANDLER_GRACE_S = 2.0
#: How long the broker may take to answer our SUBSCRIBE.
SUBSCRIBE_TIMEOUT_S = 10.0


@dataclass(slots=True)
class _InFlight:
    batch: Batch
    puback: asyncio.Future[ReasonCode]
    wire_bytes: int
    payload_bytes: int


class Session:
    """One connection's pump: fill batches from the outbox, publish within the window,
    settle every row when the connection ends."""

    def __init__(self, uplink: Uplink, client: MqttClient) -> None:
        self.up = uplink
        self.client = client
        cfg = uplink.config
        self.loop = asyncio.get_running_loop()
        self.window = max(1, min(cfg.window, client.connack_int("ReceiveMaximum", 65535)))
        # A pack must fit the broker's Maximum Packet Size with room for topic and header.
        cap = client.connack_int("MaximumPacketSize", 0) - 512
        policies: dict[Priority, BatchPolicy] = {}
        for p in Priority:
            policy = cfg.policies.get(p, DEFAULT_POLICIES[p])
            if cap > 64 and policy.max_bytes > cap:
                policy = dataclasses.replace(policy, max_bytes=cap)
            policies[p] = policy
        self.batcher = Batcher(functools.partial(senml.encode, cfg.agent), policies)
        self.ready: dict[Priority, deque[Batch]] = {p: deque() for p in Priority}
        self.in_flight: dict[int, _InFlight] = {}
        self.refused: list[Batch] = []
        self.props = {False: publish_properties(False), True: publish_properties(True)}
        self.topics = {p: cfg.topic(p) for p in Priority}
        self.lost: str | None = None
        self.draining = False
        self.drain_deadline = 0.0
        self.acked = 0
        self.wake = asyncio.Event()  # the sender: something changed
        self.poke = asyncio.Event()  # the filler: stop waiting for rows
        self.filler_wants_room = False
        self._next_id = 0
        self.inbox: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
        #: The downlink handler's run on the current message, while it runs.
        self.handling: asyncio.Future[None] | None = None
        #: Disconnecting: no more PUBACKs for downlinks.
        self.closed = False

    # -- the three tasks ---------------------------------------------------------------

    async def run(self) -> None:
        watcher = asyncio.create_task(self._watch(), name="kommune-uplink-watch")
        downlinks = None
        if self.up.on_downlink is not None:
            downlinks = asyncio.create_task(self._downlinks(), name="kommune-uplink-downlinks")
        filler = asyncio.create_task(self._fill(), name="kommune-uplink-fill")
        try:
            await self._send(filler)
        finally:
            self.lost = self.lost or "session ended"
            self.poke.set()
            try:
                # The filler stops at its next safe point, never inside an outbox call.
                await asyncio.shield(filler)
            finally:
                if downlinks is not None:
                    await self._end_downlinks(downlinks)
                self.closed = True
                await self._disconnect()
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
                self.client.forget_disconnect_error()
                self._settle()

    async def _watch(self) -> None:
        """Ends the session when the connection drops (aiomqtt's message iterator raises
        then); queues each message for the downlinks task."""
        try:
            async for message in self.client.messages:
                if self.up.on_downlink is None:
                    log.debug("uplink: ignoring a message on %s", message.topic)
                else:
                    self.inbox.put_nowait(message)
        except aiomqtt.MqttError as exc:
            cause = exc.__cause__ or exc
            if isinstance(cause, aiomqtt.MqttCodeError) and cause.rc in (
                128,
                paho.MQTT_ERR_CONN_LOST,
            ):
                why = "closed by the broker or the network"  # paho knows no more
            else:
                why = str(cause)
            self._lose(f"connection to {self.up.where} lost: {why}")

    async def _subscribe(self) -> None:
        """Subscribe to the downlink topics (QoS 1). Retained messages only for a new
        subscription: a resumed session already had them, and re-sending them on every
        reconnect would only make "already applied" noise. A refusal is reported; the
        uplink goes on without downlinks on this connection."""
        options = SubscribeOptions(
            qos=1, noLocal=True, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB
        )
        filters = self.up.config.downlink_filters()
        try:
            codes = await self.client.subscribe(
                [(f, options) for f in filters], timeout=SUBSCRIBE_TIMEOUT_S
            )
        except aiomqtt.MqttError as exc:
            self.up.report_error(f"cannot subscribe to downlinks: {exc}")
            return
        refused = [
            f"{f} ({c})"
            for f, c in zip(filters, codes, strict=False)
            if not isinstance(c, ReasonCode) or c.value >= 0x80
        ]
        if refused or len(codes) != len(filters):
            self.up.report_error(f"the broker refused the downlink subscription: {refused}")
            return
        self.up.counters.downlink_subscribed = True
        self.up.changed()
        log.info("uplink: subscribed to downlinks on %s", ", ".join(filters))

    async def _downlinks(self) -> None:
        """Hand each message to the handler, one at a time; PUBACK once it returned."""
        handler = self.up.on_downlink
        assert handler is not None
        await self._subscribe()
        while True:
            message = await self.inbox.get()
            payload = message.payload
            data = bytes(payload) if isinstance(payload, bytes | bytearray) else b""
            self.up.counters.downlinks_received += 1
            handling = asyncio.ensure_future(handler(str(message.topic), data))
            handling.add_done_callback(functools.partial(self._handled, message))
            self.handling = handling
            # Shielded: a session that ends meanwhile never cuts a handler in half.
            with contextlib.suppress(Exception):
                await asyncio.shield(handling)
            self.handling = None

    def _handled(self, message: aiomqtt.Message, handling: asyncio.Future[None]) -> None:
        """The handler is done with `message`: count a failure, send the PUBACK."""
        if handling.cancelled():
            return  # not acknowledged: the broker sends it again on the next connection
        if (exc := handling.exception()) is not None:
            self.up.counters.downlink_handler_errors += 1
            log.error(
                "uplink: the downlink handler failed on %s (acknowledged all the same)",
                message.topic,
                exc_info=exc,
            )
        if not self.closed:
            self.client.ack(message)
        self.up.changed()

    async def _end_downlinks(self, downlinks: asyncio.Task[None]) -> None:
        """Let a handler at work finish (for up to HANDLER_GRACE_S; its PUBACK goes out
        as it finishes), then stop the downlinks task."""
        if self.handling is not None:
            await asyncio.wait({self.handling}, timeout=HANDLER_GRACE_S)
        downlinks.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await downlinks

    async def _fill(self) -> None:
        try:
            while self.lost is None and not self.draining:
                await self._fill_once()
            if self.draining and self.lost is None:
                self._enqueue(self.batcher.flush())
        finally:
            self.wake.set()

    async def _fill_once(self) -> None:
        if self._ready_count() >= self.window:
            self.poke.clear()
            self.filler_wants_room = True
            try:
                async with asyncio.timeout(PRIORITY_POLL_S):
                    await self.poke.wait()
            except TimeoutError:
                # Full of lower classes: audit rows that came meanwhile still go first.
                await self._pull((Priority.AUDIT,), full=True)
                self._enqueue(self.batcher.due(self.loop.time()))
            finally:
                self.filler_wants_room = False
            return
        deadline = self.batcher.next_deadline()
        timeout = None if deadline is None else deadline - self.loop.time()
        if timeout is None or timeout > 0:
            self.poke.clear()
            rows_task = asyncio.ensure_future(self.up.source.wait_for_rows())
            poke_task = asyncio.ensure_future(self.poke.wait())
            await asyncio.wait(
                {rows_task, poke_task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for task in (rows_task, poke_task):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task  # an outbox failure in wait_for_rows comes out here
            if self.lost is not None or self.draining:
                return
        await self._pull()
        self._enqueue(self.batcher.due(self.loop.time()))

    async def _pull(
        self, classes: Sequence[Priority] = tuple(Priority), full: bool = False
    ) -> None:
        """Take rows of `classes` into the batcher while there is room for closed batches
        (`full`: the ready batches are many already; room only for `window` of each class)."""
        up = self.up
        for priority in classes:
            while self.lost is None and (
                len(self.ready[priority]) < self.window
                if full
                else self._ready_count() < self.window
            ):
                room = self.batcher.room(priority)
                rows = await up.source.next_batch(priority, room)
                good = []
                for row in rows:
                    try:
                        senml.check_row(row)
                    except senml.SenmlError as exc:
                        up.set_aside(row, str(exc))
                    else:
                        good.append(row)
                wall_ms = time.time_ns() // 1_000_000
                self._enqueue(
                    self.batcher.add(priority, good, now=self.loop.time(), wall_ms=wall_ms)
                )
                if len(rows) < room:
                    break

    async def _send(self, filler: asyncio.Task[None]) -> None:
        while True:
            self.wake.clear()
            if self.lost is not None:
                return
            if filler.done() and not self.draining:
                filler.result()  # the outbox failed
                return
            while len(self.in_flight) < self.window and self._publish_next():
                pass
            if self.draining:
                if filler.done() and not self.in_flight and not self._ready_count():
                    return
                remaining = self.drain_deadline - self.loop.time()
                if remaining <= 0:
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self.wake.wait()
            else:
                await self.wake.wait()

    # -- publishing ----------------------------------------------------------------------

    def _publish_next(self) -> bool:
        for priority in Priority:
            if self.ready[priority]:
                batch = self.ready[priority].popleft()
                break
        else:
            return False
        payload, deflated = batch.pack, False
        if self.up.config.deflate:
            squeezed = senml.deflate(batch.pack)
            if len(squeezed) < len(payload):
                payload, deflated = squeezed, True
        topic = self.topics[batch.priority]
        props = self.props[deflated]
        try:
            puback = self.client.publish_nowait(topic, payload, props)
        except aiomqtt.MqttError as exc:
            self.ready[batch.priority].appendleft(batch)
            self._lose(f"publish failed: {exc}")
            return False
        key = self._next_id
        self._next_id += 1
        wire = publish_packet_size(topic, len(payload), props) + PUBACK_BYTES
        self.in_flight[key] = _InFlight(batch, puback, wire, len(payload))
        puback.add_done_callback(functools.partial(self._on_puback, key))
        st = self.up.counters
        st.publishes += 1
        st.in_flight = len(self.in_flight)
        st.max_in_flight = max(st.max_in_flight, st.in_flight)
        self.up.changed()
        if self.filler_wants_room:
            self.poke.set()
        return True

    def _delivered(self, puback: asyncio.Future[ReasonCode]) -> bool:
        if not puback.done() or puback.cancelled():
            return False
        code = puback.result().value
        if code >= 0x80:
            return False
        return not (code == NO_MATCHING_SUBSCRIBERS and self.up.config.require_subscriber)

    def _on_puback(self, key: int, puback: asyncio.Future[ReasonCode]) -> None:
        flight = self.in_flight.pop(key, None)
        if flight is None:
            return  # settled already
        st = self.up.counters
        st.in_flight = len(self.in_flight)
        if self._delivered(puback):
            self._count_delivered(flight)
        else:
            self.refused.append(flight.batch)
            code = puback.result() if puback.done() and not puback.cancelled() else None
            self._lose(f"broker refused a publish to {self.topics[flight.batch.priority]}: {code}")
        self.up.changed()
        self.wake.set()
        if self.filler_wants_room:
            self.poke.set()

    def _count_delivered(self, flight: _InFlight) -> None:
        st = self.up.counters
        self.acked += 1
        st.acked_publishes += 1
        st.payload_bytes += flight.payload_bytes
        st.wire_bytes += flight.wire_bytes
        self.up.acknowledge_later(flight.batch.rows)

    # -- ending --------------------------------------------------------------------------

    def begin_drain(self, deadline: float) -> None:
        self.draining = True
        self.drain_deadline = deadline
        self.poke.set()
        self.wake.set()

    def _lose(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
            if not self.draining:
                self.up.report_error(why)
        self.poke.set()
        self.wake.set()

    async def _disconnect(self) -> None:
        try:
            async with asyncio.timeout(DISCONNECT_TIMEOUT_S):
                await self.client.__aexit__(None, None, None)
        except (aiomqtt.MqttError, TimeoutError):
            pass
        finally:
            self.client.abort()

    def _settle(self) -> None:
        """Acknowledge what the broker acknowledged, release every other row held."""
        release: list[Queued] = []
        for flight in self.in_flight.values():
            if self._delivered(flight.puback):
                self._count_delivered(flight)
            else:
                release += flight.batch.rows
        self.in_flight.clear()
        self.up.counters.in_flight = 0
        for batch in self.refused:
            release += batch.rows
        for queue in self.ready.values():
            for batch in queue:
                release += batch.rows
            queue.clear()
        release += self.batcher.take_open()
        self.up.release_later(release)
        self.up.changed()

    def _enqueue(self, batches: list[Batch]) -> None:
        for batch in batches:
            self.ready[batch.priority].append(batch)
        if batches:
            self.wake.set()

    def _ready_count(self) -> int:
        return sum(len(q) for q in self.ready.values())
