"""The board BLE model's pairing and bonding, over Bumble's SMP, as MicroPython on NimBLE.

- `config(bond=, mitm=, io=, le_secure=)` set the pairing requirements (they
  outlive `active(False)`, as NimBLE's ble_hs_cfg does); defaults: no bonding,
  no MITM protection, no input/output, Legacy Pairing allowed.
- `gap_pair(conn)`: as a central, re-encrypts with the stored key of a bonded
  peer, else pairs; as a peripheral, sends a Security Request. A central that
  gets a Security Request does the same as gap_pair. The outcome is one
  _IRQ_ENCRYPTION_UPDATE (conn, encrypted, authenticated, bonded, key_size)
  when pairing is over (keys stored) or the link is re-encrypted; a failed
  pairing reports encrypted False.
- Passkeys: _IRQ_PASSKEY_ACTION (conn, action, passkey) asks the firmware, which
  answers with `gap_passkey(conn, action, passkey)`: INPUT (2) the passkey the
  peer shows, DISPLAY (3) a passkey it chose and shows, NUMERIC_COMPARISON (4)
  1 to accept `passkey` (shown on both) or 0 to reject. Just Works asks nothing.
- Keys live in the firmware: `FirmwareKeyStore` is Bumble's key store whose
  get/update/delete are _IRQ_GET_SECRET / _IRQ_SET_SECRET asked of the firmware
  (the handler's return value is the answer), with NimBLE's key layout: a
  peer's keys are sec_type 2 (BLE_STORE_OBJ_TYPE_PEER_SEC) under the 7-byte
  ble_addr_t (type, then the address little-endian); enumeration asks with key
  None and index 0, 1, ...; our IRK is sec_type 10 under b"irk", loaded (or
  made and stored) when the radio comes up. The values are the model's own
  serialisation: firmware stores them as opaque bytes, as it does NimBLE's.
  Keys are stored only when both sides bond, as NimBLE does.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os

from bumble import hci
from bumble.core import BaseBumbleError, ProtocolError
from bumble.device import Connection
from bumble.keys import KeyStore, PairingKeys
from bumble.pairing import PairingConfig, PairingDelegate

from kommune.hil.radio.board_ble_events import (
    IRQ_ENCRYPTION_UPDATE,
    IRQ_GET_SECRET,
    IRQ_PASSKEY_ACTION,
    IRQ_SET_SECRET,
    BleEvent,
)
from kommune.hil.radio.board_ble_gatt import BleError
from kommune.hil.radio.board_ble_links import Link, Radio
from kommune.hil.radio.board_ble_stack import HostStack

logger = logging.getLogger(__name__)

SEC_TYPE_PEER = 2  # BLE_STORE_OBJ_TYPE_PEER_SEC
SEC_TYPE_OUR_IRK = 10  # MicroPython's SECRET_TYPE_OUR_IRK
IRK_KEY = b"irk"
IO_NO_INPUT_OUTPUT = 3
IO_CAPABILITIES = range(5)  # DISPLAY_ONLY .. KEYBOARD_DISPLAY, SMP's values
PASSKEY_ACTION_INPUT = 2
PASSKEY_ACTION_DISPLAY = 3
PASSKEY_ACTION_NUMERIC_COMPARISON = 4
MAX_ENUMERATED_PEERS = 64
MAX_KEY_SIZE = 16  # both stacks negotiate 16-byte keys (Bumble reports none)


def store_key(address: hci.Address) -> bytes:
    """NimBLE's ble_addr_t: address type, then the address little-endian."""
    return bytes((address.address_type & 1,)) + bytes(address)


def encode_keys(name: str, keys: PairingKeys) -> bytes:
    return json.dumps({"peer": name, **keys.to_dict()}, separators=(",", ":")).encode()


def decode_keys(value: object) -> tuple[str, PairingKeys] | None:
    if not isinstance(value, bytes):
        return None
    try:
        doc = json.loads(value)
        return str(doc.pop("peer")), PairingKeys.from_dict(doc)
    except (ValueError, KeyError, TypeError) as e:
        logger.warning("a secret the firmware stored is not a key set: %r", e)
        return None


