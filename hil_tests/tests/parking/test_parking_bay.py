"""A parking bay's sensor end to end: the parking firmware on an emulated esp32-parking
board with the QMC5883L model under the bay, the edge's parking scanner hearing its
adverts through bleak on the virtual air. A car arrives: the bay turns occupied once the
debounce has passed, and the edge commits it; the car leaves: the bay turns free, with
how long it was occupied."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from parking_rig import CAR, TEST_CONFIG, edge_scanner, start_bay, wait_for

from hil_tests.testing.fixtures import MakeBoard
from kommune.hil.radio import Air
from kommune.protocols import parking_report as pr
from kommune.protocols.hmac_sha256 import HmacKey

pytestmark = pytest.mark.micropython


async def test_a_car_parks_and_leaves_and_the_edge_commits_both(
    air: Air, make_board: MakeBoard, tmp_path: Path
) -> None:
    bay = await start_bay(air, make_board)
    async with edge_scanner(air, {bay.node: bay.key}, tmp_path) as edge:
        # After boot the bay decides "free" (the first report) once the debounce passed.
        assert await edge.wait_states(bay.node, 1) == [pr.FREE]

        arrived = time.monotonic()
        car = bay.park(CAR, ramp_s=0.5)
        assert await edge.wait_states(bay.node, 2) == [pr.FREE, pr.OCCUPIED]
        latency = edge.states(bay.node)[1][0] - arrived
        # Not before the debounce (0.5 s) after the field crossed the threshold, and well
        # within a second or two of the car's arrival (0.5 s ramp + 0.5 s debounce).
        assert TEST_CONFIG["debounce_ms"] / 1000 <= latency < 2.5, latency
        print(f"detection latency (arrival -> edge commit): {latency * 1000:.0f} ms")

        await asyncio.sleep(2.0)  # parked for a while
        bay.leave(car)
        left = time.monotonic()
        assert await edge.wait_states(bay.node, 3) == [pr.FREE, pr.OCCUPIED, pr.FREE]
        occupied_s = left - edge.states(bay.node)[1][0]
        # The previous state's duration, as the report carries it (whole seconds).
        assert edge.durations(bay.node)[-1] in range(int(occupied_s) - 1, int(occupied_s) + 2)

    # Each report the firmware printed is the one the edge verified, 8 bytes each.
    events = bay.events()
    assert [e.state for e in events] == ["free", "occupied", "free"]
    assert [e.seq for e in events] == sorted({e.seq for e in events})
    for e in events:
        assert len(e.report) == 8
        report = pr.verify(HmacKey(bay.key), bay.node, e.report)
        assert report.seq == e.seq and not report.heartbeat
    assert edge.scanner.verifier.refused == {}
    # The seqs the edge accepted are durable in its state directory.
    assert edge.scanner.seqs.last(bay.node) == (events[-1].seq, pr.FREE)


async def test_heartbeats_and_energy_account(air: Air, make_board: MakeBoard) -> None:
    bay = await start_bay(air, make_board, config={"heartbeat_s": 5})
    await wait_for(
        lambda: any(line.kind == "heartbeat" for line in bay.lines()), 12.0, what="a heartbeat"
    )
    beat = next(line for line in bay.lines() if line.kind == "heartbeat")
    assert beat.state == "free" and pr.decode(beat.report).heartbeat
    await wait_for(lambda: "energy avg_ua=" in bay.console(), 2.0, what="the energy line")
    line = next(s for s in bay.console().splitlines() if "energy avg_ua=" in s)
    print(line)
    fields = dict(part.split("=") for part in line.split()[2:])
    # The boot's "free" event was on air for burst_ms at adv_interval_ms: 31 adverts.
    assert int(fields["adv_events"]) == 1500 // 50 + 1
    assert int(fields["samples"]) >= 45  # 10 readings a second (+ calibration) for 5 s
    # In this test setting (10 readings a second, a burst in 5 s) the average is mA-scale;
    # years is the 17 Ah cell over it.
    avg_ua = float(fields["avg_ua"])
    assert 1000 < avg_ua < 5000, line
    assert abs(float(fields["years"]) - 17_000_000 / avg_ua / 8766) < 0.06


async def test_a_magnet_on_the_reed_switch_recalibrates(air: Air, make_board: MakeBoard) -> None:
    bay = await start_bay(air, make_board)
    await wait_for(lambda: [e.state for e in bay.events()] == ["free"], 5.0, what="free")
    # A new metal fixture beside the sensor: a lasting +16 uT shift reads as a car.
    earth = bay.scene.earth_ut
    bay.board.call(setattr, bay.scene, "earth_ut", (earth[0], earth[1], earth[2] - 16.0))
    await wait_for(
        lambda: [e.state for e in bay.events()] == ["free", "occupied"], 5.0, what="occupied"
    )
    # The technician holds a magnet to the reed switch (GPIO 4 pulled low) and takes it
    # away: the bay is re-baselined once the magnet is gone.
    bay.board.pins.drive(4, 0)
    bay.board.pins.drive(4, 1)
    await wait_for(lambda: bay.console().count("calibrated") == 2, 5.0, what="recalibration")
    await wait_for(
        lambda: [e.state for e in bay.events()] == ["free", "occupied", "free"],
        5.0,
        what="free after recalibration",
    )
