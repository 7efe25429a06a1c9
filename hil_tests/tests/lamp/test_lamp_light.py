"""What the lamp's light does: levels through the logarithmic curve and its floor, fades of
the requested length that a new command interrupts, its own presence sensor brightening
it at once, the safe level when the edge falls silent, a burnt-out lamp reported, and
groups and scenes that survive a power cut."""

from __future__ import annotations

import struct
import time

import pytest
from lamp_rig import ADDRESS, PIN_PRESENCE, EdgeEnd, Lamp, start_lamp

from hil_tests.testing.fixtures import MakeBoard
from hil_tests.testing.waiting import wait_until
from kommune.protocols import frame as F
from kommune.protocols import lamp as L
from kommune.protocols import runtime

pytestmark = pytest.mark.micropython


def _levels(lamp: Lamp, since: float) -> list[tuple[float, int]]:
    return [(t, L.duty_to_level(d)) for t, d in lamp.duties_since(since)]


def test_a_fade_has_the_requested_length_and_shape_and_a_new_command_cuts_it(
    make_board: MakeBoard,
) -> None:
    lamp = start_lamp(make_board, settings={"pwm_hz": 25000, "floor_level": 20})
    with EdgeEnd(lamp.board.link) as edge:
        edge.wait_for(runtime.Hello)
        edge.command(L.SetLevel(level=10))  # below the floor: the floor's duty
        wait_until(lambda: lamp.duty() == L.level_to_duty(20))
        assert lamp.board.pwm(25) is not None and lamp.board.pwm(25).freq_hz == 25000  # type: ignore[union-attr]

        fade_ms = 1200
        sent = time.monotonic()
        edge.command(L.SetLevel(level=254, fade_ms=fade_ms))
        wait_until(lambda: lamp.level() == 254, timeout_s=5, what="the end of the fade")
        steps = _levels(lamp, sent)
        start, end = steps[0][0], steps[-1][0]
        assert fade_ms * 0.9 <= (end - start) * 1000 <= fade_ms * 1.25 + 60, steps
        levels = [level for _, level in steps]
        assert levels == sorted(levels), "a fade up never steps down"
        assert len(set(levels)) >= 30, "smooth: many small steps"
        for t, level in steps:  # linear in level over time (exponential in light)
            want = 20 + (254 - 20) * min(1.0, (t - start) * 1000 / fade_ms)
            assert abs(level - want) <= 25, (t - start, level, want)

        # A long fade down, cut short by a command: the output goes there at once and stays.
        edge.command(L.SetLevel(level=1, fade_ms=20000))
        wait_until(lambda: lamp.level() < 240, what="the slow fade under way")
        cut = time.monotonic()
        edge.command(L.SetLevel(level=150))
        wait_until(lambda: lamp.level() == 150)
        edge.command(L.SetLevel(level=L.MASK))  # nothing fades: nothing to stop
        # No event says "nothing happened": the 20 s fade would have moved the output by
        # ~4 levels in this time.
        time.sleep(0.3)
        assert [lv for _, lv in _levels(lamp, cut)][-1:] == [150]
        assert {lv for _, lv in _levels(lamp, cut)} <= set(range(150, 255))


def test_presence_brightens_at_once_and_fades_back_after_the_hold(make_board: MakeBoard) -> None:
    lamp = start_lamp(
        make_board,
        settings={"presence_level": 230, "presence_hold_s": 1, "presence_fade_ms": 400},
    )
    board = lamp.board
    with EdgeEnd(board.link) as edge:
        edge.wait_for(runtime.Hello)
        edge.command(L.SetLevel(level=60))
        wait_until(lambda: lamp.level() == 60)
        latencies = []
        for _ in range(5):
            wait_until(lambda: lamp.level() == 60, what="back to the commanded level")
            t0 = time.monotonic()
            board.pins.drive(PIN_PRESENCE, 1)
            wait_until(lambda: lamp.level() == 230, timeout_s=2, interval_s=0.001)
            change = lamp.duties_since(t0)[0]
            latencies.append(change[0] - t0)
            assert change[1] == L.level_to_duty(230), "straight up, no fade"
            present = edge.wait_for(L.Presence, lambda m: m.present == 1, after=t0)
            assert present.sensor == 0
            board.pins.drive(PIN_PRESENCE, 0)
            cleared = time.monotonic()
            edge.wait_for(L.Presence, lambda m: m.present == 0, after=cleared)
            held = time.monotonic() - cleared
            assert held >= 0.9, "kept up for the hold time"
        latencies.sort()
        print(
            f"presence -> PWM: median {latencies[2] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f}"
        )
        assert latencies[2] < 0.05
        # While someone is there an edge command below the presence level changes nothing.
        board.pins.drive(PIN_PRESENCE, 1)
        wait_until(lambda: lamp.level() == 230)
        edge.command(L.SetLevel(level=10))
        assert lamp.level() == 230
        board.pins.drive(PIN_PRESENCE, 0)
        wait_until(lambda: lamp.level() == 10, timeout_s=4, what="the commanded level after")


def test_edge_silence_brings_the_safe_level_never_dark(make_board: MakeBoard) -> None:
    lamp = start_lamp(make_board, settings={"silence_s": 2, "safe_level": 200, "safe_fade_ms": 300})
    with EdgeEnd(lamp.board.link) as edge:
        edge.wait_for(runtime.Hello)
        edge.command(L.SetLevel(level=0))  # off (daytime, say)
        wait_until(lambda: lamp.duty() == 0)
        # The edge keeps answering the lamp's time requests: it is there, and for longer
        # than silence_s nothing changes (no event says "nothing happened").
        time.sleep(2.5)
        assert lamp.duty() == 0
        edge.mute = True
        went_silent = time.monotonic()
        wait_until(lambda: lamp.level() == 200, timeout_s=6, what="the safe level")
        took = lamp.duties_since(went_silent)[0][0] - went_silent
        assert 1.3 <= took <= 3.0, took  # silence_s after the last frame heard
        edge.wait_for(runtime.LogRecord, lambda m: b"edge silent" in m.text, after=went_silent)
        # The edge is back: the lamp stays safe until it is told otherwise.
        edge.mute = False
        edge.command(L.SetLevel(level=50))
        wait_until(lambda: lamp.level() == 50)


