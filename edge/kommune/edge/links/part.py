"""The node links as a part of the agent: every `[[links]]` of the site file, opened at
start, each with its `LinkHandler` appending to the outbox part's outbox; stopped before
the outbox closes (the host stops parts in reverse)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from kommune.edge.agent.logs import fields
from kommune.edge.agent.metrics import Labels, Metric, counter, gauge
from kommune.edge.agent.outbox_part import OutboxPart
from kommune.edge.agent.process import PartError
from kommune.edge.agent.site import SerialLink, Site, UdpLink
from kommune.edge.links import commands
from kommune.edge.links.boots import BootCounts
from kommune.edge.links.commands import Outcome
from kommune.edge.links.handler import RESULTS, LinkHandler, Subscriber
from kommune.edge.links.serial import SerialTransport
from kommune.edge.links.udp import UdpTransport
from kommune.protocols import frame as F
from kommune.protocols.message import Message

log = logging.getLogger(__name__)

#: Boot counts per link, in the agent's state directory: links/<link id>.json.
BOOTS_FOLDER = "links"
#: A serial device that cannot be opened (or went away) is tried again after this long,
#: doubling up to REOPEN_MAX_S.
REOPEN_MIN_S = 1.0
REOPEN_MAX_S = 30.0

Transport = UdpTransport | SerialTransport


class LinksPart:
    name = "links"

    def __init__(self, site: Site, outbox: OutboxPart) -> None:
        self.site = site
        self._outbox = outbox
        self._links: list[tuple[LinkHandler, Transport]] = []
        self._tasks: list[asyncio.Task[None]] = []
        lamps: set[int] = set()
        bays: set[int] = set()
        for street in site.streets:
            lamps.update(street.lamps)
            bays.update(street.bays)
        self._lamps = frozenset(lamps)
        self._bays = frozenset(bays)
        #: group id -> its lamps (the site's [[streets.groups]]).
        self._groups = {g.id: frozenset(g.lamps) for s in site.streets for g in s.groups}
        #: message type -> subscribers, shared with every handler (also after a restart).
        self._subscribers: dict[int, list[Subscriber]] = {}
        self._first_heard: list[Callable[[int], None]] = []

    async def start(self) -> None:
        try:
            for link in self.site.links:
                boots = BootCounts(self.site.outbox.dir / BOOTS_FOLDER / f"{link.id}.json")
                try:
                    await asyncio.to_thread(boots.load)
                except (OSError, ValueError, KeyError, TypeError) as e:
                    raise PartError(
                        f"link {link.id}: cannot read the boot counts in {boots.path}: {e}"
                    ) from e
                handler = LinkHandler(
                    link.id,
                    frozenset(link.nodes),
                    outbox=self._outbox.outbox,
                    boots=boots,
                    lamps=self._lamps,
                    bays=self._bays,
                    subscribers=self._subscribers,
                    first_heard=self._first_heard,
                )
                transport: Transport
                if isinstance(link, UdpLink):
                    transport = UdpTransport(handler, link.host, link.port)
                else:
                    assert isinstance(link, SerialLink)
                    transport = SerialTransport(handler, link.device, link.baud)
                if isinstance(transport, UdpTransport):
                    # A port taken or a bad address does not heal by waiting: fail the start.
                    await transport.open()
                    self._opened(handler, transport)
                else:
                    # A serial adapter may be unplugged now and plugged in later: the other
                    # parts run meanwhile, and this link keeps trying.
                    self._tasks.append(
                        asyncio.create_task(
                            self._keep_open(handler, transport), name=f"link {link.id} device"
                        )
                    )
                handler.start()
                self._links.append((handler, transport))
        except BaseException:
            await self.stop()
            raise

    @staticmethod
    def _opened(handler: LinkHandler, transport: Transport) -> None:
        log.info(
            "link %s: listening on %s for %d nodes",
            handler.link_id,
            transport.where,
            len(handler.nodes),
            extra=fields(link=handler.link_id, where=transport.where),
        )

    async def _keep_open(self, handler: LinkHandler, transport: SerialTransport) -> None:
        """Open the device, and again whenever it goes away, pausing in between."""
        pause_s = REOPEN_MIN_S
        while True:
            try:
                await transport.open()
            except PartError as e:
                log.error("%s; trying again in %.0f s", e, pause_s)
            else:
                self._opened(handler, transport)
                pause_s = REOPEN_MIN_S
                assert transport.lost is not None
                error = await transport.lost
                log.error("link %s: %s went away: %s", handler.link_id, transport.where, error)
            await asyncio.sleep(pause_s)
            pause_s = min(pause_s * 2, REOPEN_MAX_S)

    async def run(self) -> None:
        """Until a link fails (its device went away, a bug): then the part crashed."""
        if not self._links:
            await asyncio.Event().wait()
        failures = [handler.failure for handler, _ in self._links]
        done, _ = await asyncio.wait(failures, return_when=asyncio.FIRST_COMPLETED)
        for handler, _ in self._links:
            if handler.failure in done:
                error = handler.failure.result()
                raise PartError(f"link {handler.link_id} failed: {error}") from error

    async def stop(self) -> None:
        """Take no more frames, let the appends under way commit and be acked, close."""
        links, self._links = self._links, []
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for handler, _ in links:
            handler.close()
        try:
            await asyncio.gather(*(handler.drain() for handler, _ in links))
        finally:
            for _, transport in links:
                transport.close()

    # -- for other parts ----------------------------------------------------------------

    def subscribe(self, msg_type: int, subscriber: Subscriber) -> Callable[[], None]:
        """Have `subscriber(node, message)` called for each frame of `msg_type` a node
        sends (once per frame, in the link's receive callback: it must not block).
        Returns what unsubscribes it."""
        subscribers = self._subscribers.setdefault(msg_type, [])
        subscribers.append(subscriber)
        return lambda: subscribers.remove(subscriber)

    def on_first_heard(self, callback: Callable[[int], None]) -> Callable[[], None]:
        """Have `callback(node)` called when a node is heard for the first time since
        the links started (a UDP node can be commanded from then on). Returns what
        removes it."""
        self._first_heard.append(callback)
        return lambda: self._first_heard.remove(callback)

    def send(
        self, dst: int, msg: Message, *, deadline_s: float | None = None
    ) -> asyncio.Future[Outcome]:
        """Command `dst`: a node (acked, retransmitted until `deadline_s`), a group
        address (on every link with a lamp of the group; a group the site file does not
        list goes on every link) or BROADCAST (every link). The first copy leaves before
        this returns; await the result for the Outcome (a group's: "sent" once repeated),
        cancel it to stop retransmitting. A node on no link: ValueError."""
        if F.is_unicast(dst):
            for handler, _ in self._links:
                if dst in handler.nodes:
                    return handler.commands.send(dst, msg, deadline_s=deadline_s)
            if any(dst in link.nodes for link in self.site.links):
                future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
                future.set_result(Outcome("unreachable", dst, 0, 0))  # links not started
                return future
            raise ValueError(f"node {dst} is on no link of the site file")
        members = self._groups.get(F.group_of(dst)) if dst != F.BROADCAST else None
        tasks = [
            handler.commands.send(dst, msg)
            for handler, _ in self._links
            if members is None or not members.isdisjoint(handler.nodes)
        ]
        return asyncio.ensure_future(_first_of(dst, tasks))

    def health(self) -> dict[str, Any]:
        links = {}
        now = time.time()
        for handler, transport in self._links:
            nodes = {}
            for node, h in sorted(handler.node_health.items()):
                nodes[str(node)] = {
                    "heard_s_ago": None if h.last_heard is None else round(now - h.last_heard, 1),
                    "commands": h.commands,
                    "pending": h.pending,
                    "failures": h.failures,
                    "round_trip_ms": None
                    if h.round_trip_s is None
                    else round(h.round_trip_s * 1000, 2),
                }
            links[handler.link_id] = {
                "where": transport.where,
                "nodes": len(handler.nodes),
                "nodes_heard": handler.nodes_heard,
                "waiting": handler.waiting,
                "frames": sum(handler.results.values()),
                "commands_pending": handler.commands.pending,
                "open": transport.is_open,
                "failed": handler.failure.done(),
                "per_node": nodes,
            }
        ok = all(v["open"] and not v["failed"] for v in links.values())
        return {"links": links, "ok": ok}

    def metrics(self) -> list[Metric]:
        frames: dict[Labels, float] = {}
        bad: dict[Labels, float] = {}
        nacks: dict[Labels, float] = {}
        acks: dict[Labels, float] = {}
        waiting: dict[Labels, float] = {}
        heard: dict[Labels, float] = {}
        appends: dict[Labels, float] = {}
        appended: dict[Labels, float] = {}
        command_results: dict[Labels, float] = {}
        retries: dict[Labels, float] = {}
        pending: dict[Labels, float] = {}
        last_heard: dict[Labels, float] = {}
        node_failures: dict[Labels, float] = {}
        for handler, _ in self._links:
            link = ("link", handler.link_id)
            for result in RESULTS:
                frames[(link, ("result", result))] = handler.results[result]
            for reason, n in handler.bad_packets.items():
                bad[(link, ("reason", reason))] = n
            for code, n in handler.nacks_sent.items():
                nacks[(link, ("code", code))] = n
            acks[(link,)] = handler.acks_sent
            waiting[(link,)] = handler.waiting
            heard[(link,)] = handler.nodes_heard
            appends[(link,)] = handler.appends
            appended[(link,)] = handler.appended_frames
            for result in commands.RESULTS:
                command_results[(link, ("result", result))] = handler.commands.results[result]
            retries[(link,)] = handler.commands.retries
            pending[(link,)] = handler.commands.pending
            for node, h in handler.node_health.items():
                labels = (link, ("node", str(node)))
                if h.last_heard is not None:
                    last_heard[labels] = h.last_heard
                node_failures[labels] = h.failures
        return [
            counter("link_frames_total", "frames from nodes, by what became of them", frames),
            counter("link_bad_packets_total", "packets that did not decode as a frame", bad),
            counter("link_acks_total", "Acks sent to nodes (after the commit)", acks),
            counter("link_nacks_total", "Nacks sent to nodes, by code", nacks),
            counter("link_appends_total", "outbox appends (one per batch of frames)", appends),
            counter("link_appended_frames_total", "frames in those appends", appended),
            gauge("link_waiting_frames", "frames waiting for the outbox", waiting),
            gauge("link_nodes_heard", "nodes heard from since the agent started", heard),
            counter("link_commands_total", "commands to nodes, by how they ended", command_results),
            counter("link_command_retries_total", "command retransmissions", retries),
            gauge("link_commands_pending", "commands waiting for their answer", pending),
            gauge(
                "link_node_last_heard_timestamp_seconds",
                "when the node's last frame arrived, Unix time",
                last_heard,
            ),
            counter(
                "link_node_command_failures_total",
                "commands to the node nacked, timed out or unreachable",
                node_failures,
            ),
        ]


async def _first_of(dst: int, tasks: list[asyncio.Task[Outcome]]) -> Outcome:
    """A group command's outcome over the links it went on: "sent" if it went on any."""
    if not tasks:
        return Outcome("unreachable", dst, 0, 0)
    try:
        outcomes = await asyncio.gather(*tasks)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        raise
    sent = [o for o in outcomes if o.result == "sent"]
    return sent[0] if sent else outcomes[0]
