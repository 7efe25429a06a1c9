"""Fixtures of the edge tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from agent_support import AgentProcess


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    """Agents a test starts (`kommune edge run` children); any still running at the end
    are killed and reaped."""
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.close()
