"""The lamp control loop's decisions, without I/O: which lamps a presence lights, for how
long they are held, when they fade back, and when one group frame does instead of one
frame per lamp. Time is passed in, so every step is exact; the decision time per
presence report is measured on a 64-lamp street."""

from __future__ import annotations

import time

import pytest

from kommune.edge.agent.site import GroupConfig, StreetConfig
from kommune.edge.lighting.control import Command, Control, level_of_percent
from kommune.protocols import frame as F
from kommune.protocols import lamp

IDLE = level_of_percent(20)
ON = 254


def street(**options: object) -> StreetConfig:
    settings: dict[str, object] = {
        "name": "storgata",
        "lamps": (1, 2, 3, 4, 5, 6),
        "ahead": 1,
        "behind": 0,
        "hold_s": 30.0,
        "fade_s": 2.0,
        **options,
    }
    return StreetConfig(**settings)  # type: ignore[arg-type]


def targets(commands: list[Command]) -> list[tuple[int, int, int]]:
    return [(c.dst, c.level, c.fade_ms) for c in commands]


def test_percent_of_light_to_levels_on_the_dali_curve() -> None:
    assert level_of_percent(0) == 0
    assert level_of_percent(0.1) == 1
    assert level_of_percent(100) == 254
    assert IDLE == 195
    # The level's light output is within half a step (~1.4 %) of the percentage.
    for percent in (1, 5, 20, 50, 80):
        light = 10 ** ((level_of_percent(percent) - 1) * 3 / 253 - 3) * 100
        assert abs(light - percent) / percent < 0.015, percent
    assert lamp.level_to_duty(IDLE) / 65535 == pytest.approx(0.2, rel=0.015)


def test_the_street_starts_at_idle_and_presence_lights_the_lamp_and_the_one_ahead() -> None:
    control = Control([street()])
    assert targets(control.start()) == [(n, IDLE, 0) for n in (1, 2, 3, 4, 5, 6)]
    assert targets(control.presence(3, True, now=100.0)) == [(3, ON, 0), (4, ON, 0)]
    assert control.due() is None, "held while someone is there"
    assert control.tick(now=1000.0) == []
    # The lamp says it again (a retransmission it did not know was acked): nothing new.
    assert control.presence(3, True, now=101.0) == []
    # Cleared: held for hold_s, then faded back over fade_s.
    assert control.presence(3, False, now=110.0) == []
    assert control.due() == 140.0
    assert control.tick(now=139.9) == []
    assert targets(control.tick(now=140.0)) == [(3, IDLE, 2000), (4, IDLE, 2000)]
    assert control.due() is None
    assert [control.level(n) for n in (1, 2, 3, 4, 5, 6)] == [IDLE] * 6


def test_a_lamp_stays_on_while_any_sensor_that_reaches_it_sees_someone() -> None:
    control = Control([street(ahead=2, behind=1)])
    control.start()
    assert [c.dst for c in control.presence(3, True, now=0.0)] == [2, 3, 4, 5]
    # Someone further on: only the lamps not on yet are commanded.
    assert [c.dst for c in control.presence(5, True, now=1.0)] == [6]
    # The first walker's area clears: 2 and 3 are held; 4 and 5 are still seen by 5.
    control.presence(3, False, now=2.0)
    assert control.due() == 32.0
    assert [c.dst for c in control.tick(now=32.0)] == [2, 3]
    assert control.level(4) == control.level(5) == control.level(6) == ON
    # Presence again within a hold keeps the lamp on, with no command (it is on).
    control.presence(5, False, now=40.0)
    assert control.presence(5, True, now=50.0) == []
    assert control.due() is None
    control.presence(5, False, now=60.0)
    assert [c.dst for c in control.tick(now=90.0)] == [4, 5, 6]


def test_the_end_of_the_street_lights_what_there_is() -> None:
    control = Control([street(ahead=3, behind=2)])
    control.start()
    assert [c.dst for c in control.presence(6, True, now=0.0)] == [4, 5, 6]
    assert [c.dst for c in control.presence(1, True, now=0.0)] == [1, 2, 3]


def test_a_whole_group_affected_gets_one_group_frame() -> None:
    groups = (GroupConfig(10, (1, 2, 3)), GroupConfig(11, (4, 5, 6)), GroupConfig(12, (1, 4)))
    control = Control([street(ahead=3, behind=0, groups=groups)])
    # At the start every lamp goes idle: the two big groups cover the street.
    assert targets(control.start()) == [
        (F.group_address(10), IDLE, 0),
        (F.group_address(11), IDLE, 0),
    ]
    # Lamps 2-5: group 11 is not all on (6 is not), 10 is not (1 is not): unicast.
    assert [c.dst for c in control.presence(2, True, now=0.0)] == [2, 3, 4, 5]
    # Then 1 joins (and 2-4, already on): group 10 is all on now, but only lamp 1 changed;
    # group 10 is what it is in, so one frame sets it.
    commands = control.presence(1, True, now=1.0)
    assert [(c.dst, c.lamps) for c in commands] == [(F.group_address(10), (1, 2, 3))]
    assert commands[0].group == 10
    control.presence(1, False, now=2.0)
    control.presence(2, False, now=2.0)
    # All five fade at once: groups 10 and 11 are all idle then (6 was): two frames.
    assert targets(control.tick(now=32.0)) == [
        (F.group_address(10), IDLE, 2000),
        (F.group_address(11), IDLE, 2000),
    ]


def test_sensors_only_reach_their_own_street_and_unknown_nodes_are_ignored() -> None:
    control = Control([street(), street(name="torget", lamps=(21, 22), idle_percent=0)])
    assert (21, 0, 0) in targets(control.start())
    assert [c.dst for c in control.presence(6, True, now=0.0)] == [6]
    assert control.presence(99, True, now=0.0) == []
    assert not control.is_sensor(99)
    assert targets(control.presence(21, True, now=0.0)) == [(21, ON, 0), (22, ON, 0)]


def test_a_lamp_that_booted_is_told_its_level_again() -> None:
    control = Control([street()])
    control.start()
    control.presence(1, True, now=0.0)
    assert targets(control.again(2)) == [(2, ON, 0)]
    assert targets(control.again(5)) == [(5, IDLE, 0)]
    assert control.again(77) == []


def test_a_decision_takes_microseconds_on_a_64_lamp_street() -> None:
    lamps = tuple(range(1, 65))
    groups = tuple(GroupConfig(g, lamps[g * 8 : g * 8 + 8]) for g in range(8))
    control = Control([street(lamps=lamps, ahead=3, behind=1, groups=groups)])
    control.start()
    took = []
    now = 0.0
    for i in range(2000):
        sensor = lamps[i % 64]
        now += 0.5
        began = time.perf_counter()
        control.presence(sensor, True, now)
        control.presence(sensor, False, now)
        control.tick(now)
        took.append((time.perf_counter() - began) / 2)
    took.sort()
    p50, p99 = took[len(took) // 2] * 1e6, took[int(len(took) * 0.99)] * 1e6
    print(f"\ndecision per presence report (64 lamps): p50 {p50:.1f} us, p99 {p99:.1f} us")
    assert p99 < 1000, "the issue's budget: a decision within 1 ms"
