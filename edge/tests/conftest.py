"""Fixtures of the edge tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from agent_support import AgentProcess

from hil_tests.testing.mosquitto import Mosquitto
from hil_tests.testing.mqtt_backend import Publisher


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    """Agents a test starts (`kommune edge run` children); any still running at the end
    are killed and reaped."""
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.close()


@pytest.fixture
async def publisher(mosquitto: Mosquitto) -> AsyncIterator[Publisher]:
    """The backend publishing to the test's broker (downlinks)."""
    async with Publisher.connected(mosquitto.host, mosquitto.port) as connected:
        yield connected
