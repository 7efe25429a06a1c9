"""The GATT server of the board BLE model: MicroPython's service table and value store.

What it reproduces (MicroPython `bluetooth.BLE` on NimBLE, as on an ESP32):

- `gatts_register_services` turns a services definition into attributes and
  returns, per service, the value handles of its characteristics with each
  one's descriptors right after it, in definition order. The CCCD of a
  notify/indicate characteristic is added by the stack right after the value
  (as NimBLE does: the firmware's descriptors follow it) and not returned.
- Every characteristic and descriptor value lives in a buffer of 20 bytes by
  default. A central's write is truncated to the buffer (silently, as NimBLE
  does); `gatts_write` from the firmware grows it; `gatts_set_buffer` resizes
  it and empties it, and in append mode a central's writes accumulate (up to
  the size) until the firmware's `gatts_read` takes and clears them.
- Flags are MicroPython's 16-bit mask, passed to NimBLE as they are. A central
  may read only a characteristic with FLAG_READ and write one with FLAG_WRITE
  or FLAG_WRITE_NO_RESPONSE (else READ/WRITE_NOT_PERMITTED); *_ENCRYPTED and
  *_AUTHENTICATED are enforced as NimBLE's ble_att_svr_check_perms does
  (Insufficient Authentication, or Insufficient Encryption when the central
  is bonded but has not encrypted the link); *_AUTHORIZED is accepted and has
  no effect (NimBLE leaves it to a callback MicroPython does not install).
  Descriptors take the same flag constants; NimBLE keeps only READ and
  WRITE/WRITE_NO_RESPONSE of them (no security on descriptors). Bits nobody
  uses are ignored.

Definitions are JSON-able: a UUID is an int (16- or 32-bit) or a str (128-bit,
"6e400001-b5a3-f393-e0a9-e50e24dcca9e"); lists stand for tuples.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from bumble import att, gatt
from bumble.core import UUID
from bumble.device import Connection
from bumble.gatt_server import Server
from bumble.profiles.gatt_service import GenericAttributeProfileService

# Characteristic and descriptor flags (MicroPython's bluetooth.FLAG_*). The low
# byte is the GATT properties field; the high byte is NimBLE's security flags.
FLAG_BROADCAST = 0x0001
FLAG_READ = 0x0002
FLAG_WRITE_NO_RESPONSE = 0x0004
FLAG_WRITE = 0x0008
FLAG_NOTIFY = 0x0010
FLAG_INDICATE = 0x0020
FLAG_AUTHENTICATED_SIGNED_WRITE = 0x0040
FLAG_RELIABLE_WRITE = 0x0080  # not MicroPython's; NimBLE's BLE_GATT_CHR_F_RELIABLE_WRITE
FLAG_AUX_WRITE = 0x0100
FLAG_READ_ENCRYPTED = 0x0200
FLAG_READ_AUTHENTICATED = 0x0400
FLAG_READ_AUTHORIZED = 0x0800
FLAG_WRITE_ENCRYPTED = 0x1000
FLAG_WRITE_AUTHENTICATED = 0x2000
FLAG_WRITE_AUTHORIZED = 0x4000
PROPERTY_EXTENDED = 0x80

DEFAULT_BUFFER_SIZE = 20  # MP_BLUETOOTH_DEFAULT_ATTR_LEN
# GAP Appearance: MicroPython has no config for it, so an ESP32 serves ESP-IDF's
# CONFIG_BT_NIMBLE_SVC_GAP_APPEARANCE default, 0x0000 ("Unknown").
APPEARANCE = 0x0000
# Descriptors the stack owns: a definition may not declare them.
STACK_DESCRIPTORS = (
    gatt.GATT_CHARACTERISTIC_EXTENDED_PROPERTIES_DESCRIPTOR,
    gatt.GATT_CLIENT_CHARACTERISTIC_CONFIGURATION_DESCRIPTOR,
)

Uuid = int | str
# (conn_handle, value_handle, raw bytes the central wrote)
WriteListener = Callable[[int, int, bytes], None]


class LinkSecurity(Protocol):
    """What the server needs to know about a link to enforce the security flags."""

    def encrypted(self, connection: Connection) -> bool: ...

    def authenticated(self, connection: Connection) -> bool:
        """Encrypted with a key from MITM-protected pairing."""
        ...

    def bonded(self, connection: Connection) -> Awaitable[bool]:
        """The store holds a long-term key for this peer."""
        ...


class NoSecurity:
    """A server whose links are never encrypted (no pairing)."""

    def encrypted(self, connection: Connection) -> bool:
        return bool(connection.is_encrypted)

    def authenticated(self, connection: Connection) -> bool:
        return False

    async def bonded(self, connection: Connection) -> bool:
        return False


class BleError(OSError):
    """What MicroPython raises as OSError(errno) from a `bluetooth.BLE` call."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(code, message or errno.errorcode.get(code, str(code)))


