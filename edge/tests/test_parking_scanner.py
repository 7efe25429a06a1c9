"""The edge's parking scanner: per-bay keys (HKDF from the site key), report
verification with a durable last seq per bay, the events it commits, the key file and
the site file's [parking] table."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from agent_support import MINIMAL_SITE

from kommune.edge.agent import site as S
from kommune.edge.keys import KeyMaterialError, new_site_key
from kommune.edge.northbound import Event, Priority
from kommune.edge.parking import KeyFileError, SeqStore, load_keys, parse_advert
from kommune.edge.parking.scanner import ParkingScanner
from kommune.edge.parking.verifier import ACCEPTED, DUPLICATE, FORGED, REPLAYED, UNKNOWN_BAY
from kommune.edge.parking_keys import parking_key
from kommune.protocols import parking_report as pr
from kommune.protocols.hmac_sha256 import HmacKey

SITE_KEY = new_site_key()
NODE = 301
KEY = parking_key(SITE_KEY, NODE)


def report(seq: int, state: int = pr.OCCUPIED, *, duration_s: int = 60, hb: bool = False) -> bytes:
    r = pr.Report(state=state, seq=seq, duration_s=duration_s, heartbeat=hb)
    return pr.encode(HmacKey(KEY), NODE, r)


def test_parking_key_is_rfc5869_hkdf_of_the_site_key_with_the_node_in_its_label() -> None:
    info = b"kommune/v1/parking/report/" + NODE.to_bytes(4, "big")
    prk = hmac.new(bytes(32), SITE_KEY, hashlib.sha256).digest()
    assert hmac.new(prk, info + b"\x01", hashlib.sha256).digest() == KEY
    assert parking_key(SITE_KEY, NODE + 1) != KEY
    with pytest.raises(KeyMaterialError):
        parking_key(SITE_KEY, 0)
    with pytest.raises(KeyMaterialError):
        parking_key(bytes(range(0x10, 0x30)), NODE)  # the published test key
    assert len(parking_key(bytes(range(0x10, 0x30)), NODE, test_key=True)) == 32


class Collected:
    def __init__(self, seqs_path: Path) -> None:
        self.events: list[Event] = []
        self.seqs_path = seqs_path
        self.seq_file_at_append: list[dict[str, Any]] = []
        self.fail = False

    async def append(self, events: Sequence[Event]) -> list[int | None]:
        # What was durable when the events were handed over.
        self.seq_file_at_append.append(json.loads(self.seqs_path.read_text()))
        if self.fail:
            raise OSError("disk full")
        self.events += events
        return [None] * len(events)


@pytest.fixture
def scanner(tmp_path: Path) -> tuple[ParkingScanner, Collected]:
    out = Collected(tmp_path / "parking" / "seqs.json")
    return ParkingScanner({NODE: KEY}, tmp_path, out.append, clock_ms=lambda: 1_000), out


async def test_an_accepted_report_is_durable_before_its_events_are_committed(
    scanner: tuple[ParkingScanner, Collected],
) -> None:
    s, out = scanner
    assert (await s.handle(NODE, report(7, duration_s=3600))).verdict == ACCEPTED
    assert out.seq_file_at_append == [{"301": [7, pr.OCCUPIED]}]
    assert out.events == [
        Event("bay-301/occupancy", Priority.OCCUPANCY, 7, 1_000, "state", pr.OCCUPIED),
        Event("bay-301/prev-duration", Priority.OCCUPANCY, 7, 1_000, "prev_duration", 3584, "s"),
    ]


async def test_duplicates_replays_forgeries_and_strangers(
    scanner: tuple[ParkingScanner, Collected], tmp_path: Path
) -> None:
    s, out = scanner
    assert (await s.handle(NODE, report(7))).verdict == ACCEPTED
    assert (await s.handle(NODE, report(7))).verdict == "duplicate"  # the burst repeats
    assert s.verifier.check(NODE, report(7)).verdict == DUPLICATE
    assert (await s.handle(NODE, report(6, pr.FREE))).reason == REPLAYED
    forged = bytearray(report(8, pr.FREE))
    forged[7] ^= 1
    assert (await s.handle(NODE, bytes(forged))).reason == FORGED
    assert (await s.handle(NODE + 1, report(9))).reason == UNKNOWN_BAY
    assert (await s.handle(NODE, report(8)[:7])).reason == "truncated"
    assert dict(s.verifier.refused) == {REPLAYED: 1, FORGED: 1, UNKNOWN_BAY: 1, "truncated": 1}
    assert len(out.events) == 2  # only seq 7's

    # After a restart the last seq is still known: seq 7 and below stay refused.
    again = ParkingScanner({NODE: KEY}, tmp_path, out.append)
    again.seqs.load()
    assert again.verifier.check(NODE, report(5)).reason == REPLAYED
    assert again.verifier.check(NODE, report(8)).verdict == ACCEPTED


async def test_a_heartbeat_commits_only_a_change_the_edge_missed(
    scanner: tuple[ParkingScanner, Collected],
) -> None:
    s, out = scanner
    await s.handle(NODE, report(1, pr.OCCUPIED))
    await s.handle(NODE, report(2, pr.OCCUPIED, hb=True))
    assert len(out.events) == 2  # the heartbeat agreed
    await s.handle(NODE, report(5, pr.FREE, duration_s=600, hb=True))  # events 3, 4 lost
    assert out.events[-1] == Event(
        "bay-301/occupancy", Priority.OCCUPANCY, 5, 1_000, "state", pr.FREE
    )


async def test_an_event_the_outbox_refused_is_shown_again_by_the_next_heartbeat(
    scanner: tuple[ParkingScanner, Collected],
) -> None:
    s, out = scanner
    await s.handle(NODE, report(1, pr.FREE))
    out.fail = True
    with pytest.raises(OSError):
        await s.handle(NODE, report(2, pr.OCCUPIED))
    out.fail = False
    assert s.seqs.last(NODE) == (2, pr.FREE)  # seq used up, state not taken
    await s.handle(NODE, report(3, pr.OCCUPIED, hb=True))
    assert [e.value for e in out.events if e.name == "state"] == [pr.FREE, pr.OCCUPIED]


def test_a_damaged_seq_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "seqs.json"
    path.write_text("{not json")
    with pytest.raises(ValueError):
        SeqStore(path).load()


def test_adverts_are_parsed_only_in_our_format() -> None:
    body = b"KP\x01" + NODE.to_bytes(2, "big") + report(1)
    assert parse_advert({0xFFFF: body}) == (NODE, report(1))
    assert parse_advert({0xFFFF: body[:-1]}) is None
    assert parse_advert({0xFFFF: b"KL" + body[2:]}) is None
    assert parse_advert({0x004C: body}) is None


def test_the_key_file_is_private_and_well_formed(tmp_path: Path) -> None:
    path = tmp_path / "bays.json"
    path.write_text(json.dumps({str(NODE): KEY.hex()}))
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_keys(path)
    os.chmod(path, 0o600)
    assert load_keys(path) == {NODE: KEY}
    path.write_text(json.dumps({str(NODE): "abcd"}))
    with pytest.raises(KeyFileError, match="32-byte key"):
        load_keys(path)


def test_the_site_file_takes_a_parking_table_and_ble_bays(tmp_path: Path) -> None:
    text = (
        MINIMAL_SITE + '\n[parking]\nkeys = "bays.json"\n\n[[streets]]\nname = "s"\nbays = [301]\n'
    )
    site = S.parse(text.encode(), source=tmp_path / "site.toml", environ={}, euid=1000)
    assert site.parking == S.ParkingConfig(tmp_path / "bays.json")
    assert site.streets[0].bays == (301,)
    # Without [parking], a bay must be on a node link.
    no_parking = text.replace('[parking]\nkeys = "bays.json"\n', "")
    with pytest.raises(S.SiteError, match="on no link"):
        S.parse(no_parking.encode(), source=tmp_path / "site.toml", environ={}, euid=1000)
    with pytest.raises(S.SiteError, match=r"parking\.keys: required"):
        S.parse(
            (MINIMAL_SITE + "\n[parking]\n").encode(),
            source=tmp_path / "site.toml",
            environ={},
            euid=1000,
        )
