"""The uplink's settings (one readable line per mistake, topics) and its back-off."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kommune.edge.northbound import Priority
from kommune.edge.uplink import Backoff, BackoffPolicy, UplinkConfig, UplinkConfigError


def config(**changes: object) -> UplinkConfig:
    fields: dict[str, object] = {"host": "mqtt.example", "site": "oslo", "agent": "edge-1"}
    fields.update(changes)
    return UplinkConfig(**fields)  # type: ignore[arg-type]


def test_topics_are_prefix_site_agent_class() -> None:
    c = config()
    assert [c.topic(p) for p in Priority] == [
        "kommune/oslo/edge-1/audit",
        "kommune/oslo/edge-1/occupancy",
        "kommune/oslo/edge-1/telemetry",
    ]
    assert c.resolved_client_id == "kommune-oslo-edge-1"
    assert c.resolved_port == 1883


@pytest.mark.parametrize(
    ("changes", "names"),
    [
        ({"site": "Oslo"}, "site"),
        ({"agent": "edge/1"}, "agent"),
        ({"agent": "+"}, "agent"),
        ({"host": ""}, "host"),
        ({"port": 0}, "port"),
        ({"window": 0}, "window"),
        ({"keepalive_s": 0}, "keepalive_s"),
        ({"session_expiry_s": -1}, "session_expiry_s"),
        ({"password": "secret"}, "username"),
        ({"client_id": "a/b"}, "client_id"),
        ({"topic_prefix": "a/b"}, "topic_prefix"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(changes: dict[str, object], names: str) -> None:
    with pytest.raises(UplinkConfigError) as err:
        config(**changes).check()
    message = str(err.value)
    assert names in message and "\n" not in message


@given(
    initial=st.floats(0.001, 10),
    factor=st.floats(1, 1000),
    seed=st.integers(0, 2**32),
    attempts=st.integers(1, 80),
)
def test_backoff_doubles_to_its_cap_with_jitter_and_never_beyond(
    initial: float, factor: float, seed: int, attempts: int
) -> None:
    policy = BackoffPolicy(initial_s=initial, max_s=initial * factor)
    backoff = Backoff(policy, random.Random(seed))
    for n in range(attempts):
        ceiling = min(policy.max_s, initial * 2**n)
        delay = backoff.next_delay()
        assert ceiling / 2 <= delay <= ceiling <= policy.max_s
    backoff.reset()
    assert initial / 2 <= backoff.next_delay() <= initial


def test_backoff_is_jittered() -> None:
    delays = {
        Backoff(BackoffPolicy(1.0, 1.0), random.Random(seed)).next_delay() for seed in range(20)
    }
    assert len(delays) == 20  # a thousand agents do not come back in the same instant


def test_backoff_policy_is_checked() -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(initial_s=0)
    with pytest.raises(ValueError):
        BackoffPolicy(initial_s=2, max_s=1)
