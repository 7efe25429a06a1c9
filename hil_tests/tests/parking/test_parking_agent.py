"""The parking scanner inside `kommune edge run`: a bay on the virtual air, the agent
scanning through its own radio ([parking] transport), a real Mosquitto and a backend.
A car parks and leaves; the backend gets the bay's states, once each."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from parking_rig import CAR, Agent, site_file, start_bay, wait_for

from hil_tests.testing.fixtures import MakeBoard
from hil_tests.testing.mosquitto import Mosquitto
from hil_tests.testing.mqtt_backend import Backend
from kommune.hil.radio import Air

pytestmark = pytest.mark.micropython


def states(backend: Backend, node: int) -> list[object]:
    return [r.value for k, r in backend.unique().items() if k[1] == f"bay-{node}/occupancy"]


async def test_the_agent_commits_a_bays_changes_and_the_backend_gets_them_once(
    air: Air, make_board: MakeBoard, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    bay = await start_bay(air, make_board)
    radio = await air.add_device("agent-radio")
    site = site_file(
        tmp_path,
        broker_port=mosquitto.port,
        transport=radio.transport,
        bay_keys={bay.node: bay.key},
    )
    async with Backend("127.0.0.1", mosquitto.port) as backend:
        agent = Agent(site)
        try:
            await asyncio.to_thread(
                agent.wait_record, lambda r: "parking scanner started" in r["message"]
            )
            car = bay.park(CAR)
            await wait_for(lambda: states(backend, bay.node)[-1:] == [1], 20.0, what="occupied")
            bay.leave(car)
            await wait_for(lambda: states(backend, bay.node)[-1:] == [0], 20.0, what="free")
        finally:
            agent.close()
    # The scanner may have started after the bay's first "free" burst was over.
    assert states(backend, bay.node) in ([0, 1, 0], [1, 0])
    assert not backend.duplicates()
    durations = [r.value for k, r in backend.unique().items() if k[1].endswith("prev-duration")]
    assert durations and all(isinstance(d, int | float) for d in durations)