class FirmwareKeyStore(KeyStore):
    """Bumble's key store, kept by the firmware through _IRQ_GET/SET_SECRET."""

    def __init__(self, security: Security) -> None:
        self.security = security

    async def _ask(self, code: int, data: tuple[int | bytes | None, ...]) -> object:
        ask = self.security.radio.ask
        if ask is None:
            return None  # no firmware: nothing stored, nothing kept
        return await ask(BleEvent(code, data))

    async def get(self, name: str) -> PairingKeys | None:
        key = store_key(hci.Address(name))
        found = decode_keys(await self._ask(IRQ_GET_SECRET, (SEC_TYPE_PEER, 0, key)))
        return None if found is None else found[1]

    async def update(self, name: str, keys: PairingKeys) -> None:
        if not self.security.bonding_with(name):
            return  # NimBLE persists keys only when both sides bond
        key = store_key(hci.Address(name))
        stored = await self._ask(IRQ_SET_SECRET, (SEC_TYPE_PEER, key, encode_keys(name, keys)))
        self.security.stored(name, bool(stored))

    async def delete(self, name: str) -> None:
        await self._ask(IRQ_SET_SECRET, (SEC_TYPE_PEER, store_key(hci.Address(name)), None))

    async def get_all(self) -> list[tuple[str, PairingKeys]]:
        entries = []
        for index in range(MAX_ENUMERATED_PEERS):
            found = decode_keys(await self._ask(IRQ_GET_SECRET, (SEC_TYPE_PEER, index, None)))
            if found is None:
                break
            entries.append(found)
        return entries


class _Delegate(PairingDelegate):
    """Pairing questions of one link, asked of the firmware as _IRQ_PASSKEY_ACTION."""

    def __init__(self, security: Security, link: Link, io: int) -> None:
        super().__init__(
            io_capability=PairingDelegate.IoCapability(io),
            local_initiator_key_distribution=PairingDelegate.DEFAULT_KEY_DISTRIBUTION,
            local_responder_key_distribution=PairingDelegate.DEFAULT_KEY_DISTRIBUTION,
        )
        self.security = security
        self.link = link

    async def compare_numbers(self, number: int, digits: int) -> bool:
        answer = await self.security.passkey_action(
            self.link, PASSKEY_ACTION_NUMERIC_COMPARISON, number
        )
        return answer != 0

    async def get_number(self) -> int | None:
        return await self.security.passkey_action(self.link, PASSKEY_ACTION_INPUT, 0)

    async def generate_passkey(self) -> int:
        return await self.security.passkey_action(self.link, PASSKEY_ACTION_DISPLAY, 0)


