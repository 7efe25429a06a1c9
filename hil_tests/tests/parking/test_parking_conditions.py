"""What must not flip a bay: a car in the neighbouring bay (a weaker signature), slow
magnetic drift, and the cold -- on a chip whose offset drifts 0.5 uT per degC on z, so a
25 degC colder night moves the field by more than the "free" threshold. The firmware
learns the drift per degC while the bay is free and compensates with it while a car
hides the baseline."""

from __future__ import annotations

import asyncio
import re

import pytest
from parking_rig import CAR, NEIGHBOUR, TEST_CONFIG, Bay, start_bay, wait_for

from hil_tests.testing.fixtures import MakeBoard
from kommune.hil.radio import Air

pytestmark = pytest.mark.micropython

DRIFT_UT_PER_C = (0.15, -0.1, 0.5)


def states(bay: Bay) -> list[str]:
    return [e.state for e in bay.events()]


async def sweep(bay: Bay, start_c: float, end_c: float, step_c: float, every_s: float) -> None:
    """Change the chip's temperature in small steps (the weather is slow; this is faster)."""
    n = round(abs(end_c - start_c) / step_c)
    for i in range(1, n + 1):
        bay.set_temperature(start_c + (end_c - start_c) * i / n)
        await asyncio.sleep(every_s)


async def hold(bay: Bay, seconds: float, expected: list[str]) -> None:
    """For `seconds`, the bay reports nothing beyond `expected`."""
    await asyncio.sleep(seconds)
    assert states(bay) == expected, bay.console()[-2000:]


async def test_neighbour_drift_and_cold_do_not_flip_the_bay(
    air: Air, make_board: MakeBoard
) -> None:
    bay = await start_bay(
        air, make_board, scene={"drift_ut_per_c": DRIFT_UT_PER_C, "temperature_c": 20.0}
    )
    await wait_for(lambda: states(bay) == ["free"], 5.0, what="the first decision")

    # A car parks in the neighbouring bay: ~8.6 uT here, below the occupied threshold.
    neighbour = bay.park(NEIGHBOUR)
    await hold(bay, 2.0, ["free"])
    bay.leave(neighbour)

    # Slow magnetic drift (+4 uT on z): the free bay's baseline follows it.
    earth = bay.scene.earth_ut
    for i in range(1, 9):
        bay.board.call(setattr, bay.scene, "earth_ut", (earth[0], earth[1], earth[2] + i * 0.5))
        await asyncio.sleep(0.3)
    await hold(bay, 0.5, ["free"])

    # An autumn evening, 20 -> 0 degC while free: 10 uT of drift on z, learned per degC.
    await sweep(bay, 20.0, 0.0, 1.0, 0.3)
    await hold(bay, 0.5, ["free"])
    learned = re.findall(r"drift learned k=\[([^\]]+)\]", bay.console())
    assert learned, bay.console()[-2000:]
    k = [float(v) for v in learned[-1].split(",")]
    assert all(abs(a - b) < 0.08 for a, b in zip(k, DRIFT_UT_PER_C, strict=True)), k

    # A car parks and stays through a cold night, 0 -> -25 degC (12.5 uT more drift).
    car = bay.park(CAR)
    await wait_for(lambda: states(bay) == ["free", "occupied"], 3.0, what="occupied")
    await sweep(bay, 0.0, -25.0, 1.0, 0.05)
    await hold(bay, 0.5, ["free", "occupied"])

    # It leaves in the cold: free again, though the raw field is far from the old baseline.
    bay.leave(car)
    await wait_for(
        lambda: states(bay) == ["free", "occupied", "free"], 3.0, what="free after the car"
    )
    await hold(bay, 1.0, ["free", "occupied", "free"])
    # Uncompensated, the cold night alone would have kept the bay "occupied": 12.5 uT of
    # drift on z against the "free" threshold (8 uT by default).
    assert 25 * DRIFT_UT_PER_C[2] > TEST_CONFIG.get("free_below_ut_x10", 80) / 10