class ValueBuffer:
    """One characteristic's or descriptor's stored value (mp_bluetooth_gatts_db_entry_t)."""

    __slots__ = ("append", "data", "size")

    def __init__(self, size: int = DEFAULT_BUFFER_SIZE) -> None:
        self.data = b""
        self.size = size
        self.append = False

    def remote_write(self, value: bytes) -> None:
        """A central's write: replaces (or appends to) the value, cut to the buffer."""
        self.data = ((self.data + value) if self.append else value)[: self.size]

    def local_write(self, value: bytes) -> None:
        """`gatts_write`: stores the whole value, growing the buffer if needed."""
        self.size = max(self.size, len(value))
        self.data = value

    def local_read(self) -> bytes:
        """`gatts_read`: the value; in append mode it is taken (the buffer empties)."""
        value = self.data
        if self.append:
            self.data = b""
        return value

    def resize(self, size: int, append: bool) -> None:
        """`gatts_set_buffer`: a new size and mode, and an empty value."""
        self.size = size
        self.append = append
        self.data = b""


class _Access:
    """What one value requires of a central (NimBLE's BLE_ATT_F_* for it)."""

    __slots__ = ("authenticated", "encrypted", "permitted")

    def __init__(self, permitted: bool, encrypted: bool = False, authenticated: bool = False):
        self.permitted = permitted
        self.encrypted = encrypted
        self.authenticated = authenticated


class _Slot:
    """The Bumble-facing side of one value: permission checks and the write event."""

    def __init__(
        self, read: _Access, write: _Access, on_write: WriteListener, security: LinkSecurity
    ) -> None:
        self.buffer = ValueBuffer()
        self.read_access = read
        self.write_access = write
        self.on_write = on_write
        self.security = security
        self.attribute: att.Attribute[bytes] | None = None

    async def _check(self, connection: Connection, access: _Access, denied: int) -> None:
        # NimBLE's ble_att_svr_check_perms: permission; an unencrypted link gets
        # Insufficient Encryption if the peer is bonded (it should encrypt), else
        # Insufficient Authentication (it should pair); then MITM protection.
        if not access.permitted:
            raise att.ATT_Error(denied)
        if (access.encrypted or access.authenticated) and not self.security.encrypted(connection):
            bonded = await self.security.bonded(connection)
            raise att.ATT_Error(
                att.ATT_INSUFFICIENT_ENCRYPTION_ERROR
                if bonded
                else att.ATT_INSUFFICIENT_AUTHENTICATION_ERROR
            )
        if access.authenticated and not self.security.authenticated(connection):
            raise att.ATT_Error(att.ATT_INSUFFICIENT_AUTHENTICATION_ERROR)

    async def read(self, connection: Connection) -> bytes:
        await self._check(connection, self.read_access, att.ATT_READ_NOT_PERMITTED_ERROR)
        return self.buffer.data

    async def write(self, connection: Connection, value: bytes) -> None:
        await self._check(connection, self.write_access, att.ATT_WRITE_NOT_PERMITTED_ERROR)
        self.buffer.remote_write(value)
        assert self.attribute is not None
        self.on_write(connection.handle, self.attribute.handle, value)

    def value(self) -> gatt.CharacteristicValue[bytes]:
        return gatt.CharacteristicValue(read=self.read, write=self.write)


def parse_uuid(value: object) -> UUID:
    """A definition's UUID: int (16/32-bit) or str (128-bit, or 4/8 hex digits)."""
    if isinstance(value, bool):
        raise ValueError(f"invalid UUID {value!r}")
    if isinstance(value, int):
        if 0 <= value <= 0xFFFF:
            return UUID.from_16_bits(value)
        if 0 <= value <= 0xFFFFFFFF:
            return UUID.from_32_bits(value)
        raise ValueError(f"invalid UUID {value!r}")
    if isinstance(value, str):
        digits = value.replace("-", "")
        if len(digits) in (4, 8, 32):
            try:
                int(digits, 16)
            except ValueError:
                pass
            else:
                return UUID(value)
    raise ValueError(f"invalid UUID {value!r}")


