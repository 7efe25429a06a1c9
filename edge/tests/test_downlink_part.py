"""The downlink part without a broker: what consumers get through `subscribe`, what it
reports north, and the cap on reported refusals."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from agent_support import MINIMAL_SITE
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kommune.edge.agent import downlink_part as D
from kommune.edge.agent import site as S
from kommune.edge.downlink.envelope import sign
from kommune.edge.downlink.keys import public_pem
from kommune.edge.downlink.store import Applied
from kommune.edge.northbound import Event, Priority

KEY = Ed25519PrivateKey.generate()
TOPIC = "kommune/lab/test-agent/down/lock-epoch"


class _Outbox:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def append(self, events: Sequence[Event]) -> list[int | None]:
        self.events += events
        return [None] * len(events)


class _OutboxPart:
    def __init__(self) -> None:
        self.outbox = _Outbox()


def envelope(seq: int, body: dict[str, Any], key: Ed25519PrivateKey = KEY) -> bytes:
    now = time.time_ns() // 1_000_000
    return sign(
        key,
        kind="lock-epoch",
        site="lab",
        agent="test-agent",
        seq=seq,
        issued_ms=now,
        expires_ms=now + 60_000,
        body=body,
    )


@pytest.fixture
async def part(tmp_path: Path) -> AsyncIterator[D.DownlinkPart]:
    (tmp_path / "backend.pub").write_bytes(public_pem(KEY.public_key()))
    text = MINIMAL_SITE + '[outbox]\ndir = "state"\n[downlink]\nbackend_key = "backend.pub"\n'
    site = S.parse(text.encode(), source=tmp_path / "site.toml")
    (tmp_path / "state").mkdir()
    downlinks = D.DownlinkPart(site, _OutboxPart())  # type: ignore[arg-type]
    await downlinks.start()
    yield downlinks
    await downlinks.stop()


def events(part: D.DownlinkPart) -> list[Event]:
    return part._outbox.outbox.events  # type: ignore[attr-defined, no-any-return]


async def test_subscribers_get_the_current_document_and_each_new_one(
    part: D.DownlinkPart,
) -> None:
    early: list[Applied] = []
    part.subscribe("lock-epoch", early.append)
    assert early == []  # nothing applied yet: no call
    await part.handle(TOPIC, envelope(1, {"epoch": 1}))
    assert [a.body for a in early] == [{"epoch": 1}]

    late: list[Applied] = []

    def broken(_: Applied) -> None:
        raise RuntimeError("a consumer's bug")

    part.subscribe("lock-epoch", broken)
    unsubscribe = part.subscribe("lock-epoch", late.append)
    assert [(a.seq, a.body) for a in late] == [(1, {"epoch": 1})]  # the current one, at once
    await part.handle(TOPIC, envelope(2, {"epoch": 2}))
    await part.handle(TOPIC, envelope(2, {"epoch": 2}))  # already applied: nobody is told
    await part.handle(TOPIC, envelope(1, {"epoch": 1}))  # replayed: nobody is told
    assert [a.seq for a in early] == [1, 2] and [a.seq for a in late] == [1, 2]
    unsubscribe()
    await part.handle(TOPIC, envelope(3, {"epoch": 3}))
    assert [a.seq for a in early] == [1, 2, 3] and [a.seq for a in late] == [1, 2]
    assert part.current("lock-epoch").seq == 3  # type: ignore[union-attr]
    metrics = {m.name: m for m in part.metrics()}
    assert metrics["downlink_subscriber_failures_total"].samples[()] == 3
    with pytest.raises(ValueError, match="no downlink kind 'lock'"):
        part.subscribe("lock", early.append)


async def test_every_decision_goes_north_as_an_audit_event(part: D.DownlinkPart) -> None:
    await part.handle(TOPIC, envelope(4, {"epoch": 4}))
    await part.handle(TOPIC, envelope(3, {"epoch": 3}))
    await part.handle("kommune/lab/test-agent/down/firmware", b"junk")
    got = events(part)
    assert [(e.stream, e.priority, e.name) for e in got] == [
        ("downlink/lock-epoch", Priority.AUDIT, "applied"),
        ("downlink/lock-epoch", Priority.AUDIT, "refused"),
        ("downlink/firmware", Priority.AUDIT, "refused"),
    ]
    assert [e.source_seq for e in got] == sorted({e.source_seq for e in got})  # distinct, rising
    first, second, third = (json.loads(str(e.value)) for e in got)
    assert (first["seq"], first["reason"], len(first["digest"])) == (4, None, 64)
    assert (second["seq"], second["reason"]) == (3, "replayed")
    assert (third["seq"], third["reason"]) == (None, "malformed")
    assert third["topic"] == "kommune/lab/test-agent/down/firmware"


async def test_refusals_beyond_the_cap_are_counted_not_reported(part: D.DownlinkPart) -> None:
    forger = Ed25519PrivateKey.generate()
    extra = 5
    for seq in range(1, D.REFUSALS_REPORTED_PER_MINUTE + extra + 1):
        await part.handle(TOPIC, envelope(seq, {}, forger))
    await part.handle(TOPIC, envelope(1, {"epoch": 1}))  # applied: reported regardless
    got = events(part)
    assert [e.name for e in got] == ["refused"] * D.REFUSALS_REPORTED_PER_MINUTE + ["applied"]
    metrics = {m.name: m for m in part.metrics()}
    assert metrics["downlink_refusals_unreported_total"].samples[()] == extra
    forged = (("kind", "lock-epoch"), ("result", "forged"))
    assert metrics["downlinks_total"].samples[forged] == D.REFUSALS_REPORTED_PER_MINUTE + extra
    assert part.health()["refusals_unreported"] == extra
