"""Each node's boot count, as its latest Hello said, kept on disk beside the outbox.

A node's frame seqs start again at 0 after a reboot, so the link folds the boot count
into every event's source_seq (`readings.source_seq`). After the agent restarts (a
SIGKILL included) it must fold in the same boot count as before, or a retransmission
of a frame committed before the restart would get a new source_seq and be stored twice:
so a changed boot count is written (fsync'd, then renamed into place) before any frame
folded with it is appended or acknowledged. Hellos are rare, so this costs nothing.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


class BootCounts:
    """node -> boot count for one link, loaded from and saved to `path` (JSON)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._counts: dict[int, int] = {}
        #: Changed since the last save.
        self.dirty = False

    def load(self) -> None:
        """Read the file; a missing one is an empty table. A file that cannot be read is
        an error (folding in wrong boot counts would store retransmissions twice)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            self._counts = {}
            return
        data = json.loads(text)
        self._counts = {int(node): int(boot) for node, boot in data["boot_counts"].items()}

    def get(self, node: int) -> int:
        """The node's boot count (0 until its first Hello)."""
        return self._counts.get(node, 0)

    def set(self, node: int, boot_count: int) -> bool:
        """Record a Hello's boot count; True if it changed (save before acking)."""
        if self._counts.get(node, 0) == boot_count:
            return False
        self._counts[node] = boot_count
        self.dirty = True
        return True

    def save(self) -> None:
        """Write the table durably (blocking: call it on a thread)."""
        self.dirty = False  # before the copy: a set() during the write marks it again
        counts = dict(self._counts)
        text = json.dumps({"boot_counts": {str(n): b for n, b in sorted(counts.items())}})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(temp, "w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, self.path)
            folder = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except BaseException:
            self.dirty = True
            raise
