"""Forged and replayed parking reports on the air are refused by the edge: an attacker
with a radio (a Bumble host on the virtual air) advertises a report whose tag it had to
guess, and replays a genuine report the bay sent earlier. Neither reaches the outbox;
the bay's real reports still do."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from bumble.device import AdvertisingType
from parking_rig import CAR, edge_scanner, start_bay, wait_for

from hil_tests.testing.fixtures import MakeBoard
from kommune.edge.ble import hold_host
from kommune.edge.parking.verifier import FORGED, REPLAYED, UNKNOWN_BAY
from kommune.hil.radio import Air
from kommune.protocols import parking_report as pr

pytestmark = pytest.mark.micropython


def advert(node: int, report: bytes) -> bytes:
    """A parking advert as the firmware builds it (firmware/parking/advert.py)."""
    data = struct.pack("<H", 0xFFFF) + b"KP" + struct.pack(">BH", 1, node) + report
    return b"\x02\x01\x06" + bytes([len(data) + 1, 0xFF]) + data


async def test_forged_and_replayed_reports_are_refused(
    air: Air, make_board: MakeBoard, tmp_path: Path
) -> None:
    bay = await start_bay(air, make_board)
    attacker = await air.add_device("attacker")
    async with (
        edge_scanner(air, {bay.node: bay.key}, tmp_path) as edge,
        hold_host(attacker.transport) as radio,
    ):
        assert await edge.wait_states(bay.node, 1) == [pr.FREE]
        first = bay.events()[0].report  # the genuine "free" report, seq 0, recorded off air
        car = bay.park(CAR)
        assert await edge.wait_states(bay.node, 2) == [pr.FREE, pr.OCCUPIED]
        refused = edge.scanner.verifier.refused

        async def on_air(report: bytes, node: int = bay.node) -> None:
            if radio.device.is_advertising:
                await radio.device.stop_advertising()
            await radio.device.start_advertising(
                advertising_type=AdvertisingType.UNDIRECTED,
                advertising_data=advert(node, report),
                advertising_interval_min=30,
                advertising_interval_max=30,
            )

        # Forged: "free" with a fresh seq, the tag guessed (2**-32 per try).
        head = pr.Report(state=pr.FREE, seq=1000, duration_s=60).head()
        await on_air(head + os.urandom(4))
        await wait_for(lambda: refused[FORGED] >= 1, 5.0, what="the forgery refused")
        # Replayed: the bay's own genuine "free" report of seq 0, heard again.
        await on_air(first)
        await wait_for(lambda: refused[REPLAYED] >= 1, 5.0, what="the replay refused")
        # A genuine-looking report for a bay this edge does not have.
        await on_air(first, node=bay.node + 1)
        await wait_for(lambda: refused[UNKNOWN_BAY] >= 1, 5.0, what="the stranger refused")
        await radio.device.stop_advertising()

        assert [s for _, s in edge.states(bay.node)] == [pr.FREE, pr.OCCUPIED]
        assert edge.scanner.seqs.last(bay.node) == (bay.events()[-1].seq, pr.OCCUPIED)

        # The real bay still gets through.
        bay.leave(car)
        assert await edge.wait_states(bay.node, 3) == [pr.FREE, pr.OCCUPIED, pr.FREE]