class Security:
    """Pairing, bonding and the key store of one board."""

    def __init__(self, radio: Radio) -> None:
        self.radio = radio
        self.keystore = FirmwareKeyStore(self)
        self.bond = False
        self.mitm = False
        self.io = IO_NO_INPUT_OUTPUT
        self.le_secure = False
        self.identity_public = True  # the identity address we distribute (addr_mode)
        self._passkeys: dict[int, tuple[int, asyncio.Future[int]]] = {}  # conn -> request
        self._stored: dict[str, bool] = {}  # peer -> its keys are in the firmware's store

    def config_set(self, name: str, value: object) -> bool:
        """`config(bond=, mitm=, io=, le_secure=)`; False for any other name."""
        if name == "bond":
            self.bond = bool(value)
        elif name == "mitm":
            self.mitm = bool(value)
        elif name == "le_secure":
            self.le_secure = bool(value)
        elif name == "io":
            if not isinstance(value, int) or value not in IO_CAPABILITIES:
                raise BleError(errno.EINVAL, "io: 0..4")
            self.io = value
        else:
            return False
        return True

    # -- the radio's life -----------------------------------------------------------

    async def start(self, stack: HostStack) -> None:
        """The radio is up: take over pairing, and load the keys as NimBLE's sync does:
        our IRK first (load_irk), then the peers' (ble_hs_misc_restore_irks)."""
        device = stack.device
        device.pairing_config_factory = self._pairing_config
        irk = await self.keystore._ask(IRQ_GET_SECRET, (SEC_TYPE_OUR_IRK, 0, IRK_KEY))
        if isinstance(irk, bytes) and len(irk) == 16:
            device.irk = irk
        else:
            fresh = os.urandom(16)
            if await self.keystore._ask(IRQ_SET_SECRET, (SEC_TYPE_OUR_IRK, IRK_KEY, fresh)):
                device.irk = fresh
            # else: firmware without a store keeps the stack's fixed IRK, as on NimBLE
        device.keystore = self.keystore
        await stack.command(device.refresh_resolving_list())

    def attach(self, link: Link) -> None:
        """A new link: report its encryption changes; answer a Security Request."""
        connection = link.connection

        def on_encryption_change() -> None:
            if self._pairing(connection):
                return  # reported when pairing is over (keys stored)
            self.radio.spawn_on(link, self._reencrypted(link), lambda status: None)

        def on_pairing(keys: PairingKeys) -> None:
            link.authenticated = _authenticated(keys)
            link.bonded = self._stored.pop(str(connection.peer_address), False)
            self._report(link)

        def on_failure(*_reason: object) -> None:
            link.authenticated = link.bonded = False
            self._report(link)

        def on_security_request(_auth_req: int) -> None:
            if link.we_are_central:
                self.radio.spawn_on(link, self._secure(link), lambda status: None)

        connection.on(Connection.EVENT_CONNECTION_ENCRYPTION_CHANGE, on_encryption_change)
        connection.on(Connection.EVENT_PAIRING, on_pairing)
        connection.on(Connection.EVENT_PAIRING_FAILURE, on_failure)
        connection.on(Connection.EVENT_CONNECTION_ENCRYPTION_FAILURE, on_failure)
        connection.on(Connection.EVENT_SECURITY_REQUEST, on_security_request)

    def detach(self, link: Link) -> None:
        request = self._passkeys.pop(link.handle, None)
        if request is not None:
            request[1].cancel()

    # -- the calls ------------------------------------------------------------------

    def gap_pair(self, conn_handle: int) -> None:
        link = self.radio.link(conn_handle)
        session = self.radio.require_active().device.smp_manager.sessions.get(link.handle)
        if session is not None and not session.completed:
            raise BleError(errno.EALREADY, "pairing in progress")
        if not link.we_are_central:
            link.connection.request_pairing()  # a Security Request
            return
        self.radio.spawn_on(link, self._secure(link), lambda status: None)

    def gap_passkey(self, conn_handle: int, action: int, passkey: int) -> None:
        link = self.radio.link(conn_handle)
        if action not in (
            PASSKEY_ACTION_INPUT,
            PASSKEY_ACTION_DISPLAY,
            PASSKEY_ACTION_NUMERIC_COMPARISON,
        ):
            raise BleError(errno.EINVAL, f"passkey action {action}")
        request = self._passkeys.get(link.handle)
        if request is None or request[0] != action or request[1].done():
            raise BleError(errno.EINVAL, "no such passkey request")
        request[1].set_result(passkey)

    # -- internals ------------------------------------------------------------------

    async def passkey_action(self, link: Link, action: int, passkey: int) -> int:
        """Ask the firmware (the answer is its gap_passkey call)."""
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._passkeys[link.handle] = (action, answer)
        self.radio.emit(IRQ_PASSKEY_ACTION, (link.handle, action, passkey))
        try:
            return await answer
        finally:
            if self._passkeys.get(link.handle, (0, None))[1] is answer:
                del self._passkeys[link.handle]

    def bonding_with(self, name: str) -> bool:
        """Whether the pairing that now stores keys for `name` bonds (both sides asked)."""
        stack = self.radio.require_active()
        for session in stack.device.smp_manager.sessions.values():
            peers = {str(session.connection.peer_address)}
            if session.peer_bd_addr is not None:
                peers.add(str(session.peer_bd_addr))
            if name in peers:
                return bool(session.bonding)
        return False

    def stored(self, name: str, ok: bool) -> None:
        self._stored[name] = ok

    def _pairing(self, connection: Connection) -> bool:
        stack = self.radio.require_active()
        return connection.handle in stack.device.smp_manager.sessions

    def _pairing_config(self, connection: Connection) -> PairingConfig:
        link = self.radio.link(connection.handle)
        return PairingConfig(
            sc=self.le_secure,
            mitm=self.mitm,
            bonding=self.bond,
            delegate=_Delegate(self, link, self.io),
            identity_address_type=(
                PairingConfig.AddressType.PUBLIC
                if self.identity_public
                else PairingConfig.AddressType.RANDOM
            ),
        )

    async def _secure(self, link: Link) -> None:
        """As ble_gap_security_initiate on a central: encrypt if bonded, else pair."""
        stack = self.radio.require_active()
        device = stack.device
        name = str(link.connection.peer_address)
        try:
            keys = await self.keystore.get(name)
            if keys is not None and (keys.ltk or keys.ltk_central):
                link.authenticated = _authenticated(keys)
                await stack.wait(device.encrypt(link.connection))
            else:
                await stack.wait(device.pair(link.connection))
        except (ProtocolError, BaseBumbleError, TimeoutError) as e:
            logger.debug("securing link %d: %r", link.handle, e)

    async def _reencrypted(self, link: Link) -> None:
        """The link is encrypted with a stored key (no pairing): report it."""
        keys = await self.keystore.get(str(link.connection.peer_address))
        link.bonded = keys is not None
        link.authenticated = keys is not None and _authenticated(keys)
        self._report(link)

    def _report(self, link: Link) -> None:
        connection = link.connection
        encrypted = bool(connection.is_encrypted)
        self.radio.emit(
            IRQ_ENCRYPTION_UPDATE,
            (
                link.handle,
                int(encrypted),
                int(encrypted and link.authenticated),
                int(encrypted and link.bonded),
                (connection.encryption_key_size or MAX_KEY_SIZE) if encrypted else 0,
            ),
        )


def _authenticated(keys: PairingKeys) -> bool:
    return any(
        key is not None and key.authenticated
        for key in (keys.ltk, keys.ltk_central, keys.ltk_peripheral)
    )
