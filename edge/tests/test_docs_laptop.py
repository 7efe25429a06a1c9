"""docs/edge-agent.md's "Try it on a laptop" stays true: its site file and its parking
sensor snippet, run as written against a real Mosquitto (only the three ports swapped for
free ones and the state kept in the test's folder), give what the page says they give."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

from agent_support import REPO, AgentProcess, http_get, parse_prometheus
from node_sim import free_udp_port

from hil_tests.testing.mosquitto import Mosquitto
from hil_tests.testing.mqtt_backend import Backend
from hil_tests.testing.waiting import wait_until

PAGE = REPO / "docs" / "edge-agent.md"
LOCAL_SITE = REPO / "docs" / "site.local.toml"
DOC_BROKER, DOC_UDP, DOC_HEALTH = "1883", "47000", "9470"


def _walkthrough() -> tuple[str, str]:
    """The page's section and the Python it feeds to `python -` (its here-document)."""
    page = PAGE.read_text()
    section = page.split("## Try it on a laptop", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"python - <<'PY'[^\n]*\n(.*?)\nPY\n", section, re.S)
    assert found, "the laptop walkthrough has no `python - <<'PY'` snippet"
    return section, found.group(1)


def _swap_ports(text: str, broker: int, udp: int) -> str:
    """The page's ports swapped for the test's; the UDP port must be there."""
    assert DOC_UDP in text, f"{DOC_UDP} is no longer in the walkthrough: update this test"
    for old, new in ((DOC_BROKER, broker), (DOC_UDP, udp), (DOC_HEALTH, 0)):
        text = text.replace(old, str(new))
    return text


async def test_the_laptop_walkthrough_does_what_the_page_says(
    tmp_path: Path, mosquitto: Mosquitto, agents: list[AgentProcess]
) -> None:
    section, snippet = _walkthrough()
    for port in (DOC_BROKER, DOC_UDP, DOC_HEALTH):
        assert port in LOCAL_SITE.read_text(), f"the page and site.local.toml disagree on {port}"
    assert "docs/site.local.toml" in section
    udp = free_udp_port()
    site = tmp_path / "site.toml"
    site.write_text(
        _swap_ports(LOCAL_SITE.read_text(), mosquitto.port, udp).replace(
            "[outbox]\n", '[outbox]\ndir = "state"\n', 1
        )
    )
    async with Backend("127.0.0.1", mosquitto.port) as backend:
        agent = AgentProcess(site)
        agents.append(agent)
        health, _ = await asyncio.to_thread(agent.wait_healthy)
        sensor = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-"],
            input=_swap_ports(snippet, mosquitto.port, udp),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert sensor.returncode == 0, sensor.stderr
        answers = sensor.stdout.splitlines()
        assert len(answers) == 3 and all(a.startswith("Ack(") for a in answers), answers

        def frames() -> dict[str, float]:
            text = http_get(health, "/metrics").body.decode()
            family = parse_prometheus(text)["kommune_link_frames_total"]
            return {dict(labels)["result"]: value for labels, value in family.samples.items()}

        counted = frames()
        assert counted["stored"] == 2 and counted["duplicate"] == 1, counted
        # "within a second": the occupancy event reaches the broker, once.
        key = ("laptop-edge-1", "bay-101/occupancy", 1)
        await backend.wait_for_keys({key})
        assert backend.keys()[key] == 1, backend.keys()

        def acked_rows() -> float:
            text = http_get(health, "/metrics").body.decode()
            family = parse_prometheus(text)["kommune_uplink_acked_rows_total"]
            return sum(family.samples.values())

        await asyncio.to_thread(
            wait_until, lambda: acked_rows() >= 1, what="the uplink counts the row as acked"
        )
