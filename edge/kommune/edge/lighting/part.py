"""The lamp control loop as a part of the agent: presence from the lamps (through the
links part) in, `SetLevel` commands to lamps and groups out, and what happened to the
outbox as telemetry.

    links ──Presence(node)──► Control.presence ──Commands──► links.send(SetLevel)
          ──Hello(node)─────► Control.again    ──────────►   (+ Groups, if it has any)
    timer (Control.due) ────► Control.tick     ──────────►

A newer command for a lamp stops the retransmissions of the one before (a lamp that
missed "on" must not get it after "idle"). Events, each in its own stream:

    lamp-N/presence        present: 1 or 0, as the lamp said it
    lamp-N/command         level: the level commanded (unicast)
    group-G/command        level: the level commanded to group G
    lamp-N/command-failed  timeout, unreachable or nacked ...: the level that did not land
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

from kommune.edge.agent.logs import fields
from kommune.edge.agent.metrics import Labels, Metric, counter, gauge
from kommune.edge.agent.outbox_part import OutboxPart
from kommune.edge.agent.site import Site
from kommune.edge.lighting.control import Command, Control
from kommune.edge.links.commands import Outcome, describe
from kommune.edge.links.part import LinksPart
from kommune.edge.northbound import Event, Priority
from kommune.edge.outbox.errors import OutboxError
from kommune.protocols import lamp, runtime
from kommune.protocols.message import Message

log = logging.getLogger(__name__)

#: Events waiting for the outbox at most; beyond, new ones are dropped (and counted).
MAX_WAITING_EVENTS: Final = 10_000


class LightingPart:
    name = "lighting"

    def __init__(
        self,
        site: Site,
        links: LinksPart,
        outbox: OutboxPart,
        *,
        deadline_s: float | None = None,
    ) -> None:
        self.site = site
        #: How long a command is retransmitted without an answer (None: the link's).
        self.deadline_s = deadline_s
        self._links = links
        self._outbox = outbox
        self.control = Control(site.streets)
        self._groups_of: dict[int, list[int]] = {}
        for street in site.streets:
            for group in street.groups:
                for lamp_id in group.lamps:
                    self._groups_of.setdefault(lamp_id, []).append(group.id)
        self._unsubscribe: list[Callable[[], None]] = []
        #: lamp -> the command task now setting it.
        self._setting: dict[int, asyncio.Future[Outcome]] = {}
        #: lamp -> the Groups command last sent to it.
        self._groups_sending: dict[int, asyncio.Future[Outcome] | None] = {}
        #: id(task) -> the command it carries, while it is under way.
        self._commanded: dict[int, Command] = {}
        self._events: list[Event] = []
        self._wake = asyncio.Event()
        self._events_ready = asyncio.Event()
        self._closing = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._source_seq = 0
        self.presence_events: Counter[str] = Counter()
        self.commands: Counter[tuple[str, str]] = Counter()  # (unicast|group, outcome)
        self.events_dropped = 0
        self.events_failed = 0
        self.decision_s_max = 0.0

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self.control = Control(self.site.streets)
        self._closing = asyncio.Event()
        self._unsubscribe = [
            self._links.subscribe(lamp.PRESENCE, self._on_presence),
            self._links.subscribe(runtime.HELLO, self._on_hello),
            self._links.on_first_heard(self._on_first_heard),
        ]
        for lamp_id, groups in self._groups_of.items():
            self._groups_sending[lamp_id] = self._send(
                lamp_id, runtime.Groups(groups=groups), "groups"
            )
        self._issue(self.control.start())

    async def run(self) -> None:
        """Until stop(): the hold timer, and the writer of events to the outbox."""
        async with asyncio.TaskGroup() as tasks:
            timer = tasks.create_task(self._timer())
            tasks.create_task(self._writer())
            await self._closing.wait()
            timer.cancel()
            self._events_ready.set()  # the writer ends after the append under way

    async def stop(self) -> None:
        """No more presence taken, commands under way stopped, the events written."""
        self._closing.set()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        setting = set(self._setting.values())
        setting.update(t for t in self._groups_sending.values() if t is not None)
        self._setting.clear()
        self._groups_sending.clear()
        for task in setting:
            task.cancel()
        if setting:
            await asyncio.wait(setting)
        await self._flush()

    # -- what comes in ------------------------------------------------------------------

    def _on_presence(self, node: int, msg: Message) -> None:
        assert isinstance(msg, lamp.Presence)
        began = time.perf_counter()
        commands = self.control.presence(node, bool(msg.present), time.monotonic())
        self.decision_s_max = max(self.decision_s_max, time.perf_counter() - began)
        self.presence_events["present" if msg.present else "cleared"] += 1
        self._event(f"lamp-{node}/presence", "present", int(msg.present))
        self._issue(commands)
        self._wake.set()  # a hold may have started: the timer looks again

    def _on_hello(self, node: int, _msg: Message) -> None:
        self._tell(node)  # it booted: its level (and its groups, if it is a new lamp)

    def _on_first_heard(self, node: int) -> None:
        self._tell(node)  # on a UDP link it was unreachable until now (no address)

    def _tell(self, node: int) -> None:
        """A lamp's groups and the level it should be at, unless on their way already."""
        if not self.control.is_lamp(node):
            return
        groups = self._groups_of.get(node)
        under_way = self._groups_sending.get(node)
        if groups and (under_way is None or under_way.done()):
            self._groups_sending[node] = self._send(node, runtime.Groups(groups=groups), "groups")
        self._issue(self.control.again(node))

    async def _timer(self) -> None:
        while True:
            due = self.control.due()
            self._wake.clear()
            try:
                timeout = None if due is None else max(0.0, due - time.monotonic())
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
                continue
            except TimeoutError:
                pass
            self._issue(self.control.tick(time.monotonic()))

    # -- commands -----------------------------------------------------------------------

    def _issue(self, commands: list[Command]) -> None:
        for command in commands:
            if command.why == "again" and self._same_under_way(command):
                continue  # its retransmissions will reach the lamp
            for lamp_id in command.lamps:  # a newer level replaces what is under way
                old = self._setting.pop(lamp_id, None)
                if old is not None:
                    old.cancel()
            task = self._send(
                command.dst, lamp.SetLevel(level=command.level, fade_ms=command.fade_ms), "level"
            )
            if task is None:
                continue
            for lamp_id in command.lamps:
                self._setting[lamp_id] = task
            self._commanded[id(task)] = command
            if command.group is None:
                self._event(f"lamp-{command.dst}/command", "level", command.level)
            else:
                self._event(f"group-{command.group}/command", "level", command.level)
            task.add_done_callback(functools.partial(self._finished, command))

    def _same_under_way(self, command: Command) -> bool:
        task = self._setting.get(command.dst)
        if task is None or task.done():
            return False
        under_way = self._commanded.get(id(task))
        return under_way is not None and under_way.level == command.level

    def _send(self, dst: int, msg: Message, what: str) -> asyncio.Future[Outcome] | None:
        try:
            return self._links.send(dst, msg, deadline_s=self.deadline_s)
        except ValueError as e:  # the site file's checks keep this from happening
            log.error("cannot send %s to %d: %s", what, dst, e)
            return None

    def _finished(self, command: Command, task: asyncio.Future[Outcome]) -> None:
        self._commanded.pop(id(task), None)
        for lamp_id in command.lamps:
            if self._setting.get(lamp_id) is task:
                del self._setting[lamp_id]
        kind = "unicast" if command.group is None else "group"
        if task.cancelled():
            self.commands[(kind, "replaced")] += 1
            return
        outcome = task.result()
        self.commands[(kind, outcome.result)] += 1
        if outcome.ok:
            return
        if outcome.result == "unreachable" and command.why == "start":
            return  # a UDP lamp not heard yet: set when it is (first heard, Hello)
        how = describe(outcome)
        who = f"lamp-{command.dst}" if command.group is None else f"group-{command.group}"
        log.warning(
            "%s: level %d not set: %s",
            who,
            command.level,
            how,
            extra=fields(lamp=command.dst, level=command.level, outcome=how),
        )
        self._event(f"{who}/command-failed", how.replace(" ", "_"), command.level)

    # -- events -------------------------------------------------------------------------

    def _event(self, stream: str, name: str, value: int) -> None:
        if len(self._events) >= MAX_WAITING_EVENTS:
            self.events_dropped += 1
            return
        now_ns = time.time_ns()
        self._source_seq = max(self._source_seq + 1, now_ns // 1000)
        self._events.append(
            Event(stream, Priority.TELEMETRY, self._source_seq, now_ns // 1_000_000, name, value)
        )
        self._events_ready.set()

    async def _writer(self) -> None:
        while not self._closing.is_set():
            await self._events_ready.wait()
            self._events_ready.clear()
            await self._flush()

    async def _flush(self) -> None:
        async with self._flushing:
            events, self._events = self._events, []
            if not events:
                return
            try:
                await self._outbox.outbox.append(events)
            except (OutboxError, OSError) as e:
                self.events_failed += len(events)
                log.error("%d lighting events not stored: %s", len(events), e)

    def under_way(self, lamp_id: int) -> asyncio.Future[Outcome] | None:
        """The command setting `lamp_id` now, if one is."""
        return self._setting.get(lamp_id)

    # -- health and metrics -------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return {
            "lamps": self.control.lamps,
            "commands_under_way": len(set(self._setting.values())),
            "holding": self.control.due() is not None,
            "decision_ms_max": round(self.decision_s_max * 1000, 3),
        }

    def metrics(self) -> list[Metric]:
        commands: dict[Labels, float] = {
            (("kind", kind), ("result", result)): n for (kind, result), n in self.commands.items()
        }
        presence: dict[Labels, float] = {
            (("change", change),): n for change, n in self.presence_events.items()
        }
        return [
            counter("lighting_presence_total", "Presence reports from lamps", presence),
            counter("lighting_commands_total", "level commands, by kind and outcome", commands),
            counter(
                "lighting_events_lost_total",
                "lighting events not stored (outbox failed, or too many waiting)",
                self.events_failed + self.events_dropped,
            ),
            gauge(
                "lighting_decision_max_seconds",
                "longest decision on a presence report since the start",
                self.decision_s_max,
            ),
        ]
