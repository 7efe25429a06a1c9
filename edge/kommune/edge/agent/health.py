"""The agent's local HTTP endpoint: `GET /healthz` and `GET /metrics`.

    /healthz   200 and a JSON document of every part's state when all are up and
               healthy; 503 and the same document otherwise (starting, stopping, a part
               restarting or reporting "ok": false)
    /metrics   Prometheus text exposition (version 0.0.4) of the host's and parts' metrics
    anything else: 404; a method other than GET or HEAD: 405

One request per connection (the answer says `Connection: close`). Nothing a client does
can hold the server: the request head must arrive within `request_timeout_s` and fit in
`max_head_bytes` (else 408 or 431, then the connection closes), a request line that is
not HTTP gets 400, answers are written within the same timeout, and when
`max_clients` connections are open the oldest one still sending its request is
dropped to make room. asyncio streams only, no dependencies.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from kommune.edge.agent import metrics
from kommune.edge.agent.logs import fields
from kommune.edge.agent.metrics import Labels, Metric, counter
from kommune.edge.agent.process import PartError

log = logging.getLogger(__name__)

MAX_HEAD_BYTES: Final = 8192
REQUEST_TIMEOUT_S: Final = 5.0
MAX_CLIENTS: Final = 32
#: After an answer, how long (and how much) the client's leftover input is read and dropped.
LINGER_S: Final = 1.0
LINGER_MAX_BYTES: Final = 1 << 20
_REQUEST_LINE = re.compile(r"([A-Z]{1,16}) (/[!-~]*) HTTP/1\.[01]")
_PATHS: Final = ("/healthz", "/metrics")
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


class HealthServer:
    """The part that serves /healthz and /metrics (`status`, `collect`: the host's)."""

    name = "health"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        status: Callable[[], tuple[bool, Mapping[str, Any]]],
        collect: Callable[[], Iterable[Metric]],
        max_head_bytes: int = MAX_HEAD_BYTES,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.host = host
        self.port = port
        self._status = status
        self._collect = collect
        self.max_head_bytes = max_head_bytes
        self.request_timeout_s = request_timeout_s
        self.max_clients = max_clients
        self._server: asyncio.Server | None = None
        #: Open connections: their task, and whether it is still reading the request.
        self._clients: dict[asyncio.Task[None], bool] = {}
        self._writers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        #: Connections the server cut while they were reading, and why.
        self._dropped: dict[asyncio.Task[None], str] = {}
        self.requests: Counter[tuple[str, int]] = Counter()
        self.rejected: Counter[str] = Counter()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        bind = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            self._server = await asyncio.start_server(
                self._serve,
                self.host,
                self.port,
                limit=self.max_head_bytes,
                reuse_address=True,
            )
        except OSError as e:
            why = os.strerror(e.errno) if e.errno else str(e)  # asyncio rewords strerror
            raise PartError(f"cannot listen on {bind} (health.bind): {why}") from e
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            "serving /healthz and /metrics on %s",
            self.url,
            extra=fields(host=self.host, port=self.port),
        )

    async def stop(self) -> None:
        """Stop listening, drop connections that have not sent a whole request, let the
        answers being written finish (bounded by the timeout, and cut if the host's
        share for this stop runs out first)."""
        if self._server is None:
            return
        self._server.close()
        for task, reading in list(self._clients.items()):
            if reading:  # nothing asked yet: nothing to finish
                self._drop(task, "stopping")
        try:
            if self._clients:
                await asyncio.wait(list(self._clients))
        finally:
            for task in list(self._clients):
                task.cancel()
            if self._clients:
                await asyncio.wait(list(self._clients))
            await self._server.wait_closed()
            self._server = None

    def metrics(self) -> list[Metric]:
        requests: dict[Labels, float] = {
            (("path", path), ("code", str(code))): n for (path, code), n in self.requests.items()
        }
        rejected: dict[Labels, float] = {(("reason", r),): n for r, n in self.rejected.items()}
        return [
            counter("http_requests_total", "HTTP requests answered, by path and status", requests),
            counter("http_rejected_total", "HTTP connections dropped without an answer", rejected),
        ]

    # -- one connection ---------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients[task] = True
        self._writers[task] = writer
        clean = False
        try:
            self._make_room()
            answer, path, head_only = await self._read(reader)
            self._clients[task] = False
            if answer is not None:
                await self._write(writer, answer, head_only)
                self.requests[(path, answer.status)] += 1
                clean = True
        except (ConnectionError, TimeoutError):
            self.rejected["broken"] += 1
        except asyncio.CancelledError:
            # The connection ends here. (Not re-raised: Python 3.11's streams log a
            # cancelled connection task as an error; nothing awaits this task's result.)
            pass
        except Exception:
            log.exception("a request failed")
        finally:
            del self._clients[task]
            del self._writers[task]
            self._dropped.pop(task, None)
            await _close(reader, writer, clean)

    def _make_room(self) -> None:
        """At `max_clients` connections, drop the oldest one still sending its request
        (its read ends at once, as if the client had gone)."""
        if len(self._clients) <= self.max_clients:
            return
        for task, reading in self._clients.items():
            if reading and task is not asyncio.current_task() and task not in self._dropped:
                self._drop(task, "crowded")
                return

    def _drop(self, task: asyncio.Task[None], reason: str) -> None:
        self._dropped[task] = reason
        self._writers[task].transport.abort()

    async def _read(self, reader: asyncio.StreamReader) -> tuple[Answer | None, str, bool]:
        """The answer to the request on `reader` (None: close without one), the path as
        counted, and whether it is a HEAD request."""
        try:
            async with asyncio.timeout(self.request_timeout_s):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            self.rejected["timeout"] += 1
            return _text(408, "request not received in time\n"), "(none)", False
        except asyncio.LimitOverrunError:
            self.rejected["too_large"] += 1
            return _text(431, "request head too large\n"), "(none)", False
        except asyncio.IncompleteReadError:
            task = asyncio.current_task()
            self.rejected[self._dropped.get(task, "incomplete") if task else "incomplete"] += 1
            return None, "(none)", False
        lines = head.decode("latin-1").split("\r\n")
        match = _REQUEST_LINE.fullmatch(lines[0])
        if not match or any(line and ":" not in line for line in lines[1:]):
            return _text(400, "not an HTTP/1.x request\n"), "(bad)", False
        method, target = match.groups()
        path = target.split("?", 1)[0]
        counted = path if path in _PATHS else "(other)"
        if method not in ("GET", "HEAD"):
            allow = (("Allow", "GET, HEAD"),)
            return _text(405, "only GET and HEAD\n", allow), counted, False
        return self._answer(path), counted, method == "HEAD"

    def _answer(self, path: str) -> Answer:
        if path == "/healthz":
            healthy, doc = self._status()
            body = (json.dumps(doc, default=str) + "\n").encode()
            return Answer(200 if healthy else 503, "application/json", body)
        if path == "/metrics":
            try:
                text = metrics.render(self._collect())
            except ValueError as e:
                log.error("metrics cannot be shown: %s", e)
                return _text(500, f"metrics failed: {e}\n")
            return Answer(200, metrics.CONTENT_TYPE, text.encode())
        return _text(404, "not found: the agent serves /healthz and /metrics\n")

    async def _write(self, writer: asyncio.StreamWriter, answer: Answer, head_only: bool) -> None:
        headers = [
            ("Content-Type", answer.content_type),
            ("Content-Length", str(len(answer.body))),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
            *answer.headers,
        ]
        head = f"HTTP/1.1 {answer.status} {_REASONS[answer.status]}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers
        )
        writer.write(head.encode("latin-1") + b"\r\n" + (b"" if head_only else answer.body))
        async with asyncio.timeout(self.request_timeout_s):
            await writer.drain()


async def _close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, clean: bool) -> None:
    """Close a connection. After an answer: end our side, read and discard what the client
    still sends (a body, more requests) for a moment, then close -- closing with unread
    input makes the kernel reset the connection, and the client could lose the answer.
    Without an answer: at once."""
    if not clean:
        writer.transport.abort()
        return
    try:
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(LINGER_S):
            discarded = 0
            while discarded < LINGER_MAX_BYTES and (chunk := await reader.read(65536)):
                discarded += len(chunk)
        writer.close()
        async with asyncio.timeout(LINGER_S):
            await writer.wait_closed()
    except (ConnectionError, TimeoutError, asyncio.LimitOverrunError):
        writer.transport.abort()


def _text(status: int, text: str, headers: tuple[tuple[str, str], ...] = ()) -> Answer:
    return Answer(status, "text/plain; charset=utf-8", text.encode(), headers)
