"""`kommune edge run` with downlinks, against a real Mosquitto: a backend publishes
signed envelopes on the agent's topics; the agent applies each document once, refuses
forged, replayed, conflicting, stale, misaddressed and malformed ones with the reason
in its log, metrics and an audit event that reaches the backend, and what it applied
survives a restart. Keys are made by the test; none is in the repository."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from agent_support import MINIMAL_SITE, AgentProcess, http_get, parse_prometheus
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hil_tests.testing.mosquitto import Mosquitto
from hil_tests.testing.mqtt_backend import Backend, Publisher
from hil_tests.testing.waiting import wait_until
from kommune.edge.downlink.envelope import sign
from kommune.edge.downlink.keys import public_pem
from kommune.edge.uplink import Record

AGENT, SITE = "test-agent", "lab"
DEADLINE_S = 30.0
NO_SUBSCRIBERS = 0x10
MINE = f"kommune/{SITE}/{AGENT}/down"
ALL = f"kommune/{SITE}/all/down"


def _site(folder: Path, broker_port: int, downlink: str) -> Path:
    path = folder / "site.toml"
    text = MINIMAL_SITE.replace("tls = false", f"tls = false\nport = {broker_port}")
    path.write_text(
        text + '\n[outbox]\ndir = "state"\n\n[health]\nbind = "127.0.0.1:0"\n' + downlink
    )
    return path


class Issuer:
    """The backend's signing side."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.key = key

    def envelope(self, kind: str, seq: int, body: dict[str, Any], **changes: Any) -> bytes:
        now = time.time_ns() // 1_000_000
        fields: dict[str, Any] = {
            "kind": kind,
            "site": SITE,
            "agent": AGENT,
            "seq": seq,
            "issued_ms": now,
            "expires_ms": now + 600_000,
            "body": body,
        }
        fields.update(changes)
        return sign(self.key, **fields)


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    key = Ed25519PrivateKey.generate()
    (tmp_path / "backend.pub").write_bytes(public_pem(key.public_key()))
    return Issuer(key)


DOWNLINK = '\n[downlink]\nbackend_key = "backend.pub"\nmax_age_s = 3600\n'


def decisions(backend: Backend) -> list[Record]:
    """The agent's downlink decisions that reached the backend, in order."""
    return [r for r in backend.records if r.stream.startswith("downlink/")]


async def decided(backend: Backend, count: int) -> Record:
    """Wait for the `count`-th decision to reach the backend; that decision."""
    async with asyncio.timeout(DEADLINE_S):
        await backend.wait_until(lambda b: len(decisions(b)) >= count)
    got = decisions(backend)
    assert len(got) == count, f"more decisions than messages: {got}"
    return got[-1]


def reported(record: Record) -> tuple[str, str, dict[str, Any]]:
    assert isinstance(record.value, str)
    return record.stream, record.name, json.loads(record.value)


async def healthy_with_downlinks(agent: AgentProcess) -> int:
    port, _ = await asyncio.to_thread(agent.wait_healthy)

    def subscribed() -> bool:
        return bool(http_get(port, "/healthz").json()["parts"]["uplink"]["downlinks_subscribed"])

    await asyncio.to_thread(wait_until, subscribed, DEADLINE_S, what="subscribed to downlinks")
    return port


def metrics(port: int) -> dict[tuple[str, str], float]:
    text = http_get(port, "/metrics").body.decode()
    family = parse_prometheus(text)["kommune_downlinks_total"]
    return {(dict(k)["kind"], dict(k)["result"]): v for k, v in family.samples.items()}


