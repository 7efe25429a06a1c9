"""The health endpoint, the metrics it shows and the log format, in this process."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from agent_support import Response, parse_prometheus, parse_response

from kommune.edge.agent import logs
from kommune.edge.agent.health import HealthServer
from kommune.edge.agent.metrics import Metric, check, counter, gauge, render
from kommune.edge.agent.process import PartError


class State:
    def __init__(self) -> None:
        self.healthy = True
        self.metrics: list[Metric] = [counter("things_total", "things", 3)]

    def status(self) -> tuple[bool, dict[str, Any]]:
        return self.healthy, {"status": "up" if self.healthy else "starting", "parts": {}}

    def collect(self) -> list[Metric]:
        return self.metrics


@pytest.fixture
async def served() -> AsyncIterator[tuple[HealthServer, State]]:
    state = State()
    server = HealthServer(
        "127.0.0.1",
        0,
        status=state.status,
        collect=state.collect,
        request_timeout_s=0.3,
        max_clients=4,
    )
    await server.start()
    try:
        yield server, state
    finally:
        await server.stop()


async def exchange(port: int, raw: bytes, *, half_close: bool = False) -> bytes:
    """Send `raw`, read all the server sends until it closes (10 s at most)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        if half_close:
            writer.write_eof()
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass


async def get(port: int, target: str, method: str = "GET") -> Response:
    raw = await exchange(port, f"{method} {target} HTTP/1.1\r\nHost: agent\r\n\r\n".encode())
    return parse_response(raw)


async def test_healthz_is_200_when_healthy_and_503_otherwise(
    served: tuple[HealthServer, State],
) -> None:
    server, state = served
    up = await get(server.port, "/healthz")
    assert (up.status, up.headers["content-type"]) == (200, "application/json")
    assert up.json()["status"] == "up"
    assert up.headers["connection"] == "close"
    state.healthy = False
    down = await get(server.port, "/healthz?verbose=1")
    assert down.status == 503
    assert down.json()["status"] == "starting"


async def test_metrics_are_prometheus_text(served: tuple[HealthServer, State]) -> None:
    server, state = served
    state.metrics.append(
        gauge(
            "weird",
            "help with \\ and\nnewline",
            {(("path", 'C:\\dir "x"\nnext'),): 1.5, (("path", "plain"),): math.inf},
        )
    )
    response = await get(server.port, "/metrics")
    assert response.status == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = parse_prometheus(response.body.decode())
    assert families["kommune_things_total"].type == "counter"
    assert families["kommune_things_total"].samples == {(): 3}
    weird = families["kommune_weird"]
    assert weird.help == "help with \\ and\nnewline"
    assert weird.samples == {(("path", 'C:\\dir "x"\nnext'),): 1.5, (("path", "plain"),): math.inf}
    # The server counts its own answers (the host adds these to what /metrics shows).
    own = parse_prometheus(render(server.metrics()))
    assert own["kommune_http_requests_total"].samples == {
        (("path", "/metrics"), ("code", "200")): 1
    }


async def test_head_has_the_headers_and_no_body(served: tuple[HealthServer, State]) -> None:
    server, _ = served
    raw = await exchange(server.port, b"HEAD /healthz HTTP/1.0\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body == b""
    assert b"Content-Length: " in head


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 404),
        (b"GET /healthz/x HTTP/1.1\r\n\r\n", 404),
        (b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"DELETE /metrics HTTP/1.1\r\n\r\n", 405),
        (b"hello\r\n\r\n", 400),
        (b"GET /healthz HTTP/2.0\r\n\r\n", 400),
        (b"GET healthz HTTP/1.1\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET /\x00 HTTP/1.1\r\n\r\n", 400),
        (b"\xff\xfe\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GET /healthz HTTP/1.1\r\n", 408),  # the head never ends: the timeout answers
    ],
)
async def test_malformed_requests_get_an_error_and_the_server_keeps_serving(
    served: tuple[HealthServer, State], raw: bytes, status: int
) -> None:
    server, _ = served
    answer = parse_response(await exchange(server.port, raw))
    assert answer.status == status
    if status == 405:
        assert answer.headers["allow"] == "GET, HEAD"
    assert (await get(server.port, "/healthz")).status == 200


async def test_a_client_that_leaves_early_gets_nothing_and_hurts_nothing(
    served: tuple[HealthServer, State],
) -> None:
    server, _ = served
    assert await exchange(server.port, b"GET /hea", half_close=True) == b""
    assert server.rejected["incomplete"] == 1
    assert (await get(server.port, "/healthz")).status == 200


async def test_idle_clients_cannot_crowd_out_a_real_one(
    served: tuple[HealthServer, State],
) -> None:
    server, _ = served
    server.request_timeout_s = 60.0  # only crowding, not the timeout, may free them
    idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(8)]
    try:
        assert (await get(server.port, "/healthz")).status == 200
        # 4 may be open; each of the 5 connections after those dropped the oldest idle one.
        assert server.rejected["crowded"] == 5
        for reader, _ in idle[:5]:
            async with asyncio.timeout(10):
                try:
                    assert await reader.read() == b""
                except ConnectionError:
                    pass
    finally:
        for _, writer in idle:
            writer.close()


