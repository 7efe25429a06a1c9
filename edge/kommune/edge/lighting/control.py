"""The lamp control loop's decisions: pure state and functions, no I/O, no clock of its
own (the caller passes `now`, monotonic seconds), so each decision is tested and timed
without a link.

    control = Control(site.streets)
    control.start()                      # every lamp to its idle level
    control.presence(18, True, now)      # lamp 18 saw someone: it and the lamps around on
    control.presence(18, False, now)     # the area cleared: held for hold_s from now
    control.due()                        # when tick() has something to do (or None)
    control.tick(now)                    # held lamps whose hold is over fade to idle

Each returns `Command`s: one level for a lamp (unicast) or for a whole group when every
lamp of the group is to be at that level (one frame instead of one per lamp).

A lamp is on while a sensor that reaches it sees someone, and for `hold_s` after the
last such sensor cleared; then it fades to idle over `fade_s`. A sensor (today a lamp's
own presence input) reaches its lamp, `ahead` lamps after it and `behind` lamps before
it in the street's order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from kommune.edge.agent.site import StreetConfig
from kommune.protocols import frame as F

#: DALI arc power levels (protocols/README.md, "Dimming curve").
LEVEL_MIN: Final = 1
LEVEL_MAX: Final = 254


def level_of_percent(percent: float) -> int:
    """The arc power level whose light output is nearest `percent` of full on the
    logarithmic curve: 0 % is off (0), 0.1 % level 1, 20 % level 195, 100 % level 254."""
    if percent <= 0:
        return 0
    level = 1 + 253 * (math.log10(percent / 100) + 3) / 3
    return max(LEVEL_MIN, min(LEVEL_MAX, round(level)))


@dataclass(frozen=True, slots=True)
class Command:
    """Set `lamps` to `level` over `fade_ms`: by one frame to `dst` (a lamp, or the group
    address of a group made of exactly those lamps)."""

    dst: int
    lamps: tuple[int, ...]
    level: int
    fade_ms: int
    why: str  # "start", "presence", "hold over", "again"

    @property
    def group(self) -> int | None:
        return F.group_of(self.dst) if not F.is_unicast(self.dst) else None


@dataclass(slots=True)
class _Lamp:
    street: _Street
    level: int  # what the edge last commanded (or is commanding)
    seen_by: set[int] = field(default_factory=set)  # sensors seeing someone that reach it
    held_until: float = 0.0  # monotonic s; on until then after its sensors cleared


@dataclass(slots=True)
class _Street:
    config: StreetConfig
    idle_level: int
    on_level: int
    fade_ms: int
    groups: list[tuple[int, frozenset[int]]]  # (group address, lamps), biggest first


class Control:
    """The decisions for the lamps of `streets` (see the module docstring)."""

    def __init__(self, streets: Sequence[StreetConfig]) -> None:
        self._lamps: dict[int, _Lamp] = {}
        #: sensor node -> the lamps it reaches.
        self._reach: dict[int, tuple[int, ...]] = {}
        self._present: dict[int, bool] = {}
        #: Lamps on with no sensor seeing anyone: waiting for their hold to end.
        self._holding: set[int] = set()
        for config in streets:
            if not config.lamps:
                continue
            groups = sorted(
                ((F.group_address(g.id), frozenset(g.lamps)) for g in config.groups),
                key=lambda g: (-len(g[1]), g[0]),
            )
            street = _Street(
                config,
                level_of_percent(config.idle_percent),
                level_of_percent(config.on_percent),
                round(config.fade_s * 1000),
                groups,
            )
            lamps = config.lamps
            for i, lamp in enumerate(lamps):
                self._lamps[lamp] = _Lamp(street, street.idle_level)
                low = max(0, i - config.behind)
                self._reach[lamp] = lamps[low : i + config.ahead + 1]

    # -- questions ------------------------------------------------------------------------

    @property
    def lamps(self) -> int:
        return len(self._lamps)

    def is_lamp(self, node: int) -> bool:
        return node in self._lamps

    def is_sensor(self, node: int) -> bool:
        return node in self._reach

    def level(self, lamp: int) -> int:
        """The level the edge wants `lamp` at now."""
        return self._lamps[lamp].level

    def reach(self, sensor: int) -> tuple[int, ...]:
        return self._reach.get(sensor, ())

    def due(self) -> float | None:
        """When `tick` has a lamp to fade back (monotonic s), None if none is held."""
        if not self._holding:
            return None
        return min(self._lamps[lamp].held_until for lamp in self._holding)

    # -- decisions ------------------------------------------------------------------------

    def start(self) -> list[Command]:
        """Every lamp to its idle level (at once: the edge does not know where they are)."""
        commands: list[Command] = []
        by_street: dict[int, tuple[_Street, list[int]]] = {}
        for lamp, state in self._lamps.items():
            by_street.setdefault(id(state.street), (state.street, []))[1].append(lamp)
        for street, lamps in by_street.values():
            commands += self._commands(street, lamps, street.idle_level, 0, "start")
        return commands

    def again(self, lamp: int) -> list[Command]:
        """What `lamp` should be at, for a lamp that has just booted (its Hello) or is
        heard for the first time."""
        state = self._lamps.get(lamp)
        if state is None:
            return []
        return [Command(lamp, (lamp,), state.level, 0, "again")]

    def presence(self, sensor: int, present: bool, now: float) -> list[Command]:
        """A sensor saw someone (`present`) or its area cleared."""
        reach = self._reach.get(sensor)
        if reach is None or self._present.get(sensor, False) == present:
            return []  # not ours, or nothing new (a lamp says each change once)
        self._present[sensor] = present
        if not present:
            for lamp in reach:
                state = self._lamps[lamp]
                state.seen_by.discard(sensor)
                state.held_until = max(state.held_until, now + state.street.config.hold_s)
                if not state.seen_by:
                    self._holding.add(lamp)
            return []
        street = self._lamps[sensor].street
        brighten = []
        for lamp in reach:
            state = self._lamps[lamp]
            state.seen_by.add(sensor)
            self._holding.discard(lamp)
            if state.level != street.on_level:
                state.level = street.on_level
                brighten.append(lamp)
        return self._commands(street, brighten, street.on_level, 0, "presence")

    def tick(self, now: float) -> list[Command]:
        """Held lamps whose hold is over fade back to idle."""
        over = [lamp for lamp in self._holding if self._lamps[lamp].held_until <= now]
        if not over:
            return []
        commands: list[Command] = []
        by_street: dict[int, tuple[_Street, list[int]]] = {}
        for lamp in over:
            self._holding.discard(lamp)
            state = self._lamps[lamp]
            if state.level != state.street.idle_level:
                state.level = state.street.idle_level
                by_street.setdefault(id(state.street), (state.street, []))[1].append(lamp)
        for street, lamps in by_street.values():
            commands += self._commands(
                street, lamps, street.idle_level, street.fade_ms, "hold over"
            )
        return commands

    # -- commands ---------------------------------------------------------------------------

    def _commands(
        self, street: _Street, changed: Iterable[int], level: int, fade_ms: int, why: str
    ) -> list[Command]:
        """Commands that bring `changed` to `level`: a group command for each group of the
        street whose lamps are all to be at `level` now (those already there get the same
        level again: no change), unicast for the rest."""
        left = set(changed)
        if not left:
            return []
        commands: list[Command] = []
        for address, members in street.groups:
            if members.isdisjoint(left):
                continue
            if all(self._lamps[lamp].level == level for lamp in members):
                commands.append(Command(address, tuple(sorted(members)), level, fade_ms, why))
                left -= members
                if not left:
                    break
        order = street.config.lamps
        for lamp in order:
            if lamp in left:
                commands.append(Command(lamp, (lamp,), level, fade_ms, why))
        return commands