async def test_downlinks_are_applied_once_and_bad_ones_refused_with_their_reason(
    tmp_path: Path,
    mosquitto: Mosquitto,
    agents: list[AgentProcess],
    publisher: Publisher,
    issuer: Issuer,
) -> None:
    async with Backend("127.0.0.1", mosquitto.port) as backend:
        agent = AgentProcess(_site(tmp_path, mosquitto.port, DOWNLINK))
        agents.append(agent)
        port = await healthy_with_downlinks(agent)

        # Applied: the document, its audit event, its log record, health and metrics.
        config = issuer.envelope("config", 5, {"dim_level": 30})
        assert await publisher.publish(f"{MINE}/config", config) == 0
        stream, result, info = reported(await decided(backend, 1))
        assert (stream, result, info["seq"], info["reason"]) == (
            "downlink/config",
            "applied",
            5,
            None,
        )
        log = await asyncio.to_thread(
            agent.wait_record, lambda r: r["fields"].get("result") == "applied"
        )
        assert log["part"] == "downlink" and log["fields"]["seq"] == 5
        health = http_get(port, "/healthz").json()["parts"]["downlink"]
        assert health["enabled"] is True and health["documents"]["config"]["seq"] == 5

        # The same envelope again: acknowledged as already applied, not applied twice.
        await publisher.publish(f"{MINE}/config", config)
        assert reported(await decided(backend, 2))[1] == "already-applied"

        # Every refusal: the reason goes north and into the log; nothing changes.
        other = Issuer(Ed25519PrivateKey.generate())
        flipped = bytearray(issuer.envelope("config", 7, {"dim_level": 31}))
        flipped[flipped.index(b"dim_level") + 1] ^= 0x01  # still CBOR: only the signature tells
        now = time.time_ns() // 1_000_000
        refusals: list[tuple[str, bytes, str, str]] = [
            (
                "config",
                issuer.envelope("config", 4, {"dim_level": 1}),
                "replayed",
                "older than seq 5",
            ),
            (
                "config",
                issuer.envelope("config", 5, {"dim_level": 99}),
                "conflict",
                "another document",
            ),
            ("config", other.envelope("config", 6, {"dim_level": 0}), "forged", "does not verify"),
            ("config", bytes(flipped), "forged", "does not verify"),
            (
                "config",
                issuer.envelope("config", 8, {}, issued_ms=now - 10_000, expires_ms=now - 5_000),
                "stale",
                "expired",
            ),
            (
                "config",
                issuer.envelope("config", 9, {}, site="sentrum"),
                "wrong-target",
                "for site",
            ),
            (
                "config",
                issuer.envelope("config", 10, {}, agent="edge-9"),
                "wrong-target",
                "for agent",
            ),
            ("deny-list", b"\xff not an envelope", "malformed", "not CBOR"),
        ]
        for n, (kind, data, reason, words) in enumerate(refusals, start=3):
            await publisher.publish(f"{MINE}/{kind}", data)
            stream, result, info = reported(await decided(backend, n))
            assert (stream, result, info["reason"]) == (f"downlink/{kind}", "refused", reason)
            assert words in info["detail"], info
            record = await asyncio.to_thread(
                agent.wait_record,
                lambda r, reason=reason, words=words: (
                    r["fields"].get("reason") == reason and words in r["message"]
                ),
            )
            assert record["level"] == "warning", record

        health = http_get(port, "/healthz").json()["parts"]["downlink"]
        assert health["documents"]["config"]["seq"] == 5  # unchanged by every refusal
        counts = metrics(port)
        assert counts[("config", "applied")] == 1
        assert counts[("config", "already-applied")] == 1
        assert counts[("config", "forged")] == 2 and counts[("config", "wrong-target")] == 2
        for reason in ("replayed", "conflict", "stale"):
            assert counts[("config", reason)] == 1
        assert counts[("deny-list", "malformed")] == 1

        # A site-wide document, on the site's topic.
        deny = issuer.envelope("deny-list", 1, {"holders": ["h-17"]}, agent="*")
        assert await publisher.publish(f"{ALL}/deny-list", deny) == 0
        stream, result, info = reported(await decided(backend, 11))
        assert (stream, result, info["seq"]) == ("downlink/deny-list", "applied", 1)

        # A restart keeps what was applied: the same envelopes are not applied again,
        # older ones are still replays.
        agent.signal(signal.SIGTERM)
        assert await asyncio.to_thread(agent.wait) == 0
        agent = AgentProcess(_site(tmp_path, mosquitto.port, DOWNLINK))
        agents.append(agent)
        port = await healthy_with_downlinks(agent)
        documents = http_get(port, "/healthz").json()["parts"]["downlink"]["documents"]
        assert {k: v["seq"] for k, v in documents.items()} == {"config": 5, "deny-list": 1}
        await publisher.publish(f"{MINE}/config", config)
        assert reported(await decided(backend, 12))[1] == "already-applied"
        await publisher.publish(f"{ALL}/deny-list", issuer.envelope("deny-list", 1, {}, agent="*"))
        assert reported(await decided(backend, 13))[2]["reason"] == "conflict"
        newer = issuer.envelope("config", 6, {"dim_level": 40})
        await publisher.publish(f"{MINE}/config", newer)
        _, result, info = reported(await decided(backend, 14))
        assert (result, info["seq"]) == ("applied", 6)
        # This agent's counts start again; the documents do not.
        counts = metrics(port)
        assert counts[("config", "applied")] == 1 and counts[("config", "already-applied")] == 1
        documents = http_get(port, "/healthz").json()["parts"]["downlink"]["documents"]
        assert documents["config"]["seq"] == 6
        agent.signal(signal.SIGTERM)
        assert await asyncio.to_thread(agent.wait) == 0


async def test_without_a_backend_key_nothing_is_subscribed_and_health_says_so(
    tmp_path: Path, mosquitto: Mosquitto, agents: list[AgentProcess], publisher: Publisher
) -> None:
    agent = AgentProcess(_site(tmp_path, mosquitto.port, ""))
    agents.append(agent)
    port, _ = await asyncio.to_thread(agent.wait_healthy)
    await asyncio.to_thread(
        wait_until,
        lambda: http_get(port, "/healthz").json()["parts"]["uplink"]["connected"],
        DEADLINE_S,
        what="the uplink connected",
    )
    parts = http_get(port, "/healthz").json()["parts"]
    assert "downlink" not in parts
    assert parts["uplink"]["downlinks_subscribed"] is False
    assert "no [downlink] backend_key" in parts["uplink"]["downlinks"]
    assert await publisher.publish(f"{MINE}/config", b"anything") == NO_SUBSCRIBERS
    agent.signal(signal.SIGTERM)
    assert await asyncio.to_thread(agent.wait) == 0


async def test_a_missing_backend_key_stops_the_start_with_one_line(
    tmp_path: Path, mosquitto: Mosquitto, agents: list[AgentProcess]
) -> None:
    agent = AgentProcess(_site(tmp_path, mosquitto.port, DOWNLINK))
    agents.append(agent)
    assert await asyncio.to_thread(agent.wait) == 1
    last = agent.lines[-1]
    assert last.endswith(
        f"downlink did not start: downlink.backend_key: {tmp_path / 'backend.pub'}: no such file"
    ), last
