"""Parking messages: occupancy events, heartbeats, calibration."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kommune.protocols import frame, message, parking
from kommune.protocols.errors import ProtocolError


def test_occupancy_event_is_a_few_bytes_on_the_wire() -> None:
    event = parking.Occupancy(state=parking.OCCUPIED, event_seq=42, prev_duration_s=3600)
    assert event.to_bytes() == bytes([1, 0, 42, 0, 0, 0x0E, 0x10])
    wire = message.encode_frame(event, dst=frame.EDGE, src=0x0107, seq=9)
    assert len(wire) == 21  # 7 payload + 10 header + 2 CRC + COBS code + delimiter


def test_states_are_free_occupied_unknown() -> None:
    for state in (parking.FREE, parking.OCCUPIED, parking.UNKNOWN):
        assert parking.Occupancy.from_bytes(bytes([state, 0, 1, 0, 0, 0, 5])).state == state
    with pytest.raises(ProtocolError, match="bad_value"):
        parking.Occupancy.from_bytes(bytes([3, 0, 1, 0, 0, 0, 5]))
    with pytest.raises(ProtocolError, match="bad_value"):
        parking.Heartbeat(state=7).to_bytes()


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_thresholds_keep_their_hysteresis_both_ways(occupied_above: int, free_below: int) -> None:
    for cls in (parking.Calibrate, parking.CalibrationReport):
        m = cls(occupied_above_ut_x10=occupied_above, free_below_ut_x10=free_below)
        if free_below <= occupied_above:
            assert cls.from_bytes(m.to_bytes()) == m
            continue
        with pytest.raises(ProtocolError, match="bad_value"):
            m.to_bytes()
        valid = cls(occupied_above_ut_x10=free_below, free_below_ut_x10=occupied_above).to_bytes()
        end = len(valid) - 1  # the two thresholds sit just before debounce_s
        swapped = valid[: end - 4] + valid[end - 2 : end] + valid[end - 4 : end - 2] + valid[end:]
        with pytest.raises(ProtocolError, match="bad_value"):
            cls.from_bytes(swapped)


def test_calibration_report_baseline_is_signed() -> None:
    r = parking.CalibrationReport(
        baseline_x_ut_x10=-32768, baseline_y_ut_x10=32767, baseline_z_ut_x10=-1
    )
    wire = r.to_bytes()
    assert wire[:6] == bytes([0x80, 0x00, 0x7F, 0xFF, 0xFF, 0xFF])
    assert parking.CalibrationReport.from_bytes(wire) == r


def test_calibrate_action_is_keep_or_rebaseline() -> None:
    with pytest.raises(ProtocolError, match="bad_value"):
        parking.Calibrate(action=2).to_bytes()
