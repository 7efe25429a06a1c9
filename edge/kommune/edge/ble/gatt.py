"""GATT discovery with a service cache, and Bumble proxies as bleak's service tree.

Discovery costs a dozen round trips; at a 30 ms connection interval that is
most of a second, so the tree of each peer is kept (by address) after the
first connection. On the next one it is reused after one check: when the peer
has a Database Hash characteristic (Core Vol 3, Part G, 7.3) it is read and
compared; a peer without one is trusted (pass `use_cached_services=False` to
rediscover, e.g. after a firmware update).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bleak.assigned_numbers import CHARACTERISTIC_PROPERTIES, CharacteristicPropertyName
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bumble import att, gatt
from bumble.core import UUID
from bumble.gatt_client import CharacteristicProxy, Client, DescriptorProxy, ServiceProxy

from kommune.edge.ble.scanner import bleak_uuid


@dataclass(frozen=True)
class CachedDescriptor:
    handle: int
    uuid: UUID


@dataclass(frozen=True)
class CachedCharacteristic:
    handle: int  # value handle
    end_group_handle: int
    uuid: UUID
    properties: int
    descriptors: tuple[CachedDescriptor, ...]


@dataclass(frozen=True)
class CachedService:
    handle: int
    end_group_handle: int
    uuid: UUID
    characteristics: tuple[CachedCharacteristic, ...]


@dataclass(frozen=True)
class CachedDatabase:
    """A peer's attribute database as discovered: handles, types, properties."""

    services: tuple[CachedService, ...]
    database_hash: bytes | None

    def handle_of(self, uuid: UUID) -> int | None:
        for service in self.services:
            for characteristic in service.characteristics:
                if characteristic.uuid == uuid:
                    return characteristic.handle
        return None


# Peer address ("AA:BB:...") -> its database, for this process.
_cache: dict[str, CachedDatabase] = {}


def forget(address: str) -> None:
    """Drop a peer's cached database (its firmware, and so its GATT table, changed)."""
    _cache.pop(address.upper(), None)


def cached(address: str) -> CachedDatabase | None:
    """A peer's database as discovered in this process (to keep it across processes)."""
    return _cache.get(address.upper())


def preload(address: str, database: CachedDatabase) -> None:
    """Use `database` for the peer (e.g. from a cache file); checked as any cached one."""
    _cache[address.upper()] = database


async def load_services(client: Client, address: str, *, use_cache: bool) -> None:
    """Fill `client.services` (characteristics and descriptors too), from cache if valid."""
    key = address.upper()
    cached = _cache.get(key) if use_cache else None
    if cached is not None and await _still_valid(client, cached):
        _restore(client, cached)
        return
    _cache[key] = await _discover(client)


async def _discover(client: Client) -> CachedDatabase:
    client.services.clear()
    services = await client.discover_services()
    for service in services:
        await client.discover_characteristics((), service)
        for characteristic in service.characteristics:
            await client.discover_descriptors(characteristic)
            # Bumble leaves this False after a discovery of its own, and subscribe()
            # would then discover the descriptors again: a round trip, during which a
            # notification the subscription was meant for could arrive unheard.
            characteristic.descriptors_discovered = True
    database = CachedDatabase(tuple(map(_freeze, services)), None)
    hash_handle = database.handle_of(gatt.GATT_DATABASE_HASH_CHARACTERISTIC)
    if hash_handle is not None:
        database_hash = await client.read_value(hash_handle)
        database = CachedDatabase(database.services, database_hash)
    return database


async def _still_valid(client: Client, cached: CachedDatabase) -> bool:
    hash_handle = cached.handle_of(gatt.GATT_DATABASE_HASH_CHARACTERISTIC)
    if hash_handle is None or cached.database_hash is None:
        return True
    try:
        return await client.read_value(hash_handle) == cached.database_hash
    except att.ATT_Error:
        return False  # the handle moved: the database changed


def _freeze(service: ServiceProxy) -> CachedService:
    return CachedService(
        service.handle,
        service.end_group_handle,
        service.uuid,
        tuple(
            CachedCharacteristic(
                c.handle,
                c.end_group_handle,
                c.uuid,
                int(c.properties),
                tuple(CachedDescriptor(d.handle, d.type) for d in c.descriptors),
            )
            for c in service.characteristics
        ),
    )


def _restore(client: Client, cached: CachedDatabase) -> None:
    """Proxies bound to this connection's client, as discovery would have made them."""
    client.services.clear()
    for s in cached.services:
        service = ServiceProxy(client, s.handle, s.end_group_handle, s.uuid)  # type: ignore[no-untyped-call]  # Bumble leaves it unannotated
        for c in s.characteristics:
            characteristic: CharacteristicProxy[bytes] = CharacteristicProxy(
                client, c.handle, c.end_group_handle, c.uuid, c.properties
            )
            characteristic.descriptors = [
                DescriptorProxy(client, d.handle, d.uuid) for d in c.descriptors
            ]
            characteristic.descriptors_discovered = True
            service.characteristics.append(characteristic)
        client.services.append(service)


def property_names(properties: int) -> list[CharacteristicPropertyName]:
    return [name for bit, name in CHARACTERISTIC_PROPERTIES.items() if properties & bit]


def service_collection(
    services: list[ServiceProxy], mtu: Callable[[], int], wanted: set[str] | None
) -> BleakGATTServiceCollection:
    """Bumble's proxies as bleak's tree; `obj` of each node is its Bumble proxy."""
    collection = BleakGATTServiceCollection()
    for service in services:
        uuid = bleak_uuid(service.uuid)
        if wanted and uuid not in wanted:
            continue
        bleak_service = BleakGATTService(service, service.handle, uuid)
        collection.add_service(bleak_service)
        for c in service.characteristics:
            characteristic = BleakGATTCharacteristic(
                c,
                c.handle,
                bleak_uuid(c.uuid),
                property_names(int(c.properties)),
                lambda: mtu() - 3,  # ATT_WRITE_CMD header: opcode + handle
                bleak_service,
            )
            collection.add_characteristic(characteristic)
            for d in c.descriptors:
                collection.add_descriptor(
                    BleakGATTDescriptor(d, d.handle, bleak_uuid(d.type), characteristic)
                )
    return collection