def _pair(item: object, what: str) -> tuple[object, int, Sequence[Any]]:
    """(uuid, flags[, descriptors]) with its parts checked."""
    if isinstance(item, str | bytes) or not isinstance(item, Sequence):
        raise ValueError(f"invalid {what} tuple")
    if not 2 <= len(item) <= (3 if what == "characteristic" else 2):
        raise ValueError(f"invalid {what} tuple")
    flags = item[1]
    if not isinstance(flags, int) or isinstance(flags, bool) or flags < 0:
        raise ValueError(f"invalid {what} flags {flags!r}")
    descriptors = item[2] if len(item) == 3 else ()
    if isinstance(descriptors, str | bytes) or not isinstance(descriptors, Sequence):
        raise ValueError("invalid descriptors")
    return item[0], flags, descriptors


class GattTable:
    """The registered services: Bumble attributes plus MicroPython's value store."""

    def __init__(self, on_write: WriteListener, security: LinkSecurity | None = None) -> None:
        self._on_write = on_write
        self._security = security or NoSecurity()
        self._slots: dict[int, _Slot] = {}  # value handle -> slot
        self._characteristics: dict[int, gatt.Characteristic[bytes]] = {}

    def build(
        self, definition: Sequence[Any], server: Server
    ) -> tuple[list[gatt.Service], Callable[[], tuple[tuple[int, ...], ...]]]:
        """Bumble services for `definition` (to add to `server`), and a function
        giving the handle tuples once they are in it (which assigns the handles)."""
        if isinstance(definition, str | bytes) or not isinstance(definition, Sequence):
            raise ValueError("services definition must be a sequence")
        services: list[gatt.Service] = []
        layout: list[list[_Slot]] = []
        characteristics: list[gatt.Characteristic[bytes]] = []
        for service_def in definition:
            if isinstance(service_def, str | bytes) or not isinstance(service_def, Sequence):
                raise ValueError("invalid service tuple")
            if len(service_def) != 2:
                raise ValueError("invalid service tuple")
            service_uuid, characteristic_defs = service_def
            if isinstance(characteristic_defs, str | bytes) or not isinstance(
                characteristic_defs, Sequence
            ):
                raise ValueError("invalid characteristics")
            slots: list[_Slot] = []
            members: list[gatt.Characteristic[bytes]] = []
            for characteristic_def in characteristic_defs:
                characteristic, new_slots = self._characteristic(characteristic_def, server)
                members.append(characteristic)
                slots += new_slots
            characteristics += members
            services.append(gatt.Service(parse_uuid(service_uuid), members))
            layout.append(slots)

        def handles() -> tuple[tuple[int, ...], ...]:
            for characteristic in characteristics:
                self._characteristics[characteristic.handle] = characteristic
            for slots in layout:
                for slot in slots:
                    assert slot.attribute is not None
                    self._slots[slot.attribute.handle] = slot
            return tuple(
                tuple(slot.attribute.handle for slot in slots if slot.attribute is not None)
                for slots in layout
            )

        return services, handles

    def _characteristic(
        self, item: object, server: Server
    ) -> tuple[gatt.Characteristic[bytes], list[_Slot]]:
        uuid, flags, descriptor_defs = _pair(item, "characteristic")
        flags &= 0xFFFF  # a uint16_t in MicroPython
        slot = _Slot(
            read=_Access(
                bool(flags & FLAG_READ),
                encrypted=bool(flags & FLAG_READ_ENCRYPTED),
                authenticated=bool(flags & FLAG_READ_AUTHENTICATED),
            ),
            write=_Access(
                bool(flags & (FLAG_WRITE | FLAG_WRITE_NO_RESPONSE)),
                encrypted=bool(flags & FLAG_WRITE_ENCRYPTED),
                authenticated=bool(flags & FLAG_WRITE_AUTHENTICATED),
            ),
            on_write=self._on_write,
            security=self._security,
        )
        slots = [slot]
        descriptors: list[gatt.Descriptor] = []
        properties = flags & 0x7F
        if flags & (FLAG_RELIABLE_WRITE | FLAG_AUX_WRITE):
            properties |= PROPERTY_EXTENDED  # NimBLE adds no Extended Properties descriptor
        for descriptor_def in descriptor_defs:
            d_uuid, d_flags, _ = _pair(descriptor_def, "descriptor")
            descriptor_uuid = parse_uuid(d_uuid)
            if descriptor_uuid in STACK_DESCRIPTORS:
                raise ValueError(f"descriptor {descriptor_uuid} belongs to the stack")
            d_slot = _Slot(
                read=_Access(bool(d_flags & FLAG_READ)),
                write=_Access(bool(d_flags & (FLAG_WRITE | FLAG_WRITE_NO_RESPONSE))),
                on_write=self._on_write,
                security=self._security,
            )
            descriptor = gatt.Descriptor(
                descriptor_uuid,
                gatt.Descriptor.Permissions.READABLE | gatt.Descriptor.Permissions.WRITEABLE,
                d_slot.value(),
            )
            d_slot.attribute = descriptor
            descriptors.append(descriptor)
            slots.append(d_slot)
        characteristic: gatt.Characteristic[bytes] = gatt.Characteristic(
            parse_uuid(uuid),
            gatt.Characteristic.Properties(properties),
            gatt.Characteristic.Permissions.READABLE | gatt.Characteristic.Permissions.WRITEABLE,
            slot.value(),
        )
        if properties & (FLAG_NOTIFY | FLAG_INDICATE):
            # NimBLE puts the CCCD right after the value; Bumble would append it.
            descriptors.insert(0, _cccd(server, characteristic))
        characteristic.descriptors = descriptors
        slot.attribute = characteristic
        return characteristic, slots

    # -- the firmware's side --------------------------------------------------------

    def buffer(self, value_handle: int) -> ValueBuffer:
        slot = self._slots.get(value_handle)
        if slot is None:
            raise BleError(errno.EINVAL, f"no value with handle {value_handle}")
        return slot.buffer

    def is_characteristic(self, value_handle: int) -> bool:
        return value_handle in self._characteristics

    def characteristic(self, value_handle: int) -> gatt.Characteristic[bytes]:
        """The characteristic whose value handle this is (not a descriptor's)."""
        characteristic = self._characteristics.get(value_handle)
        if characteristic is None:
            raise BleError(errno.EINVAL, f"no characteristic with value handle {value_handle}")
        return characteristic


