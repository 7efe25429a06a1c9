"""Lamp messages and the DALI-style dimming curve."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kommune.protocols import frame, lamp, message
from kommune.protocols.errors import ProtocolError
from kommune.protocols.frame import Frame

LEVELS = range(lamp.MAX_LEVEL + 1)


def dali_duty(level: int) -> int:
    """IEC 62386-102 arc power curve: X(n) = 10 ** ((n - 1) / (253 / 3) - 1) percent."""
    if level == 0:
        return 0
    return round(lamp.MAX_DUTY * 10 ** ((level - 1) / (253 / 3) - 1) / 100)


def test_duty_table_is_the_dali_curve() -> None:
    assert [lamp.level_to_duty(n) for n in LEVELS] == [dali_duty(n) for n in LEVELS]


def test_curve_end_points_and_decades() -> None:
    assert lamp.level_to_duty(0) == 0
    assert lamp.level_to_duty(1) == 66  # 0.1 % of 65535
    assert lamp.level_to_duty(254) == lamp.MAX_DUTY
    # 253 steps span three decades: every ~84.3 levels the output grows tenfold
    assert abs(lamp.level_to_duty(170) / lamp.level_to_duty(254) - 0.1) < 0.002
    assert abs(lamp.level_to_duty(86) / lamp.level_to_duty(254) - 0.01) < 0.0003


def test_equal_level_steps_are_equal_ratios() -> None:
    # the point of a logarithmic curve: each step is ~2.8 % brighter than the last
    ratios = [lamp.level_to_duty(n + 1) / lamp.level_to_duty(n) for n in range(40, 254)]
    assert all(abs(r - 10 ** (3 / 253)) < 0.02 for r in ratios)
    assert all(lamp.level_to_duty(n) < lamp.level_to_duty(n + 1) for n in range(254))


def test_duty_to_level_inverts_level_to_duty() -> None:
    assert [lamp.duty_to_level(lamp.level_to_duty(n)) for n in LEVELS] == list(LEVELS)


@given(st.integers(0, lamp.MAX_DUTY))
def test_duty_to_level_picks_the_nearest_level(duty: int) -> None:
    level = lamp.duty_to_level(duty)
    err = abs(lamp.level_to_duty(level) - duty)
    for other in (level - 1, level + 1):
        if 0 <= other <= lamp.MAX_LEVEL:
            assert err <= abs(lamp.level_to_duty(other) - duty)


@pytest.mark.parametrize(
    ("fn", "arg"),
    [
        (lamp.level_to_duty, 255),
        (lamp.level_to_duty, -1),
        (lamp.duty_to_level, 65536),
        (lamp.duty_to_level, -1),
    ],
)
def test_curve_rejects_out_of_range_input(fn: Callable[[int], int], arg: int) -> None:
    with pytest.raises(ProtocolError, match="bad_value"):
        fn(arg)


def test_set_level_bytes() -> None:
    assert lamp.SetLevel(level=200, fade_ms=1500).to_bytes() == bytes([200, 0x05, 0xDC])
    assert lamp.SetLevel.from_bytes(b"\xff\x00\x00") == lamp.SetLevel(level=lamp.MASK)


def test_group_set_is_set_level_to_a_group_address() -> None:
    wire = message.encode_frame(
        lamp.SetLevel(level=120, fade_ms=800), dst=frame.group_address(12), seq=5
    )
    f = Frame.from_bytes(wire)
    assert frame.group_of(f.dst) == 12
    assert frame.accepts(f.dst, 0x0042, [3, 12]) and not frame.accepts(f.dst, 0x0042, [3])
    assert message.decode_frame(f) == lamp.SetLevel(level=120, fade_ms=800)


def test_scene_numbers_are_0_to_15() -> None:
    lamp.RecallScene(scene=15).to_bytes()
    with pytest.raises(ProtocolError, match="bad_value"):
        lamp.RecallScene(scene=16).to_bytes()
    with pytest.raises(ProtocolError, match="bad_value"):
        lamp.StoreScene.from_bytes(b"\x10\x80")


def test_reports_carry_signed_temperatures_and_large_counters() -> None:
    r = lamp.FailureReport(faults=lamp.FAULT_DRIVER_OVERTEMP, level=10, driver_temp_c_x10=-400)
    assert lamp.FailureReport.from_bytes(r.to_bytes()).driver_temp_c_x10 == -400
    e = lamp.EnergyReport(energy_wh=0xFFFFFFFF, burn_hours=0xFFFFFFFF, level=254)
    assert lamp.EnergyReport.from_bytes(e.to_bytes()) == e


def test_presence_is_present_or_cleared() -> None:
    with pytest.raises(ProtocolError, match="bad_value"):
        lamp.Presence.from_bytes(bytes([0, 2, 0, 0]))


@pytest.mark.micropython
def test_set_level_decode_allocates_at_most_64_bytes_on_micropython() -> None:
    # The bench workload, run small: a lamp node's receive path, in the real VM.
    from kommune.bench import protocols_vm
    from kommune.hil import vm
    from kommune.hil.paths import PROTOCOLS_ROOT

    proc = vm.run([protocols_vm.__file__, "50"], path=[PROTOCOLS_ROOT], heapsize="64K")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert 0 <= result["alloc_bytes_per_decode"] <= 64
