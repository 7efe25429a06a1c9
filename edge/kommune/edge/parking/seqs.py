"""The last accepted report per bay, durable: `parking/seqs.json` in the state directory.

{"301": [seq, state], ...}; replaced atomically (temporary file, fsync, rename, fsync
of the directory) before the event it accepts is committed to the outbox, so a report
once accepted is never accepted again, across restarts and power cuts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class SeqStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: dict[int, tuple[int, int]] = {}

    def load(self) -> None:
        """Read the file (missing: nothing accepted yet). ValueError if it is damaged:
        the scanner must not start and accept old reports again."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            self._last = {}
            return
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError(f"{self.path}: not an object")
        self._last = {int(k): (int(v[0]), int(v[1])) for k, v in doc.items()}

    def last(self, node: int) -> tuple[int, int] | None:
        """(seq, state) of the last report accepted from `node`, None if none."""
        return self._last.get(node)

    def commit(self, node: int, seq: int, state: int) -> None:
        """Record (seq, state) for `node` durably; returns after the fsync (blocking:
        call it in a thread from asyncio)."""
        updated = dict(self._last)
        updated[node] = (seq, state)
        data = json.dumps({str(k): list(v) for k, v in sorted(updated.items())}).encode()
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._last = updated