def _cccd(server: Server, characteristic: gatt.Characteristic[bytes]) -> gatt.Descriptor:
    """The Client Characteristic Configuration descriptor, served by Bumble's server."""
    return gatt.Descriptor(
        gatt.GATT_CLIENT_CHARACTERISTIC_CONFIGURATION_DESCRIPTOR,
        gatt.Descriptor.Permissions.READABLE | gatt.Descriptor.Permissions.WRITEABLE,
        att.AttributeValueV2(
            read=lambda bearer: server.read_cccd(bearer, characteristic),
            write=lambda bearer, value: server.write_cccd(bearer, characteristic, value),
        ),
    )


def reset_server(
    server: Server, gap_name: Callable[[], bytes], mtu: int, *, database_hash: bool
) -> None:
    """An empty attribute table but for the stack's own services, first as in
    NimBLE: GAP (with the live `gap_name`) and GATT (Service Changed; a
    Database Hash only with `database_hash`, i.e. GATT caching built in)."""
    server.attributes.clear()
    server.attributes_by_handle.clear()
    server.services.clear()
    server.max_mtu = mtu
    name: gatt.Characteristic[bytes] = gatt.Characteristic(
        gatt.GATT_DEVICE_NAME_CHARACTERISTIC,
        gatt.Characteristic.Properties.READ,
        gatt.Characteristic.Permissions.READABLE,
        gatt.CharacteristicValue(read=lambda _connection: gap_name()),
    )
    appearance: gatt.Characteristic[bytes] = gatt.Characteristic(
        gatt.GATT_APPEARANCE_CHARACTERISTIC,
        gatt.Characteristic.Properties.READ,
        gatt.Characteristic.Permissions.READABLE,
        APPEARANCE.to_bytes(2, "little"),
    )
    server.add_service(gatt.Service(gatt.GATT_GENERIC_ACCESS_SERVICE, [name, appearance]))
    server.add_service(GenericAttributeProfileService(database_hash_enabled=database_hash))
