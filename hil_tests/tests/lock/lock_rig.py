"""An emulated door lock for the tests: the lock firmware (compiled with mpy-cross, as a
bundle ships it) on an esp32-lock board with a radio, keys derived from a site key drawn
for the test, and a phone/edge that talks to it with bleak through the edge's Bumble
backend and the protocol's own clients.

    lock = await start_lock(air, make_board)            # provisioned, booted, on the air
    async with lock.connect() as link:
        await link.set_time()                            # the edge: authenticated time set
        reply = await link.request(lock.issue(), RIGHT_UNLOCK)
    entries = lock.audit()                               # the audit log, read from flash
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from bleak import BleakClient, BleakScanner

from kommune.edge import keys
from kommune.edge.ble import (
    BleakClientBumble,
    BleakScannerBumble,
    NotificationQueue,
    forget_cached_services,
)
from kommune.edge.token_authority import IssuedToken, TokenAuthority
from kommune.hil import firmware_files as fw
from kommune.hil.harness import Board
from kommune.hil.models.bolt import BoltMechanism
from kommune.hil.radio import Air
from kommune.protocols import audit
from kommune.protocols.audit import AuditEntry
from kommune.protocols.hmac_sha256 import HmacKey
from kommune.protocols.lock_client import (
    CHALLENGE_REQUEST,
    EdgeSession,
    HolderSession,
    Reply,
    notice,
)
from kommune.protocols.lock_wire import CMD_TIME_SET, RIGHT_LOCK, RIGHT_UNLOCK

LOCK_ID = 1017
SERVICE = "4b4d4c00-6b6f-6d6d-756e-652d6c6f636b"
HANDSHAKE = "4b4d4c01-6b6f-6d6d-756e-652d6c6f636b"
STATUS = "4b4d4c02-6b6f-6d6d-756e-652d6c6f636b"
COMPANY_ID = 0xFFFF
PROFILE = "esp32-lock"

LOCK_PROTOCOL_MODULES = [
    "__init__",
    "errors",
    "hmac_sha256",
    "lock_wire",
    "seal",
    "token",
    "handshake",
    "audit",
    "lock_verifier",
]
#: What the lock imports from firmware/common (its bundle ships these, not every node's).
LOCK_COMMON_MODULES = ["__init__", "files", "adv"]
#: Short times, so a test sees a relock in a fraction of a second.
TEST_CONFIG = {
    "relock_ms": 400,
    "door_settle_ms": 100,
    "travel_timeout_ms": 600,
    "wdt_ms": 3000,  # a firmware that stops feeding it is reset within a test
}


@cache
def firmware_files() -> dict[str, bytes]:
    """Board path -> content: main.py as source (the board runs it), every other module
    as .mpy (a bundle's form: no parse at boot, more heap left)."""
    return fw.bundle("lock", common=LOCK_COMMON_MODULES, protocols=LOCK_PROTOCOL_MODULES)


def identity_file(lock_id: int, lock_keys: keys.LockKeys, site_id: str = "test-site") -> bytes:
    """/lock/identity.json as `kommune provision lock` writes it (firmware/lock/README.md)."""
    doc = {
        "version": 1,
        "lock_id": lock_id,
        "site_id": site_id,
        "token_key": lock_keys.token_key.hex(),
        "edge_key": lock_keys.edge_key.hex(),
        "audit_key": lock_keys.audit_key.hex(),
    }
    return json.dumps(doc).encode()


# -- the audit log as the flash holds it (firmware/lock/store.py) ------------------

_HEAD = ">4sBIIII16s"
_HEAD_BYTES = 37
_STATE_BYTES = 92
_FLAG_NEEDS_TIME = 1
_FLAG_MARKER = 2


@dataclass
class FlashState:
    epoch: int
    needs_time: bool
    fault: int  # the bolt's latched fault: 0, 16 (jam unlocking), 17 (jam locking)
    first_seq: int
    next_seq: int
    last_time_s: int
    last_hash: bytes
    entries: list[AuditEntry]


def read_flash_state(board: Board, audit_key: bytes, lock_id: int, capacity: int) -> FlashState:
    """The lock's committed state, read host-side from the flash image, every check the
    firmware's own load() makes done here independently: CRC, entry MACs, the chain."""
    raw = board.read_file("/lock/state.bin")
    assert len(raw) == _STATE_BYTES + 4, len(raw)
    (crc,) = struct.unpack(">I", raw[_STATE_BYTES:])
    assert crc == zlib.crc32(raw[:_STATE_BYTES]), "state file CRC"
    magic, flags, epoch, first, nxt, last_time_s, last_hash = struct.unpack_from(_HEAD, raw)
    assert magic == b"KLS1"
    ring = board.read_file("/lock/audit.bin")
    slots = capacity + 8
    assert len(ring) == slots * audit.ENTRY_BYTES
    raws: list[bytes] = []
    seq = first
    if flags & _FLAG_MARKER:
        raws.append(raw[_HEAD_BYTES:_STATE_BYTES])
        seq += 1
    for s in range(seq, nxt):
        at = ((s - 1) % slots) * audit.ENTRY_BYTES
        raws.append(ring[at : at + audit.ENTRY_BYTES])
    key = HmacKey(audit_key)
    for i, e in enumerate(raws):
        assert e[39:] == audit.entry_mac(key, lock_id, e[:39]), f"entry {i} MAC"
        if i:
            # After a lost marker the chain goes on from the last entry it replaced.
            before = raws[i - 1]
            link = before[23:39] if before[8] == audit.EVENT_LOST else audit.entry_hash(before)
            assert e[23:39] == link, f"entry {i} chain"
            assert audit.seq_of(e) == audit.seq_of(raws[i - 1]) + 1
    if raws:
        assert audit.entry_hash(raws[-1]) == last_hash
        assert audit.seq_of(raws[-1]) == nxt - 1
    return FlashState(
        epoch=epoch,
        needs_time=bool(flags & _FLAG_NEEDS_TIME),
        fault=16 if flags & 4 else 17 if flags & 8 else 0,
        first_seq=first,
        next_seq=nxt,
        last_time_s=last_time_s,
        last_hash=last_hash,
        entries=[audit.decode_entry(e) for e in raws],
    )


# -- the lock and its peers ----------------------------------------------------------


@dataclass
class Lock:
    board: Board
    air: Air
    phone: str  # the phone's (and edge's) HCI transport
    lock_id: int
    lock_keys: keys.LockKeys
    authority: TokenAuthority
    capacity: int = 64
    address: str = ""
    _next_holder: int = field(default=100)

    @property
    def bolt(self) -> BoltMechanism:
        bolt: BoltMechanism = self.board.device("bolt")
        return bolt

    def bolt_state(self) -> str:
        bolt = self.bolt
        return self.board.call(lambda: bolt.state)

    def issue(
        self,
        *,
        rights: int = RIGHT_UNLOCK | RIGHT_LOCK,
        start_s: int = -60,
        end_s: int = 600,
        lock_id: int | None = None,
        holder_id: int | None = None,
    ) -> IssuedToken:
        """A token for a new holder, valid from now+start_s to now+end_s."""
        now = int(time.time())
        if holder_id is None:
            self._next_holder += 1
            holder_id = self._next_holder
        return self.authority.issue(
            holder_id=holder_id,
            lock_id=self.lock_id if lock_id is None else lock_id,
            not_before_s=now + start_s,
            not_after_s=now + end_s,
            rights=rights,
        )

    def ready(self) -> bool:
        """The firmware of the current boot is up (committed its boot entry, bolt thrown)."""
        this_boot = self.board.console_output().rsplit("rst:", 1)[-1]
        return f"lock {self.lock_id} ready" in this_boot

    def flash_state(self) -> FlashState:
        return read_flash_state(self.board, self.lock_keys.audit_key, self.lock_id, self.capacity)

    async def find(self, timeout_s: float = 10.0) -> Any:
        """The lock, found by the lock id in its advertisement (no connection made)."""
        want = self.lock_id

        def is_ours(_d: Any, adv: Any) -> bool:
            data = adv.manufacturer_data.get(COMPANY_ID, b"")
            return len(data) == 8 and data[:2] == b"KL" and int.from_bytes(data[4:8]) == want

        device = await BleakScanner.find_device_by_filter(
            is_ours, timeout=timeout_s, backend=BleakScannerBumble, transport=self.phone
        )
        assert device is not None, f"lock {want} not found; console:\n{self.board.console_output()}"
        return device

    @asynccontextmanager
    async def connect(
        self, *, disconnected: Callable[[], None] | None = None, ask: bool = True
    ) -> AsyncIterator[Link]:
        """A phone's connection, subscribed; with `ask`, a CHALLENGE_REQUEST rides with
        the subscription (one round trip for both)."""
        device = await self.find()
        lost = asyncio.Event()

        def on_lost(_client: BleakClient) -> None:
            lost.set()
            if disconnected is not None:
                disconnected()

        client = BleakClient(
            device,
            backend=BleakClientBumble,
            transport=self.phone,
            timeout=10.0,
            disconnected_callback=on_lost,
        )
        async with client:
            link = Link(self, client, lost)
            if ask:
                # The subscription and the CHALLENGE_REQUEST in one round trip: the
                # request goes as a write without response behind the CCCD write.
                link.asked_at = time.monotonic()
                await asyncio.gather(
                    client.start_notify(HANDSHAKE, link.queue),
                    client.write_gatt_char(HANDSHAKE, CHALLENGE_REQUEST, response=False),
                )
            else:
                await client.start_notify(HANDSHAKE, link.queue)
            link.round_trips = 1
            yield link


#: A challenge older than this is not answered (the lock's relay bound is 500 ms).
FRESH_S = 0.4


class LinkLost(ConnectionError):
    """The lock went away while the phone waited for its answer."""


class Link:
    """One BLE connection to the lock, as a phone or the edge holds it."""

    def __init__(self, lock: Lock, client: BleakClient, lost: asyncio.Event) -> None:
        self.lock = lock
        self.client = client
        self.queue = NotificationQueue()
        self._lost = lost  # set when the link drops
        self._challenge: bytes | None = None  # the one the lock notified after its last reply
        self.batch = b""  # the audit batch that followed the last read-audit reply
        self.refusals = 0  # authentic refusals on this connection
        self.round_trips = 0  # GATT requests the phone waited for (subscription, writes)
        self.asked_at: float | None = None  # a CHALLENGE_REQUEST is out since (monotonic s)
        self._challenge_at = 0.0  # when the lock issued self._challenge (about)

    async def _next(self, timeout_s: float = 5.0) -> bytes:
        """The next notification; LinkLost if the link drops first (a lock that lost
        its power answers nothing)."""
        if not self.queue.queue.empty():
            return self.queue.queue.get_nowait()
        value = asyncio.ensure_future(self.queue.next(timeout_s))
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait((value, lost), return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not value.done():
                value.cancel()
        if not value.done() or value.cancelled():
            raise LinkLost("the lock dropped the link")
        if value.exception() is not None:
            tail = self.lock.board.console_output()[-1500:]
            raise TimeoutError(f"no notification within {timeout_s} s; lock console:\n{tail}")
        return value.result()

    async def challenge(self) -> bytes:
        """The connection's current CHALLENGE: the one asked for at connect, the one the
        lock notified after its last answer, or one asked for now (CHALLENGE_REQUEST)."""
        if self._challenge is not None and time.monotonic() - self._challenge_at > FRESH_S:
            self._challenge = None  # expired on the lock by now (relay bound): ask anew
        if self._challenge is None:
            if self.asked_at is not None:
                asked_at, self.asked_at = self.asked_at, None
                self._challenge = await self._next()
                self._challenge_at = asked_at
                if time.monotonic() - asked_at > FRESH_S:
                    self._challenge = None
            if self._challenge is None:
                self._challenge_at = time.monotonic()
                await self.client.write_gatt_char(HANDSHAKE, CHALLENGE_REQUEST, response=True)
                self.round_trips += 1
                self._challenge = await self._next()
        ch, self._challenge = self._challenge, None
        assert ch[0] == 0x01, ch.hex()
        return ch

    async def exchange(self, message: bytes, *, batch: bool = False) -> tuple[bytes, bytes]:
        """Write a message; (the lock's reply, the audit batch that follows it if `batch`)."""
        await self.client.write_gatt_char(HANDSHAKE, message, response=True)
        self.round_trips += 1
        reply = await self._next()
        extra = await self._next() if batch else b""
        return reply, extra

    def _kept(self, result: Reply) -> bool:
        # Whether the lock keeps the connection (and sends the next CHALLENGE): an
        # authentic answer, unless it was the third refusal on this connection.
        if not result.authenticated:
            return False
        if not result.ok:
            self.refusals += 1
        return self.refusals < 3

    async def after_reply(self) -> None:
        """Take the next CHALLENGE the lock notifies after an answer it kept the link for."""
        self._challenge = await self._next()
        self._challenge_at = time.monotonic()

    async def request(
        self,
        issued: IssuedToken,
        op: int = RIGHT_UNLOCK,
        *,
        batch: bool = False,
        lock_id: int | None = None,
    ) -> Reply:
        """A holder's REQUEST on this link; the lock's reply as the phone reads it.
        (lock_id: answer a challenge of this lock whatever the token is for.)"""
        holder = HolderSession(
            issued.token, issued.session_key, issued.lock_id if lock_id is None else lock_id
        )
        message = holder.request(await self.challenge(), op, os.urandom(16))
        reply, self.batch = await self.exchange(message, batch=batch)
        result = holder.result(reply)
        if self._kept(result):
            await self.after_reply()
        return result

    async def set_time(self, now_s: int | None = None) -> Reply:
        """The edge's authenticated time set (the lock's clock may be years off)."""
        now = int(time.time()) if now_s is None else now_s
        edge = EdgeSession(self.lock.lock_keys.edge_key, self.lock.lock_id)
        message = edge.command(
            await self.challenge(), CMD_TIME_SET, now, os.urandom(16), now_s=now, max_skew_s=2**32
        )
        reply, _ = await self.exchange(message)
        result = edge.result(reply)
        if self._kept(result):
            await self.after_reply()
        return result

    async def deny(
        self, epoch: int, version: int, token_ids: list[int], holder_ids: list[int]
    ) -> Reply:
        """The edge's sealed deny-list (no challenge needed); the lock's NOTICE."""
        edge = EdgeSession(self.lock.lock_keys.edge_key, self.lock.lock_id)
        reply, _ = await self.exchange(edge.deny_list(epoch, version, token_ids, holder_ids))
        result = notice(reply)
        if result.status in {"ok", "bad_value"}:
            await self.after_reply()  # kept: the next CHALLENGE follows
        return result

    async def status_until(
        self, predicate: Callable[[dict[str, str]], bool], what: str, timeout_s: float = 5.0
    ) -> dict[str, str]:
        """Read the status until `predicate` holds (the door contact is noticed by the
        firmware's task, not at once): each read is a GATT round trip."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = await self.status()
            if predicate(status):
                return status
            assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s: {status}"

    async def status(self) -> dict[str, str]:
        """The status characteristic as key=value pairs (a bare word maps to "")."""
        text = (await self.client.read_gatt_char(STATUS)).decode()
        out: dict[str, str] = {}
        for word in text.replace("(", " (").split():
            key, _, value = word.partition("=")
            out[key] = value
        out["text"] = text
        return out


async def start_lock(
    air: Air,
    make_board: Callable[..., Board],
    *,
    lock_id: int = LOCK_ID,
    provisioned: bool = True,
    extra_files: dict[str, bytes] | None = None,
    config: dict[str, int] | None = None,
    name: str = "lock",
) -> Lock:
    """A lock board on the air, provisioned with keys from a fresh site key, booted."""
    site_key = keys.new_site_key()
    lock_keys = keys.derive_lock_keys(site_key, lock_id or LOCK_ID)  # 0: unprovisioned
    files = dict(firmware_files())
    files["/lock/config.json"] = json.dumps({**TEST_CONFIG, **(config or {})}).encode()
    if provisioned:
        files["/lock/identity.json"] = identity_file(lock_id, lock_keys)
    files.update(extra_files or {})
    address = f"F0:4C:00:00:{lock_id >> 8 & 0xFF:02X}:{lock_id & 0xFF:02X}"
    forget_cached_services(address)
    device = await air.add_device(name, address)
    phone = await air.add_device(f"{name}-phone")
    # A lock that loses power drops its links at once for the phone (not after seconds).
    await air.set_link(f"{name}-phone", name, supervision_timeout_ms=300)
    board = await asyncio.to_thread(make_board, name, PROFILE, files=files, radio=device)
    return Lock(
        board=board,
        air=air,
        phone=phone.transport,
        lock_id=lock_id,
        lock_keys=lock_keys,
        authority=TokenAuthority(site_key),
        address=address,
    )