async def test_stop_does_not_wait_for_idle_clients() -> None:
    state = State()
    server = HealthServer("127.0.0.1", 0, status=state.status, collect=state.collect)
    await server.start()
    idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
    async with asyncio.timeout(10):  # the server has them all (else this proves nothing)
        while len(server._clients) < 3:  # noqa: ASYNC110 -- a plain attribute
            await asyncio.sleep(0.001)
    loop = asyncio.get_running_loop()
    began = loop.time()
    async with asyncio.timeout(server.request_timeout_s / 2):
        await server.stop()
    assert loop.time() - began < 1.0
    for reader, writer in idle:
        async with asyncio.timeout(10):
            try:
                assert await reader.read() == b""
            except ConnectionError:
                pass
        writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", server.port)


async def test_a_port_in_use_is_a_one_line_error_naming_the_key() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        state = State()
        server = HealthServer("127.0.0.1", port, status=state.status, collect=state.collect)
        with pytest.raises(PartError, match=rf"^cannot listen on 127.0.0.1:{port} \(health.bind\)"):
            await server.start()


# -- metrics ---------------------------------------------------------------------------


def test_render_merges_one_name_from_several_parts_and_prefixes_once() -> None:
    text = render(
        [
            gauge("rows", "rows queued", {(("class", "audit"),): 1}),
            gauge("kommune_rows", "ignored help", {(("class", "telemetry"),): 2}),
            counter("sent_total", "sent", 0),
        ]
    )
    families = parse_prometheus(text)
    assert list(families) == ["kommune_rows", "kommune_sent_total"]
    assert families["kommune_rows"].help == "rows queued"
    assert families["kommune_rows"].samples == {
        (("class", "audit"),): 1,
        (("class", "telemetry"),): 2,
    }


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (3, "3"),
        (True, "1"),
        (0.25, "0.25"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
    ],
)
def test_values(value: float, shown: str) -> None:
    assert render([gauge("v", "v", value)]).splitlines()[-1] == f"kommune_v {shown}"


@pytest.mark.parametrize(
    "metric",
    [
        gauge("bad-name", "x", 1),
        gauge("a b", "x", 1),
        gauge("ok", "x", {(("bad-label", "v"),): 1}),
        gauge("ok", "x", {(("__reserved", "v"),): 1}),
        gauge("ok", "x", {(("a", "1"), ("a", "2")): 1}),
        gauge("ok", "x", {(("a", 1),): 1}),  # type: ignore[dict-item]
        Metric("ok", "histogram", "x", {(): 1}),  # type: ignore[arg-type]
    ],
)
def test_malformed_metrics_are_refused(metric: Metric) -> None:
    with pytest.raises(ValueError):
        check(metric)
    with pytest.raises(ValueError):
        render([metric])


def test_one_name_cannot_be_two_kinds() -> None:
    with pytest.raises(ValueError, match="both a gauge and a counter"):
        render([gauge("x", "x", 1), counter("x", "x", 1)])


# -- logs ------------------------------------------------------------------------------


def _record(name: str, message: str, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord(name, logging.WARNING, __file__, 1, message, (), None)
    record.__dict__.update(extra)
    return record


def test_a_json_log_line_has_time_level_part_message_and_fields() -> None:
    line = logs.JsonFormatter().format(
        _record("kommune.edge.uplink.session", "lost the broker", **logs.fields(after_s=3.5))
    )
    doc = json.loads(line)
    assert list(doc) == ["time", "level", "part", "message", "fields"]
    assert doc["level"] == "warning" and doc["part"] == "uplink"
    assert doc["message"] == "lost the broker" and doc["fields"] == {"after_s": 3.5}
    assert doc["time"].endswith("Z") and "T" in doc["time"]


def test_an_exception_stays_on_its_json_line() -> None:
    try:
        raise RuntimeError("bad\nthing")
    except RuntimeError:
        import sys

        record = _record("kommune.edge.agent", "crashed", part="store")
        record.exc_info = sys.exc_info()
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["part"] == "store" and "RuntimeError: bad" in doc["exception"]


@pytest.mark.parametrize(
    ("logger", "part"),
    [
        ("kommune.edge.agent.health", "health"),
        ("kommune.edge.agent", "agent"),
        ("kommune.edge.outbox.recovery", "outbox"),
        ("aiomqtt", "aiomqtt"),
        ("root", "agent"),
    ],
)
def test_the_part_comes_from_the_logger(logger: str, part: str) -> None:
    assert logs.part_of(_record(logger, "m")) == part


def test_human_lines_show_fields_quoted_when_needed() -> None:
    line = logs.HumanFormatter().format(
        _record("kommune.edge.agent.health", "serving", **logs.fields(port=9470, note="a b"))
    )
    assert line.endswith(' WARNING health: serving port=9470 note="a b"')


def test_configure_sends_records_to_the_stream_in_the_format_asked() -> None:
    stream = io.StringIO()
    counts = logs.configure("json", "info", stream)
    try:
        logging.getLogger("kommune.edge.agent.x").debug("not shown")
        logging.getLogger("kommune.edge.agent.x").info("shown")
        logging.getLogger("kommune.edge.agent.x").error("bad")
    finally:
        root = logging.getLogger()
        for handler in list(logs._installed):
            root.removeHandler(handler)
        root.setLevel(logging.WARNING)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(d["level"], d["message"]) for d in lines] == [("info", "shown"), ("error", "bad")]
    assert counts.counts["info"] == 1 and counts.counts["error"] == 1
