"""What every node link does with the frames it receives, UDP or serial alike.

    transport ──on_frame(frame, peer)──► LinkHandler ──append(events)──► outbox
              ◄──send(ack wire, peer)─── after the COMMIT returned

`on_frame` runs in the transport's callback and never blocks: it checks the frame
(our node? for the edge? a message nodes send? a payload that decodes?), answers at
once what needs no outbox (a TimeRequest, a retransmission of a frame it acked a moment
ago, a Presence for the control loop), and queues the rest. One task takes everything
queued into one `outbox.append` — a group commit: while one commit runs the next batch
gathers, so batches grow with the load — and acknowledges each frame of the batch only
after that append returned: committed, or recognised by the outbox as a retransmission
of an event it has. Frames of one node are appended in the order they arrived.

The edge's own frames to nodes (commands.py) go out through the same `send`; a node's
Ack/Nack is handed to the command waiting for it, and messages other parts subscribed
to (the lamp control loop: Presence, Hello) are handed to them as they arrive. The
edge's frames on a link share one seq counter that starts at a random value.

Push-back: an append refused with OutboxFull is answered `Nack(busy)` for every frame
of the batch that asked for an ack (busy is "keep it, retry later with the same seq");
any other outbox failure, or the agent stopping, gets no answer at all, so the node
retransmits until an agent commits it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from kommune.edge.links.boots import BootCounts
from kommune.edge.links.commands import Commands, NodeHealth
from kommune.edge.links.readings import BAY_TYPES, LAMP_TYPES, TABLE, events_of, source_seq
from kommune.edge.northbound import Event
from kommune.edge.outbox.errors import OutboxClosed, OutboxError, OutboxFull
from kommune.edge.outbox.schema import check_event
from kommune.protocols import frame as F
from kommune.protocols import runtime
from kommune.protocols.errors import ProtocolError
from kommune.protocols.frame import EDGE, Frame
from kommune.protocols.message import Message, decode_frame, encode_frame

log = logging.getLogger(__name__)

#: Frames queued for the outbox at most; beyond this new ones are dropped unanswered
#: (their nodes retransmit), so a flood cannot take the agent's memory.
MAX_WAITING_FRAMES: Final = 20_000
#: Events in one append at most (the outbox's max_txn_rows: it commits that many at once).
MAX_BATCH_EVENTS: Final = 1_000
#: Acked frames remembered per node, to answer a retransmission without the outbox.
RECENT_PER_NODE: Final = 16
#: A node not on the link is logged at most this often (and counted every time).
UNKNOWN_LOG_INTERVAL_S: Final = 300.0
MAX_UNKNOWN_REMEMBERED: Final = 1024

#: link_frames_total{result}: what became of each frame received.
RESULTS: Final = (
    "stored",  # committed to the outbox, then acked
    "duplicate",  # a retransmission: acked again without storing it again
    "local",  # needs no outbox (Presence, TimeRequest, answers): handled at once
    "unknown_node",  # from a node this link does not list: dropped
    "not_for_edge",  # addressed to another node or a group: not ours
    "bad_payload",  # a message that does not decode: Nack with its reason
    "not_supported",  # a type nodes do not send, or not this kind of node: Nack
    "refused",  # the outbox was full: Nack(busy)
    "failed",  # the outbox failed or closed: no answer, the node retransmits
    "overload",  # too many frames waiting: dropped unanswered
    "answer",  # a node's Ack/Nack to a frame of the edge
    "internal_error",  # a bug while handling it: dropped unanswered (logged)
)


class Appender(Protocol):
    """What the link needs of the outbox."""

    async def append(self, events: Sequence[Event]) -> list[int | None]: ...


#: Who wants a kind of message as it arrives (the lamp control loop: Presence):
#: callback(node, message), called once per frame (not for a retransmission the link
#: recognised), synchronously in the transport's callback: it must not block.
Subscriber = Callable[[int, Message], None]


#: How a transport sends wire bytes to a node: (wire, peer) where peer is what came with
#: the node's last frame (a UDP address; None on a serial line).
Send = Callable[[bytes, Any], None]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(eq=False, slots=True)
class _Waiting:
    """A frame waiting for its events to be committed."""

    node: int
    seq: int
    key: tuple[int, int]  # (node, source_seq)
    content: bytes  # type byte + payload: what a retransmission repeats
    ack: bool
    peer: Any
    events: list[Event]


class LinkHandler:
    """One link's frame handling. A transport calls `on_frame` for each good frame,
    `on_bad_packet` for each one that did not decode, and sets `send`; `start()` starts
    the batch task, `close()` + `await drain()` stop it."""

    def __init__(
        self,
        link_id: str,
        nodes: frozenset[int],
        *,
        outbox: Appender,
        boots: BootCounts,
        lamps: frozenset[int] = frozenset(),
        bays: frozenset[int] = frozenset(),
        clock_ms: Callable[[], int] = wall_clock_ms,
        max_batch_events: int = MAX_BATCH_EVENTS,
        max_waiting_frames: int = MAX_WAITING_FRAMES,
        subscribers: Mapping[int, Sequence[Subscriber]] | None = None,
        first_heard: Sequence[Callable[[int], None]] = (),
    ) -> None:
        self.link_id = link_id
        self.nodes = nodes
        self.outbox = outbox
        self.boots = boots
        self.lamps = lamps
        self.bays = bays
        self.clock_ms = clock_ms
        self.max_batch_events = max_batch_events
        self.max_waiting_frames = max_waiting_frames
        self.send: Send = _not_open
        self.results: Counter[str] = Counter()
        self.bad_packets: Counter[str] = Counter()
        self.nacks_sent: Counter[str] = Counter()
        self.acks_sent = 0
        self.send_errors = 0
        self.appends = 0
        self.appended_frames = 0
        self.last_frame_at: float | None = None
        self._waiting: deque[_Waiting] = deque()
        self._in_flight: dict[tuple[int, int], bytes] = {}
        self._recent: dict[int, dict[int, bytes]] = {}
        self._heard: set[int] = set()
        self._unknown_logged: dict[int, float] = {}
        # A random first seq at every start: a node's dedup (which remembers the answers
        # to the edge's last few seqs) never takes a new command for a retransmission of
        # one the last agent sent.
        self._out_seq = int.from_bytes(os.urandom(2), "big")
        #: Message type -> who wants it (the links part's table, shared).
        self.subscribers: Mapping[int, Sequence[Subscriber]] = (
            {} if subscribers is None else subscribers
        )
        #: Called with a node's address the first time it is heard since the start (on a
        #: UDP link: from now on it can be commanded).
        self.first_heard = first_heard
        self.subscriber_errors = 0
        #: Per node: last heard, commands pending and failed.
        self.node_health: dict[int, NodeHealth] = {}
        #: Where each node's last frame came from (a UDP address; None on a serial line).
        self.peers: dict[int, Any] = {}
        #: A UDP link reaches only nodes it has heard (their address); a serial line all.
        self.peer_required = False
        self.commands = Commands(link_id, self._write_to, self._next_seq, self.node_health)
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        #: Set by the transport when it cannot go on (the device went away).
        self.failure: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._batches(), name=f"link {self.link_id}")
        self._task.add_done_callback(self._batches_ended)

    def close(self) -> None:
        """Take no more frames; what waits and is not being appended is dropped
        unanswered (its nodes retransmit to the next agent)."""
        self._closing = True
        self._wake.set()
        self.commands.close()

    async def drain(self) -> None:
        """Wait for the append under way and its acknowledgements (after close())."""
        if self._task is not None:
            await asyncio.wait({self._task})
        await self.commands.wait_closed()

    def fail(self, error: BaseException) -> None:
        if not self.failure.done():
            self.failure.set_result(error)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def nodes_heard(self) -> int:
        return len(self._heard)

    # -- receiving (the transport's callback; never blocks, never raises) --------------

    def on_bad_packet(self, reason: str) -> None:
        self.bad_packets[reason] += 1

    def on_frame(self, frame: Frame, peer: Any) -> None:
        """Handle one good frame (valid only during the call: copied what is kept)."""
        try:
            self._take(frame, peer)
        except Exception:
            self.results["internal_error"] += 1
            log.exception("link %s: handling a frame from node %d failed", self.link_id, frame.src)

    def _take(self, frame: Frame, peer: Any) -> None:
        results = self.results
        if self._closing:
            results["failed"] += 1
            return
        node = frame.src
        if node not in self.nodes:
            results["unknown_node"] += 1
            self._warn_unknown(node)
            return
        if frame.dst != EDGE:
            results["not_for_edge"] += 1
            return
        first = node not in self._heard
        self._heard.add(node)
        self.last_frame_at = time.monotonic()
        self.peers[node] = peer
        if first:
            self._tell(self.first_heard, node)
        health = self.node_health.get(node)
        if health is None:
            health = self.node_health[node] = NodeHealth()
        health.last_heard = time.time()
        msg_type = frame.msg_type
        ack = frame.ack_requested()
        if msg_type in (runtime.ACK, runtime.NACK):
            results["answer"] += 1
            try:
                answer = decode_frame(frame)
            except ProtocolError:
                return
            assert isinstance(answer, runtime.Ack | runtime.Nack)
            self.commands.answer(node, answer)
            return
        if (
            msg_type not in TABLE
            or (msg_type in LAMP_TYPES and node in self.bays)
            or (msg_type in BAY_TYPES and node in self.lamps)
        ):
            results["not_supported"] += 1
            if ack:
                self._nack(node, frame.seq, peer, runtime.NACK_NOT_SUPPORTED)
            return
        try:
            msg = decode_frame(frame)
        except ProtocolError as e:
            results["bad_payload"] += 1
            if ack:
                self._nack(node, frame.seq, peer, runtime.nack_code(e))
            return
        if isinstance(msg, runtime.TimeRequest):
            self._answer_time(node, msg, peer)
        if isinstance(msg, runtime.Hello) and self.boots.set(node, msg.boot_count):
            self._recent.pop(node, None)  # its seqs start again
            log.info(
                "link %s: node %d booted (boot %d, reset cause %d, firmware %d.%d.%d)",
                self.link_id,
                node,
                msg.boot_count,
                msg.reset_cause,
                msg.fw_major,
                msg.fw_minor,
                msg.fw_patch,
            )
        seq = source_seq(self.boots.get(node), frame.seq)
        content = bytes((msg_type,)) + frame.payload()  # what a retransmission repeats
        recent = self._recent.get(node)
        if recent is not None and recent.get(seq) == content:
            results["duplicate"] += 1  # we acked it, the ack was lost: again
            if ack:
                self._ack(node, frame.seq, peer)
            return
        key = (node, seq)
        if self._in_flight.get(key) == content:
            results["duplicate"] += 1  # waiting for its commit: acked with the first copy
            return
        for subscriber in self.subscribers.get(msg_type, ()):
            try:
                subscriber(node, msg)
            except Exception:
                self.subscriber_errors += 1
                log.exception("link %s: a subscriber to %r failed", self.link_id, msg)
        events = events_of(node, msg, seq, self.clock_ms())
        if not events:
            results["local"] += 1
            if ack:
                self._ack(node, frame.seq, peer)
            return
        try:
            for event in events:
                check_event(event)
        except (TypeError, ValueError) as e:
            results["bad_payload"] += 1
            log.error("link %s: node %d sent %r, not storable: %s", self.link_id, node, msg, e)
            if ack:
                self._nack(node, frame.seq, peer, runtime.NACK_BAD_VALUE)
            return
        if len(self._waiting) >= self.max_waiting_frames:
            results["overload"] += 1
            return
        self._in_flight[key] = content
        self._waiting.append(_Waiting(node, frame.seq, key, content, ack, peer, events))
        self._wake.set()

    # -- committing -------------------------------------------------------------------

    async def _batches(self) -> None:
        while True:
            while not self._waiting:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
            if self._closing:
                self._drop_waiting()
                return
            batch = [self._waiting.popleft()]
            events = len(batch[0].events)
            while self._waiting and events + len(self._waiting[0].events) <= self.max_batch_events:
                events += len(self._waiting[0].events)
                batch.append(self._waiting.popleft())
            await self._commit(batch)

    async def _commit(self, batch: list[_Waiting]) -> None:
        events = [event for waiting in batch for event in waiting.events]
        try:
            if self.boots.dirty:  # before anything folded with a new boot count is acked
                await asyncio.to_thread(self.boots.save)
            self.appends += 1
            self.appended_frames += len(batch)
            seqs = await self.outbox.append(events)
        except OutboxFull as e:
            self.results["refused"] += len(batch)
            log.warning(
                "link %s: the outbox is full, %d frames pushed back: %s",
                self.link_id,
                len(batch),
                e,
            )
            for waiting in batch:
                if waiting.ack:
                    self._nack(waiting.node, waiting.seq, waiting.peer, runtime.NACK_BUSY)
            return
        except (OutboxError, OSError) as e:
            self.results["failed"] += len(batch)
            if not isinstance(e, OutboxClosed):
                log.error("link %s: %d frames not stored: %s", self.link_id, len(batch), e)
            return
        finally:
            for waiting in batch:
                self._in_flight.pop(waiting.key, None)
        at = 0
        for waiting in batch:
            count = len(waiting.events)
            stored = any(seq is not None for seq in seqs[at : at + count])
            at += count
            self.results["stored" if stored else "duplicate"] += 1
            self._remember(waiting)
            if waiting.ack:
                self._ack(waiting.node, waiting.seq, waiting.peer)

    def _drop_waiting(self) -> None:
        self.results["failed"] += len(self._waiting)
        self._waiting.clear()
        self._in_flight.clear()

    def _batches_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self.fail(error)
        elif not self._closing:
            self.fail(RuntimeError("the batch task ended"))

    def _remember(self, waiting: _Waiting) -> None:
        recent = self._recent.setdefault(waiting.node, {})
        recent[waiting.key[1]] = waiting.content
        if len(recent) > RECENT_PER_NODE:
            del recent[next(iter(recent))]

    # -- answering --------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._out_seq = (self._out_seq + 1) & 0xFFFF
        return self._out_seq

    def _send(self, node: int, msg: Message, peer: Any) -> bool:
        wire = encode_frame(msg, dst=node, seq=self._next_seq(), src=EDGE)
        try:
            self.send(wire, peer)
        except OSError as e:
            self.send_errors += 1
            log.debug("link %s: cannot answer node %d: %s", self.link_id, node, e)
            return False
        return True

    def _tell(self, callbacks: Sequence[Callable[[int], None]], node: int) -> None:
        for callback in callbacks:
            try:
                callback(node)
            except Exception:
                self.subscriber_errors += 1
                log.exception("link %s: a callback for node %d failed", self.link_id, node)

    def _write_to(self, wire: bytes, dst: int) -> bool:
        """A frame of the edge's own towards `dst` (a node, a group, BROADCAST); False if
        no node it is for can be reached. On a UDP link a group or broadcast frame goes to
        every node heard (each takes what its groups accept)."""
        if not self.peer_required:
            peers = [None]
        elif dst in self.peers:
            peers = [self.peers[dst]]
        elif F.is_unicast(dst):
            return False
        else:
            peers = list(self.peers.values())
        sent = False
        for peer in peers:
            try:
                self.send(wire, peer)
            except OSError as e:
                self.send_errors += 1
                log.debug("link %s: cannot send to %d: %s", self.link_id, dst, e)
            else:
                sent = True
        return sent or not self.peer_required  # a serial write that failed is a lost frame

    def _ack(self, node: int, seq: int, peer: Any) -> None:
        if self._send(node, runtime.Ack(acked_seq=seq), peer):
            self.acks_sent += 1

    def _nack(self, node: int, seq: int, peer: Any, code: int) -> None:
        if self._send(node, runtime.Nack(acked_seq=seq, code=code), peer):
            self.nacks_sent[runtime.nack_name(code)] += 1

    def _answer_time(self, node: int, request: runtime.TimeRequest, peer: Any) -> None:
        now_ms = self.clock_ms()
        answer = runtime.TimeSync(node_ms=request.node_ms, unix_s=now_ms // 1000, ms=now_ms % 1000)
        self._send(node, answer, peer)

    def _warn_unknown(self, node: int) -> None:
        now = time.monotonic()
        last = self._unknown_logged.get(node)
        if last is not None and now - last < UNKNOWN_LOG_INTERVAL_S:
            return
        if last is None and len(self._unknown_logged) >= MAX_UNKNOWN_REMEMBERED:
            return  # a flood of made-up sources: the counter shows it
        self._unknown_logged[node] = now
        log.warning(
            "link %s: frames from node %d, which is not on this link (site file: links.nodes);"
            " dropped",
            self.link_id,
            node,
        )


def _not_open(wire: bytes, peer: Any) -> None:
    raise OSError("the link is not open")
