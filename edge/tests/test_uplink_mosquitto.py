"""The test broker itself: started on a free port and ready when it answers, stopped and
started again on the same port with its data, hung and resumed, and never left behind."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from hil_tests.testing.mosquitto import (
    Mosquitto,
    MosquittoError,
    free_port,
    mqtt_answers,
    running_mosquitto,
)
from hil_tests.testing.processes import running


def _retain(port: int, topic: bytes, payload: bytes) -> None:
    """Publish a retained QoS 0 message with a bare MQTT 3.1.1 client."""
    connect = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"
    body = len(topic).to_bytes(2, "big") + topic + payload
    publish = bytes([0x31, len(body)]) + body
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(connect)
        assert s.recv(4)[:1] == b"\x20"
        s.sendall(publish + b"\xe0\x00")
        s.recv(1)  # the broker closes after DISCONNECT: everything before it was read


def _retained(port: int, topic: bytes) -> bytes:
    """Subscribe and return what the broker sends: SUBACK, then the retained PUBLISH."""
    connect = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"
    body = b"\x00\x01" + len(topic).to_bytes(2, "big") + topic + b"\x00"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(connect)
        assert s.recv(4)[:1] == b"\x20"
        s.sendall(bytes([0x82, len(body)]) + body)
        data = b""
        suback_and_header = 5 + 2 + 2 + len(topic)
        while len(data) < suback_and_header + 1 or len(data) < suback_and_header + _payload(data):
            chunk = s.recv(4096)
            assert chunk, "the broker closed the connection"
            data += chunk
        return data[suback_and_header:]


def _payload(data: bytes) -> int:
    # PUBLISH after the 5-byte SUBACK: header, one-byte length, topic length, topic, payload.
    length, topic_len = data[6], int.from_bytes(data[7:9], "big")
    return length - 2 - topic_len


def test_stop_and_start_keep_port_and_data(mosquitto: Mosquitto) -> None:
    port = mosquitto.port
    assert mqtt_answers(port, host=mosquitto.host)
    _retain(port, b"kommune/test", b"kept")
    mosquitto.stop()  # SIGTERM: the database is saved
    assert not mosquitto.running and not mqtt_answers(port, host=mosquitto.host)
    mosquitto.start()
    assert mosquitto.port == port and mqtt_answers(port, host=mosquitto.host)
    assert _retained(port, b"kommune/test") == b"kept"


def test_a_paused_broker_accepts_but_does_not_answer(mosquitto: Mosquitto) -> None:
    mosquitto.pause()
    assert not mqtt_answers(mosquitto.port, timeout_s=0.2, host=mosquitto.host)
    mosquitto.resume()
    assert mqtt_answers(mosquitto.port, host=mosquitto.host)


def test_kill_and_close_leave_nothing_even_when_paused(tmp_path: Path) -> None:
    with running_mosquitto(tmp_path / "a") as broker:
        first = broker.pid
        broker.kill()
        assert not running(first)
        broker.start()
        second = broker.pid
        broker.pause()
    assert not running(second)
    with pytest.raises(RuntimeError, match="boom"), running_mosquitto(tmp_path / "b") as broker:
        third = broker.pid
        raise RuntimeError("boom")
    assert not running(third)


def test_a_broker_that_cannot_start_says_why_and_leaves_nothing(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path, extra_config="no_such_option 1")
    with pytest.raises(MosquittoError, match="exited with"):
        broker.start()
    assert broker.process is None


def test_free_ports_are_outside_the_ephemeral_range() -> None:
    lo, hi = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    for _ in range(20):
        port = free_port()
        assert not lo <= port <= hi