def test_energy_reports_and_a_burnt_out_lamp(make_board: MakeBoard) -> None:
    lamp = start_lamp(make_board, settings={"energy_report_s": 1, "open_samples": 3})
    board = lamp.board
    with EdgeEnd(board.link) as edge:
        edge.wait_for(runtime.Hello)
        edge.command(L.SetLevel(level=254))
        t = time.monotonic()
        report = edge.wait_for(L.EnergyReport, lambda m: m.level == 254, after=t + 0.2)
        assert 470 <= report.power_w_x10 <= 490  # 48 V x 1 A
        assert not edge.of_type(L.FailureReport)
        board.call(lamp.load.burn_out)
        burnt = time.monotonic()
        failure = edge.wait_for(L.FailureReport, after=burnt, timeout_s=3)
        assert (failure.faults, failure.level) == (L.FAULT_LAMP_OPEN, 254)
        detect_s = edge.heard_frames(L.FailureReport)[0].t - burnt
        print(f"burnt-out lamp reported after {detect_s * 1000:.0f} ms")
        assert edge.wait_for(L.EnergyReport, after=burnt + 0.5).power_w_x10 < 5
        board.call(lamp.load.repair)
        assert edge.wait_for(L.FailureReport, lambda m: m.faults == 0, after=burnt).level == 254
        edge.command(L.SetLevel(level=0))
        # The energy is kept in flash (at every report) across a power cut.
        on_s = time.monotonic() - t
        edge.wait_for(L.EnergyReport, lambda m: m.level == 0, after=time.monotonic())
        board.power_cut(off_s=None)
        board.wait_state("off")
        magic, wh, mwh, burn_s = struct.unpack(">4sIHI", board.read_file("/lamp/energy.bin"))
        assert magic == b"KLE1"
        total_mwh = wh * 1000 + mwh
        assert 0.3 * on_s * 48_000 / 3600 <= total_mwh <= on_s * 48_000 / 3600 + 5
        assert 1 <= burn_s <= on_s + 2


def test_groups_scenes_and_settings_survive_a_power_cut(make_board: MakeBoard) -> None:
    lamp = start_lamp(make_board)
    board = lamp.board
    with EdgeEnd(board.link) as edge:
        edge.wait_for(runtime.Hello)
        pwm_hz = 0x20
        # Settings: flicker-safe PWM only; a new frequency applies at once, and is kept.
        slow = edge.command(runtime.ConfigSet(key=pwm_hz, value=(2000).to_bytes(2, "big")))
        assert isinstance(slow, runtime.Nack) and slow.code == runtime.NACK_BAD_VALUE
        ok = edge.command(runtime.ConfigSet(key=pwm_hz, value=(4000).to_bytes(2, "big")))
        assert isinstance(ok, runtime.Ack)
        wait_until(lambda: lamp.board.pwm(25) is not None and lamp.board.pwm(25).freq_hz == 4000)  # type: ignore[union-attr]
        # The log ring tells the edge what happened, on request (info is not pushed).
        assert not edge.of_type(runtime.LogRecord)
        edge.command(runtime.Request(msg_type=runtime.LOG))
        record = edge.wait_for(runtime.LogRecord, lambda m: m.text == b"config 32 set")
        assert record.level == runtime.LOG_INFO
        assert isinstance(edge.command(runtime.Groups(groups=[5, 4094])), runtime.Ack)
        assert isinstance(edge.command(L.StoreScene(scene=3, level=77)), runtime.Ack)
        assert isinstance(edge.command(L.StoreScene(scene=4, level=L.MASK)), runtime.Ack)
        boots = board.boots
        since = time.monotonic()
        board.power_cut()
        board.wait_booted(after=boots)
        edge.wait_for(runtime.Hello, after=since)
        wait_until(lambda: lamp.level() == 100, what="the power-on level")
        assert lamp.board.pwm(25).freq_hz == 4000  # type: ignore[union-attr]
        since = time.monotonic()
        edge.command(runtime.ConfigGet(key=pwm_hz))
        value = edge.wait_for(runtime.ConfigValue, after=since)
        assert (value.key, value.value) == (pwm_hz, (4000).to_bytes(4, "big"))
        # Group and broadcast frames ask for no ack; the lamp acts on those it is in.
        edge.write(L.RecallScene(scene=3, fade_ms=0), dst=F.group_address(5))
        wait_until(lambda: lamp.level() == 77, what="scene 3 by group 5")
        edge.write(L.SetLevel(level=200), dst=F.group_address(6))  # not a member
        edge.write(L.RecallScene(scene=4), dst=F.BROADCAST)  # not in scene 4
        edge.write(L.SetLevel(level=120), dst=F.group_address(4094))
        wait_until(lambda: lamp.level() == 120, what="level by group 4094")
        assert 200 not in [lv for _, lv in _levels(lamp, since)]
        edge.command(L.SetLevel(level=121), dst=ADDRESS)
        wait_until(lambda: lamp.level() == 121)
    board.power_cut(off_s=None)
    board.wait_state("off")
    assert board.read_file("/lamp/scenes.bin")[3:5] == bytes((77, 255))
    assert board.read_file("/node/groups.bin") == struct.pack(">HH", 5, 4094)
