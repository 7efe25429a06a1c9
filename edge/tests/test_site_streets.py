"""The lamp control keys of `[[streets]]`: their defaults, and a readable one-line
problem for each thing a site file can get wrong about them."""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_support import MINIMAL_SITE

from kommune.edge.agent import site as S

LINKS = MINIMAL_SITE + '[[links]]\nid = "bus"\nserial = "/dev/ttyUSB0"\nnodes = [1, 2, 3, 4]\n'
STREET = '[[streets]]\nname = "s"\nlamps = [1, 2, 3]\n'


def parse(text: str) -> S.Site:
    return S.parse(text.encode(), source=Path("/etc/kommune/site.toml"), environ={"HOME": "/h"})


def test_defaults_light_two_ahead_and_one_behind_hold_30_s_and_fade_2_s() -> None:
    [street] = parse(LINKS + STREET).streets
    assert (street.ahead, street.behind) == (2, 1)
    assert (street.idle_percent, street.on_percent) == (20.0, 100.0)
    assert (street.hold_s, street.fade_s) == (30.0, 2.0)
    assert street.groups == ()


def test_every_key_and_groups() -> None:
    text = (
        LINKS
        + STREET
        + "ahead = 3\nbehind = 0\nidle_percent = 10\non_percent = 80\nhold_s = 5\nfade_s = 1.5\n"
        + "[[streets.groups]]\nid = 7\nlamps = [1, 2]\n"
        + "[[streets.groups]]\nid = 8\nlamps = [3]\n"
    )
    [street] = parse(text).streets
    assert (street.ahead, street.behind, street.idle_percent, street.on_percent) == (3, 0, 10, 80)
    assert (street.hold_s, street.fade_s) == (5.0, 1.5)
    assert street.groups == (S.GroupConfig(7, (1, 2)), S.GroupConfig(8, (3,)))


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("ahead = -1", "streets[1].ahead: expected an integer 0-64, got -1"),
        ("hold_s = 'long'", "streets[1].hold_s: expected a number 0-3600, got 'long'"),
        ("fade_s = 70", "streets[1].fade_s: expected a number 0-65.535, got 70"),
        (
            "idle_percent = 50\non_percent = 40",
            "streets[1].on_percent: on_percent (40) must be at least idle_percent (50)",
        ),
        ("on_percent = 0", "streets[1].on_percent: expected a number 0.1-100, got 0"),
        (
            "[[streets.groups]]\nlamps = [1]",
            "streets[1].groups[1].id: required: the group's id, 0-4094",
        ),
        (
            "[[streets.groups]]\nid = 4095\nlamps = [1]",
            "streets[1].groups[1].id: expected an integer 0-4094, got 4095",
        ),
        (
            "[[streets.groups]]\nid = 1",
            "streets[1].groups[1].lamps: required: the lamps of the group, e.g. [1, 2, 3]",
        ),
        (
            "[[streets.groups]]\nid = 1\nlamps = [4]",
            "streets[1].groups[1].lamps: lamp 4 is not one of the street's lamps",
        ),
        (
            "[[streets.groups]]\nid = 1\nlamps = [1]\n[[streets.groups]]\nid = 1\nlamps = [2]",
            "streets[1].groups: group 1 is also in street 's'",
        ),
        (
            "".join(f"[[streets.groups]]\nid = {g}\nlamps = [1]\n" for g in range(9)),
            "streets[1].groups: lamp 1 is in more than 8 groups (a node keeps 8)",
        ),
        (
            "[[streets.groups]]\nid = 1\nlamps = [1]\nlamp = [1]",
            "streets[1].groups[1].lamp: unknown key (did you mean 'lamps'?)",
        ),
    ],
)
def test_each_problem_is_one_line_naming_its_key(extra: str, problem: str) -> None:
    with pytest.raises(S.SiteError) as caught:
        parse(LINKS + STREET + extra + "\n")
    assert caught.value.problems[0].startswith(problem), caught.value.problems
