"""The bays' report keys on the edge: `[parking] keys = "PATH"` in the site file.

A JSON object of node id -> 64 hex digits, written by whoever provisions the sensors
(`kommune.edge.parking_keys.parking_key(site_key, node_id)`), owner-only (0600):

    {"301": "ab54...3d14", "302": "..."}
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path


class KeyFileError(Exception):
    """The key file cannot be used: one line naming the path."""


def load_keys(path: Path) -> dict[int, bytes]:
    try:
        st = path.stat()
        raw = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"{path}: {e.strerror or e}") from e
    if st.st_mode & 0o077:
        mode = stat.S_IMODE(st.st_mode)
        raise KeyFileError(f"{path}: mode {mode:04o} lets others read the keys (chmod 600)")
    if st.st_uid != os.geteuid():
        raise KeyFileError(f"{path}: owned by uid {st.st_uid}, not by us")
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise KeyFileError(f"{path}: not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise KeyFileError(f"{path}: expected an object of node id -> key hex")
    keys: dict[int, bytes] = {}
    for name, value in doc.items():
        try:
            node = int(name)
            key = bytes.fromhex(value)
        except (ValueError, TypeError):
            raise KeyFileError(f"{path}: {name!r}: expected a node id and 64 hex digits") from None
        if len(key) != 32 or not 1 <= node <= 0xEFFE:
            raise KeyFileError(f"{path}: {name!r}: expected a node id 1-61438 and a 32-byte key")
        keys[node] = key
    return keys
