"""The agent's lamp control loop on a street of three emulated lamps, each on its own
serial link (a pty at 115200 baud) to one `kommune edge run`: the agent dims the street to
idle; someone walks up to the first lamp, which brightens by itself, and the agent
brightens the lamp ahead of it through its command path -- the lamp after that stays
idle; when the area has been clear for the hold time, both fade back to idle."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from lamp_rig import PIN_PRESENCE, Agent, Lamp, start_lamp

from hil_tests.testing.fixtures import MakeBoard
from hil_tests.testing.mosquitto import Mosquitto
from hil_tests.testing.waiting import wait_until
from kommune.edge.lighting.control import level_of_percent
from kommune.protocols import lamp as L

pytestmark = pytest.mark.micropython

STREET = (18, 19, 20)
IDLE = level_of_percent(20)
ON = 254
HOLD_S = 1.0
FADE_S = 0.5


def _site(folder: Path, lamps: list[Lamp], broker_port: int) -> Path:
    """One serial link per lamp, the three in a street: a presence lights the lamp and
    the one ahead, held HOLD_S, faded back over FADE_S."""
    links = "".join(
        f'[[links]]\nid = "pole-{address}"\nserial = "{lamp.board.link}"\nnodes = [{address}]\n\n'
        for address, lamp in zip(STREET, lamps, strict=True)
    )
    path = folder / "site.toml"
    path.write_text(
        '[agent]\nid = "lamp-agent"\nsite = "lab"\n\n'
        f'[broker]\nhost = "127.0.0.1"\ntls = false\nport = {broker_port}\n\n'
        '[outbox]\ndir = "state"\n\n[health]\nbind = "127.0.0.1:0"\n\n'
        + links
        + f'[[streets]]\nname = "storgata"\nlamps = {list(STREET)}\n'
        f"ahead = 1\nbehind = 0\nhold_s = {HOLD_S}\nfade_s = {FADE_S}\n"
    )
    return path


def _health(agent: Agent) -> dict[str, Any]:
    port = agent.port()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
        doc: dict[str, Any] = json.load(answer)
    return doc


def test_presence_at_a_lamp_lights_the_one_ahead_through_the_agent_then_both_fade_back(
    make_board: MakeBoard, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    lamps = [
        start_lamp(make_board, name=f"lamp-{a}", address=a, settings={"power_on_level": 100})
        for a in STREET
    ]
    first, ahead, beyond = lamps
    agent = Agent(_site(tmp_path, lamps, mosquitto.port))
    try:
        # The agent takes the street to idle (each lamp also says Hello and is told again).
        for lamp in lamps:
            wait_until(lambda lamp=lamp: lamp.level() == IDLE, 20, what="the street at idle")

        # Someone at the first lamp: it brightens by itself, at once ...
        walked_up = time.monotonic()
        first.board.pins.drive(PIN_PRESENCE, 1)
        wait_until(lambda: first.level() == ON, 2, interval_s=0.001, what="the first lamp on")
        # ... and the agent, told by its Presence, brightens the lamp ahead (no fade).
        wait_until(lambda: ahead.level() == ON, 5, interval_s=0.001, what="the lamp ahead on")
        [(lit_at, duty)] = ahead.duties_since(walked_up)
        assert duty == L.level_to_duty(ON), "straight up, no fade"
        print(f"\npresence pin -> the lamp ahead on: {(lit_at - walked_up) * 1000:.1f} ms")
        assert beyond.duties_since(walked_up) == [], "two lamps ahead: not lit"

        # The walker stays a while: nothing changes. Then the area clears: the first lamp
        # reports it at once (its own hold is 0 s here), the agent holds both lamps for
        # HOLD_S, then fades them back to idle over FADE_S.
        first.board.pins.drive(PIN_PRESENCE, 0)
        cleared = time.monotonic()
        for lamp in (first, ahead):
            wait_until(lambda lamp=lamp: lamp.level() == IDLE, 10, what="back to idle")
        steps = ahead.duties_since(cleared)
        began, ended = steps[0][0], steps[-1][0]
        assert began - cleared >= HOLD_S - 0.05, f"held {began - cleared:.2f} s"
        assert began - cleared < HOLD_S + 1.0, f"held {began - cleared:.2f} s"
        assert FADE_S * 0.8 <= ended - began <= FADE_S + 0.3, "a fade, not a jump"
        levels = [L.duty_to_level(d) for _, d in steps]
        assert levels == sorted(levels, reverse=True) and len(set(levels)) > 10
        assert first.duties_since(cleared)[0][0] - cleared >= HOLD_S - 0.05
        assert beyond.duties_since(walked_up) == []

        health = _health(agent)
        lighting = health["parts"]["lighting"]
        assert lighting["ok"] is True and lighting["lamps"] == 3
        per_node = health["parts"]["links"]["links"]["pole-19"]["per_node"]["19"]
        assert per_node["failures"] == 0 and per_node["pending"] == 0
        print(
            f"command round trip over the 115200-baud pty (the agent's view): "
            f"{per_node['round_trip_ms']} ms; decision max {lighting['decision_ms_max']} ms"
        )
    finally:
        agent.close()
