"""A lamp, its link pty, `kommune edge run` on that pty and a real Mosquitto: what the lamp
reports reaches a backend exactly once, though a lossy line makes it retransmit and a
power cut reboots it; a command written on the link beside the agent reaches the lamp's
PWM.

The lamp is on no street, so the agent's lamp control loop leaves it alone and the
test writes its SetLevel on the link itself (test_lamp_control.py has the agent command
lamps on a street)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from lamp_rig import ADDRESS, AGENT_ID, Agent, CommandWriter, site_file, start_lamp

from hil_tests.testing.fixtures import MakeBoard
from hil_tests.testing.mosquitto import Mosquitto
from hil_tests.testing.mqtt_backend import Backend
from hil_tests.testing.waiting import wait_until
from kommune.protocols import lamp as L
from kommune.protocols import runtime

pytestmark = pytest.mark.micropython


def _values(backend: Backend, stream: str) -> list[object]:
    """The values of a stream's records, each key once, in the order they first came."""
    return [r.value for k, r in backend.unique().items() if k[1] == stream]


async def test_lamp_reports_reach_the_backend_exactly_once_through_the_agent(
    make_board: MakeBoard, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    lamp = start_lamp(
        make_board,
        settings={"energy_report_s": 1, "ack_timeout_ms": 150},
        power_on=False,
        wait=False,
    )
    board = lamp.board
    site = site_file(
        tmp_path, link=board.link, broker_port=mosquitto.port, nodes=(ADDRESS,), street=False
    )
    node, lamp_streams = f"node-{ADDRESS}/", f"lamp-{ADDRESS}/"
    async with Backend("127.0.0.1", mosquitto.port) as backend:
        agent = Agent(site)
        writer = None
        try:
            await asyncio.to_thread(
                agent.wait_record, lambda r: "listening on serial" in r.get("message", "")
            )
            board.power_on()
            async with asyncio.timeout(20):
                await backend.wait_until(lambda b: bool(_values(b, node + "boot")))
            assert _values(backend, node + "boot") == [1]
            assert _values(backend, node + "reset-cause") == [1]
            assert _values(backend, node + "firmware") == ["1.0.0"]

            # A command from the edge's side, beside the agent.
            writer = CommandWriter(board.link)
            sent = time.monotonic()
            writer.send(L.SetLevel(level=254, fade_ms=300))
            await asyncio.to_thread(wait_until, lambda: lamp.level() == 254, 5.0)
            assert lamp.duties_since(sent)[-1][0] - sent >= 0.25, "faded, not jumped"

            # A lossy line from now on: acks get lost, the lamp retransmits.
            noise = board.link_noise(drop=0.02, seed=11)
            async with asyncio.timeout(20):
                await backend.wait_until(lambda b: 48.0 in _values(b, lamp_streams + "power"))
            board.call(lamp.load.burn_out)
            async with asyncio.timeout(20):
                await backend.wait_until(lambda b: _values(b, lamp_streams + "faults") == [1])
            board.call(lamp.load.repair)
            async with asyncio.timeout(20):
                await backend.wait_until(lambda b: _values(b, lamp_streams + "faults") == [1, 0])
            board.link_noise()
            assert noise.dropped > 0
            # Energy reports go on through the noise; let a few more arrive.
            reports = len(_values(backend, lamp_streams + "energy"))
            async with asyncio.timeout(20):
                await backend.wait_until(
                    lambda b: len(_values(b, lamp_streams + "energy")) >= reports + 2
                )
            # The lamp's own count shows the retransmissions the noise cost.
            writer.send(runtime.Request(msg_type=runtime.STATUS))
            async with asyncio.timeout(20):
                await backend.wait_until(lambda b: bool(_values(b, node + "tx-retries")))
            retries = _values(backend, node + "tx-retries")[-1]
            assert isinstance(retries, int) and retries > 0

            # A power cut (in the middle of whatever frame was on the line): the next boot
            # says Hello with the next boot count, and its reports are new events, not
            # taken for retransmissions of the last boot's.
            energy = len(_values(backend, lamp_streams + "energy"))
            board.power_cut()
            async with asyncio.timeout(20):
                await backend.wait_until(lambda b: _values(b, node + "boot") == [1, 2])
                await backend.wait_until(
                    lambda b: len(_values(b, lamp_streams + "energy")) >= energy + 2
                )
        finally:
            if writer is not None:
                writer.close()
            agent.close()
        counts = backend.keys()
        ours = [k for k in counts if k[1].startswith((node, lamp_streams))]
        assert all(k[0] == AGENT_ID for k in ours)
        assert not backend.duplicates()
        # One Hello per boot, each FailureReport once, however often they were sent.
        assert _values(backend, node + "boot") == [1, 2]
        assert _values(backend, lamp_streams + "faults") == [1, 0]
