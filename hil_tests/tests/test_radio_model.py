"""The air's link model on paper: connection events, retransmission, supervision, profiles."""

from __future__ import annotations

import random

import pytest

from kommune.hil.radio.link import _matches
from kommune.hil.radio.profile import RX_SENSITIVITY_DBM, LinkProfile, LinkProfileError
from kommune.hil.radio.timing import ConnectionEvents

INTERVAL_S = 0.030
SUPERVISION_S = 0.720


def events(
    *, aligned: bool = True, seed: int = 1, supervision_s: float = SUPERVISION_S
) -> ConnectionEvents:
    return ConnectionEvents(
        anchor_s=100.0,
        interval_s=INTERVAL_S,
        supervision_timeout_s=supervision_s,
        aligned=aligned,
        rng=random.Random(seed),
    )


def test_a_pdu_waits_for_the_next_connection_event() -> None:
    ev = events()
    attempt = ev.transmit(now_s=100.001, not_before_s=0.0, loss=0.0)
    assert attempt.delivered
    assert attempt.at_s == pytest.approx(100.030)
    assert attempt.retransmissions == 0
    # Queued exactly at an event: that event carries it.
    assert ev.transmit(now_s=100.060, not_before_s=0.0, loss=0.0).at_s == pytest.approx(100.060)


def test_the_ideal_link_delivers_at_once() -> None:
    attempt = events(aligned=False).transmit(now_s=100.001, not_before_s=0.0, loss=0.0)
    assert attempt.at_s == pytest.approx(100.001)


def test_a_direction_stays_in_order() -> None:
    ev = events()
    first = ev.transmit(now_s=100.001, not_before_s=0.0, loss=0.0)
    # A later PDU queued "before" the first one's event rides with it, never ahead.
    second = ev.transmit(now_s=100.002, not_before_s=first.at_s, loss=0.0)
    assert second.at_s >= first.at_s


def test_loss_costs_whole_intervals_and_the_seed_fixes_them() -> None:
    ev1, ev2 = events(seed=5), events(seed=5)
    runs1 = [ev1.transmit(now_s=100.0, not_before_s=0.0, loss=0.5) for _ in range(50)]
    runs2 = [ev2.transmit(now_s=100.0, not_before_s=0.0, loss=0.5) for _ in range(50)]
    assert runs1 == runs2
    assert sum(r.retransmissions for r in runs1) > 0
    for r in runs1:
        assert r.delivered
        assert r.at_s == pytest.approx(100.0 + r.retransmissions * INTERVAL_S)


def test_sustained_loss_drops_the_link_at_the_supervision_timeout() -> None:
    attempt = events().transmit(now_s=100.010, not_before_s=0.0, loss=1.0)
    assert not attempt.delivered
    assert attempt.at_s == pytest.approx(100.030 + SUPERVISION_S)


def test_a_failure_run_longer_than_the_supervision_timeout_drops_the_link() -> None:
    # 0.99 loss over a 5-event supervision window: some PDU's run gets there.
    ev = events(supervision_s=5 * INTERVAL_S, seed=3)
    outcomes = [ev.transmit(now_s=100.0, not_before_s=0.0, loss=0.99) for _ in range(20)]
    lost = [o for o in outcomes if not o.delivered]
    assert lost
    assert lost[0].at_s == pytest.approx(100.0 + 5 * INTERVAL_S)


def test_profile_rejects_impossible_values() -> None:
    with pytest.raises(LinkProfileError):
        LinkProfile(interval_ms=5.0)  # below BLE's 7.5 ms
    with pytest.raises(LinkProfileError):
        LinkProfile(loss=1.5)
    with pytest.raises(LinkProfileError):
        LinkProfile(supervision_timeout_ms=50.0)
    with pytest.raises(LinkProfileError):
        LinkProfile().updated({"latency_ms": 3})
    with pytest.raises(LinkProfileError):
        LinkProfile().updated({"loss": "high"})


def test_profile_update_keeps_other_fields() -> None:
    profile = LinkProfile(interval_ms=15.0).updated({"loss": 0.2})
    assert profile == LinkProfile(interval_ms=15.0, loss=0.2)
    assert profile.updated({"interval_ms": None}).interval_ms is None


def test_out_of_range_is_total_loss() -> None:
    near = LinkProfile(rssi_dbm=RX_SENSITIVITY_DBM, loss=0.1)
    far = LinkProfile(rssi_dbm=RX_SENSITIVITY_DBM - 1, loss=0.1)
    assert near.in_range and near.effective_loss == 0.1
    assert not far.in_range and far.effective_loss == 1.0


def test_cut_matches_att_opcode_in_l2cap_pdu() -> None:
    write_request = bytes([3, 0, 0x04, 0x00, 0x12, 0x10, 0x00])  # len 3, CID 4, ATT_WRITE_REQ
    signalling = bytes([3, 0, 0x05, 0x00, 0x12, 0x10, 0x00])  # same bytes on CID 5
    assert _matches(0x12, write_request)
    assert not _matches(0x52, write_request)
    assert not _matches(0x12, signalling)
    assert _matches(None, signalling)
