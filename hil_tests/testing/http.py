"""A small HTTP/1.1 client for tests that read an agent's /healthz and /metrics: the raw
bytes go out as given and the answer is checked strictly (test support)."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    port: int, raw: bytes, *, host: str = "127.0.0.1", timeout_s: float = 10.0
) -> bytes:
    """Send `raw`, read until the server closes; what it sent back."""
    with socket.create_connection((host, port), timeout=timeout_s) as conn:
        conn.sendall(raw)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def parse_response(raw: bytes) -> Response:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    assert int(headers["content-length"]) == len(body), "Content-Length is not the body's"
    return Response(status, headers, body)


def http_get(port: int, path: str, *, host: str = "127.0.0.1") -> Response:
    return parse_response(http_request(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()))
