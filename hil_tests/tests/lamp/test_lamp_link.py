"""A lamp on its node link, the test playing the edge: the Hello comes first after every
boot and is repeated until acked; commands are acted on once however often they are
retransmitted; garbage, lost bytes and a reboot in the middle of a frame cost frames,
never the firmware."""

from __future__ import annotations

import os
import time

import pytest
from lamp_rig import ADDRESS, EdgeEnd, start_lamp

from hil_tests.testing.fixtures import MakeBoard
from hil_tests.testing.waiting import wait_until
from kommune.protocols import frame as F
from kommune.protocols import lamp as L
from kommune.protocols import runtime

pytestmark = pytest.mark.micropython


def test_hello_first_retransmitted_until_acked_and_counted_across_boots(
    make_board: MakeBoard,
) -> None:
    lamp = start_lamp(make_board, wait=False, power_on=False)
    board = lamp.board
    with EdgeEnd(board.link) as edge:
        acked_after = 3
        edge.ack = lambda h: len(edge.heard_frames(runtime.Hello)) >= acked_after
        board.power_on()
        board.wait_booted()
        wait_until(lambda: len(edge.heard_frames(runtime.Hello)) >= acked_after, what="3 Hellos")
        hellos = edge.heard_frames(runtime.Hello)[:acked_after]
        first = hellos[0]
        assert first is edge.heard[0], "the Hello is the first frame of the boot"
        assert [h.frame.seq for h in hellos] == [first.frame.seq] * acked_after
        assert [h.frame.flags for h in hellos] == [
            F.FLAG_ACK_REQUESTED,
            F.FLAG_ACK_REQUESTED | F.FLAG_RETRY,
            F.FLAG_ACK_REQUESTED | F.FLAG_RETRY,
        ]
        hello = first.msg
        assert isinstance(hello, runtime.Hello)
        assert (hello.kind, hello.hw_rev, hello.boot_count) == (runtime.KIND_LAMP, 1, 1)
        assert (hello.fw_major, hello.fw_minor, hello.fw_patch) == (1, 0, 0)
        assert hello.reset_cause == runtime.RESET_POWER_ON
        assert hello.uid == board.emulated.unique_id
        assert first.frame.src == ADDRESS and first.frame.dst == F.EDGE
        # Acked: no more Hellos; the lamp answers the edge.
        status = edge.command(runtime.Request(msg_type=runtime.STATUS))
        assert isinstance(status, runtime.Ack)
        edge.wait_for(runtime.Status)
        assert len(edge.heard_frames(runtime.Hello)) == acked_after

        # The next boot: a new boot count, a new random first seq, the Hello again first.
        boots = board.boots
        since = time.monotonic()
        board.reset()
        board.wait_booted(after=boots)
        again = edge.wait_for(runtime.Hello, after=since)
        assert (again.boot_count, again.reset_cause) == (2, runtime.RESET_HARD)
        later = [h for h in edge.heard if h.t >= since]
        assert isinstance(later[0].msg, runtime.Hello)


def test_a_retransmitted_command_is_acted_on_once(make_board: MakeBoard) -> None:
    lamp = start_lamp(make_board)
    with EdgeEnd(lamp.board.link) as edge:
        edge.wait_for(runtime.Hello)
        seq = edge.next_seq()
        flags = F.FLAG_ACK_REQUESTED
        edge.write(L.SetLevel(level=30), seq=seq, flags=flags)
        wait_until(lambda: seq in edge.answers, what="the ack")
        wait_until(lambda: lamp.level() == 30)
        # The "same" frame again (our ack was lost, as far as the edge knows) - even
        # with other content, it is answered as before and not acted on.
        changes = len(lamp.board.pwm_history(25))
        del edge.answers[seq]
        edge.write(L.SetLevel(level=200), seq=seq, flags=flags | F.FLAG_RETRY)
        wait_until(lambda: seq in edge.answers, what="the second ack")
        assert isinstance(edge.answers[seq], runtime.Ack)
        assert lamp.level() == 30 and len(lamp.board.pwm_history(25)) == changes
        # Payloads the lamp cannot take are refused with the reason, and it goes on.
        nack = edge.command(runtime.Request(msg_type=0x40))  # parking Occupancy
        assert isinstance(nack, runtime.Nack) and nack.code == runtime.NACK_NOT_SUPPORTED
        nack = edge.command(L.RecallScene(scene=1), dst=ADDRESS)
        assert isinstance(nack, runtime.Ack)
        bad = edge.command(runtime.ConfigSet(key=0x99, value=b"\x01"))
        assert isinstance(bad, runtime.Nack) and bad.code == runtime.NACK_UNKNOWN_KEY
        wire = F.Frame(L.SET_LEVEL, b"\x10", dst=ADDRESS, seq=edge.next_seq(), flags=1)
        edge.raw(b"\x00" + wire.to_bytes())
        wait_until(lambda: wire.seq in edge.answers, what="the nack")
        truncated = edge.answers[wire.seq]
        assert isinstance(truncated, runtime.Nack) and truncated.code == runtime.NACK_TRUNCATED
        # Frames for another node are not ours: no answer, no action.
        edge.write(L.SetLevel(level=254), dst=ADDRESS + 1, flags=F.FLAG_ACK_REQUESTED)
        edge.command(L.SetLevel(level=40))
        wait_until(lambda: lamp.level() == 40)
        assert 254 not in [L.duty_to_level(d) for _, d in lamp.duties_since(0)][1:]


def test_garbage_lost_bytes_and_a_reboot_mid_frame_never_stop_the_firmware(
    make_board: MakeBoard,
) -> None:
    lamp = start_lamp(make_board)
    board = lamp.board
    with EdgeEnd(board.link) as edge:
        edge.wait_for(runtime.Hello)
        rng = os.urandom
        # Garbage of every kind between good frames, and a noisy line both ways.
        noise = board.link_noise(drop=0.01, flip=0.01, seed=3)
        for i in range(40):
            edge.raw(rng(1 + i * 7 % 300))
            if i % 8 == 0:
                edge.raw(b"\x00" * 3 + b"\xff" * 260 + b"\x00")  # oversize, bad COBS
        for level in (50, 60, 70):
            edge.command(L.SetLevel(level=level), timeout_s=15)
        wait_until(lambda: lamp.level() == 70, what="level 70 through the noise")
        assert noise.dropped + noise.flipped > 0
        board.link_noise()  # a clean line again

        # Half a frame, then the lamp reboots; the rest of the frame arrives at the new
        # boot, which must take it as the garbage it is.
        wire = F.Frame(L.SET_LEVEL, b"\xfe\x00\x00", dst=ADDRESS, seq=edge.next_seq(), flags=1)
        half = wire.to_bytes()
        edge.raw(b"\x00" + half[:8])
        boots = board.boots
        since = time.monotonic()
        board.reset()
        board.wait_booted(after=boots)
        edge.raw(half[8:])
        edge.wait_for(runtime.Hello, after=since)
        edge.command(L.SetLevel(level=80))
        wait_until(lambda: lamp.level() == 80)
        edge.command(runtime.Request(msg_type=runtime.STATUS))
        status = edge.wait_for(runtime.Status, after=since)
        assert status.rx_ok >= 2
    assert "Traceback" not in board.console_output()
    assert board.reset_kinds == ["power_on", "reset_pin"]
