"""`kommune edge run` as a process: it becomes healthy, serves metrics, logs JSON lines,
stops within its bound on a signal, leaves nothing behind, and shrugs off bad clients."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from agent_support import (
    KOMMUNE,
    AgentProcess,
    http_get,
    http_request,
    parse_prometheus,
    parse_response,
    write_site,
)

from hil_tests.testing.processes import descendants, running

STOP_TIMEOUT_S = 10.0


def _start(agents: list[AgentProcess], site: Path, *args: str) -> AgentProcess:
    agent = AgentProcess(site, *args)
    agents.append(agent)
    return agent


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return False
    except ConnectionRefusedError:
        return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_healthy_then_a_signal_stops_it_cleanly_within_the_bound(
    tmp_path: Path, agents: list[AgentProcess], sig: signal.Signals
) -> None:
    agent = _start(agents, write_site(tmp_path))
    port, _ = agent.wait_healthy()
    health = http_get(port, "/healthz").json()
    assert health["status"] == "up"
    assert (health["agent"], health["site"]) == ("test-agent", "lab")
    assert {name: part["state"] for name, part in health["parts"].items()} == {
        "health": "up",
        "heartbeat": "up",
        "outbox": "up",
        "uplink": "up",
    }
    assert health["parts"]["outbox"]["queued"] == {"audit": 0, "occupancy": 0, "telemetry": 0}
    assert (tmp_path / "state" / "outbox.sqlite3").exists()
    assert descendants(agent.pid) == []  # the agent starts no processes
    assert (tmp_path / "state" / "agent.lock").read_text() == f"{agent.pid}\n"

    began = time.monotonic()
    agent.signal(sig)
    assert agent.wait() == 0, agent.lines[-5:]
    assert time.monotonic() - began < STOP_TIMEOUT_S
    assert not running(agent.pid)
    assert _refused(port)
    records = agent.records()
    assert len(records) == len(agent.lines), "every log line is one JSON object"
    for record in records:
        assert list(record) == ["time", "level", "part", "message", "fields"]
    messages = [(r["part"], r["message"]) for r in records]
    assert ("agent", f"stopping ({sig.name})") in messages
    # Parts stop in the reverse of their start order.
    stops = [part for part, message in messages if message == "stopped" and part != "agent"]
    assert stops == ["uplink", "outbox", "heartbeat", "health"]


def test_metrics_parse_as_prometheus_text(tmp_path: Path, agents: list[AgentProcess]) -> None:
    agent = _start(agents, write_site(tmp_path))
    port, _ = agent.wait_healthy()
    response = http_get(port, "/metrics")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = parse_prometheus(response.body.decode())
    assert all(name.startswith("kommune_") for name in families)
    assert all(f.help and f.type in ("counter", "gauge") for f in families.values())
    assert families["kommune_agent_info"].samples == {(("agent", "test-agent"), ("site", "lab")): 1}
    assert families["kommune_agent_up"].samples == {(): 1}
    assert families["kommune_part_up"].samples == {
        (("part", "health"),): 1,
        (("part", "heartbeat"),): 1,
        (("part", "outbox"),): 1,
        (("part", "uplink"),): 1,
    }
    assert families["kommune_outbox_rows"].samples == {
        (("class", c),): 0 for c in ("audit", "occupancy", "telemetry")
    }
    assert (
        families["kommune_http_requests_total"].samples[(("path", "/healthz"), ("code", "200"))]
        >= 1
    )
    assert families["kommune_log_messages_total"].samples[(("level", "info"),)] >= 1
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0


def test_sigkill_leaves_nothing_that_breaks_the_next_start(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    first = _start(agents, write_site(tmp_path))
    port, _ = first.wait_healthy()
    # A client in the middle of a request, and the state directory locked: then SIGKILL.
    client = socket.create_connection(("127.0.0.1", port))
    client.sendall(b"GET /healthz HTTP/1.1\r\n")
    first.proc.kill()
    assert first.wait() == -signal.SIGKILL
    client.close()
    # The same port and the same state directory: up again.
    second = _start(agents, write_site(tmp_path, port=port))
    assert second.wait_healthy()[0] == port
    second.signal(signal.SIGTERM)
    assert second.wait() == 0


def test_a_second_agent_on_the_same_state_is_refused(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    first = _start(agents, write_site(tmp_path))
    first.wait_healthy()
    second = _start(agents, write_site(tmp_path, name="other.toml"))
    assert second.wait() == 1
    error = second.lines[-1]
    state = tmp_path / "state"
    assert error == (
        f"kommune edge: error: another agent (pid {first.pid}) runs on {state} (outbox.dir)"
    )
    assert first.proc.poll() is None
    first.signal(signal.SIGTERM)
    assert first.wait() == 0


def test_a_port_in_use_is_one_line_and_exit_1(tmp_path: Path, agents: list[AgentProcess]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        agent = _start(agents, write_site(tmp_path, port=port))
        assert agent.wait() == 1
    assert agent.lines[-1] == (
        f"kommune edge: error: health did not start: cannot listen on 127.0.0.1:{port}"
        " (health.bind): Address already in use"
    )
    # Nothing is left holding the state: the next agent starts.
    again = _start(agents, write_site(tmp_path))
    again.wait_healthy()
    again.signal(signal.SIGTERM)
    assert again.wait() == 0


BAD_REQUESTS = [
    b"\x00\x01\x02garbage\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\n" + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n",
    b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    b"GET /healthz HTTP/1.1\r\n\r\n" * 50,  # pipelined: one answer, then closed
    b"\r\n\r\n",
]


def test_malformed_and_idle_clients_do_not_hurt_it(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    agent = _start(agents, write_site(tmp_path))
    port, _ = agent.wait_healthy()
    for raw in BAD_REQUESTS:
        answer = http_request(port, raw)
        assert parse_response(answer).status in (400, 405, 431, 200)
    # More idle connections than it keeps: the oldest are dropped, a real request is served.
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
    try:
        for conn in idle[-10:]:  # the newest: the server drops the oldest first
            conn.sendall(b"GET /hea")  # a request that never ends
        assert http_get(port, "/healthz").status == 200
        families = parse_prometheus(http_get(port, "/metrics").body.decode())
        rejected = families["kommune_http_rejected_total"].samples
        assert rejected[(("reason", "crowded"),)] >= 18
        # Idle connections do not hold up the stop.
        began = time.monotonic()
        agent.signal(signal.SIGTERM)
        assert agent.wait() == 0
        assert time.monotonic() - began < STOP_TIMEOUT_S
    finally:
        for conn in idle:
            conn.close()


def test_human_log_lines_by_default(tmp_path: Path) -> None:
    site = write_site(tmp_path)
    proc = subprocess.Popen(
        [KOMMUNE, "edge", "run", "--site", str(site)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if "agent: up in" in line:
                break
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    lines += rest.splitlines()
    human = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (INFO|WARNING|ERROR) +[a-z]+: .+")
    assert lines and all(human.fullmatch(line) for line in lines), lines
