"""Finding a lock on the air, and what is remembered about it between runs.

A lock advertises manufacturer data (company 0xFFFF: "KL", version 1, state flags,
lock id u32 big-endian; firmware/lock/README.md), so a phone finds its door by the
lock id without connecting to any other device. Per lock a small cache file keeps its
address and its GATT database (handles, UUIDs, properties), so the next unlock skips
service discovery (the Bumble backend's cache, filled from the file; a platform
backend keeps its own).

The cache: `$KOMMUNE_LOCK_CACHE`, else `$XDG_CACHE_HOME/kommune/locks.json`
(~/.cache/kommune/locks.json); mode 0600; losing it costs one discovery.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

SERVICE_UUID = "4b4d4c00-6b6f-6d6d-756e-652d6c6f636b"
HANDSHAKE_UUID = "4b4d4c01-6b6f-6d6d-756e-652d6c6f636b"
STATUS_UUID = "4b4d4c02-6b6f-6d6d-756e-652d6c6f636b"
COMPANY_ID = 0xFFFF
ADV_MAGIC = b"KL"
CACHE_ENV = "KOMMUNE_LOCK_CACHE"
# Advertised state flags
FLAG_PROVISIONED = 0x01
FLAG_FAULT = 0x02
FLAG_BATTERY_LOW = 0x04
FLAG_NEEDS_TIME = 0x08


@dataclass(frozen=True)
class Advert:
    """What a lock's advertisement says."""

    lock_id: int
    flags: int
    rssi: int | None

    @property
    def provisioned(self) -> bool:
        return bool(self.flags & FLAG_PROVISIONED)

    @property
    def needs_time(self) -> bool:
        return bool(self.flags & FLAG_NEEDS_TIME)


def parse_advert(adv: AdvertisementData) -> Advert | None:
    """The lock's advert fields, or None if it is not a lock's advertisement."""
    data = adv.manufacturer_data.get(COMPANY_ID, b"")
    if len(data) != 8 or data[:2] != ADV_MAGIC or data[2] != 1:
        return None
    return Advert(int.from_bytes(data[4:8], "big"), data[3], adv.rssi)


def matches(advert: Advert | None, device: BLEDevice, lock_id: int, address: str | None) -> bool:
    """Our lock: its advertised id (or, with `address`, that address)."""
    if address is not None:
        return device.address.upper() == address.upper()
    return advert is not None and advert.lock_id == lock_id


# -- the cache file -----------------------------------------------------------------


def cache_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get(CACHE_ENV):
        return Path(env[CACHE_ENV])
    xdg = env.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "kommune" / "locks.json"


class LockCache:
    """lock id -> {"address": ..., "gatt": {...}, "seen_s": ...}; best effort: a cache
    that cannot be read or written is worked around, never an error."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_path()
        self._doc: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(doc, dict) and doc.get("version") == 1:
                self._doc = doc.get("locks", {})

    def address(self, lock_id: int) -> str | None:
        entry = self._doc.get(str(lock_id))
        return str(entry["address"]) if isinstance(entry, dict) and "address" in entry else None

    def preload(self, lock_id: int, address: str) -> bool:
        """Hand the cached GATT database of the lock at `address` to the Bumble backend."""
        from kommune.edge.ble import gatt

        entry = self._doc.get(str(lock_id))
        if not isinstance(entry, dict) or entry.get("address", "").upper() != address.upper():
            return False
        if gatt.cached(address) is not None:
            return True
        try:
            gatt.preload(address, _database_from_json(entry["gatt"]))
        except (KeyError, TypeError, ValueError):
            return False
        return True

    def remember(self, lock_id: int, address: str) -> None:
        from kommune.edge.ble import gatt

        entry: dict[str, Any] = {"address": address.upper(), "seen_s": int(time.time())}
        database = gatt.cached(address)
        if database is not None:
            entry["gatt"] = _database_to_json(database)
        else:
            old = self._doc.get(str(lock_id))
            if isinstance(old, dict) and old.get("address") == entry["address"] and "gatt" in old:
                entry["gatt"] = old["gatt"]
        self._doc[str(lock_id)] = entry
        data = json.dumps({"version": 1, "locks": self._doc}, indent=1).encode()
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, self.path)

    def forget(self, lock_id: int) -> None:
        from kommune.edge.ble import gatt

        address = self.address(lock_id)
        if address is not None:
            gatt.forget(address)


def _database_to_json(db: Any) -> dict[str, Any]:
    return {
        "hash": db.database_hash.hex() if db.database_hash is not None else None,
        "services": [
            {
                "handle": s.handle,
                "end": s.end_group_handle,
                "uuid": s.uuid.to_hex_str("-"),
                "chars": [
                    {
                        "handle": c.handle,
                        "end": c.end_group_handle,
                        "uuid": c.uuid.to_hex_str("-"),
                        "props": c.properties,
                        "descs": [[d.handle, d.uuid.to_hex_str("-")] for d in c.descriptors],
                    }
                    for c in s.characteristics
                ],
            }
            for s in db.services
        ],
    }


def _database_from_json(doc: dict[str, Any]) -> Any:
    from bumble.core import UUID

    from kommune.edge.ble.gatt import (
        CachedCharacteristic,
        CachedDatabase,
        CachedDescriptor,
        CachedService,
    )

    return CachedDatabase(
        tuple(
            CachedService(
                int(s["handle"]),
                int(s["end"]),
                UUID(s["uuid"]),
                tuple(
                    CachedCharacteristic(
                        int(c["handle"]),
                        int(c["end"]),
                        UUID(c["uuid"]),
                        int(c["props"]),
                        tuple(CachedDescriptor(int(h), UUID(u)) for h, u in c["descs"]),
                    )
                    for c in s["chars"]
                ),
            )
            for s in doc["services"]
        ),
        bytes.fromhex(doc["hash"]) if doc.get("hash") else None,
    )
