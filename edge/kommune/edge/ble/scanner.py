"""bleak scanner backend on a Bumble host: `BleakScanner(backend=BleakScannerBumble)`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.uuids import normalize_uuid_str
from bumble.core import UUID, AdvertisingData
from bumble.device import Advertisement

from kommune.edge.ble.host import BumbleHost, acquire_host, bleak_address, release_host
from kommune.edge.ble.transport import require_transport

logger = logging.getLogger(__name__)

_SERVICE_UUID_LISTS = (
    AdvertisingData.Type.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
    AdvertisingData.Type.INCOMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
    AdvertisingData.Type.COMPLETE_LIST_OF_32_BIT_SERVICE_CLASS_UUIDS,
    AdvertisingData.Type.INCOMPLETE_LIST_OF_32_BIT_SERVICE_CLASS_UUIDS,
    AdvertisingData.Type.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
    AdvertisingData.Type.INCOMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
)
_SERVICE_DATA = (
    AdvertisingData.Type.SERVICE_DATA_16_BIT_UUID,
    AdvertisingData.Type.SERVICE_DATA_32_BIT_UUID,
    AdvertisingData.Type.SERVICE_DATA_128_BIT_UUID,
)


def bleak_uuid(uuid: UUID) -> str:
    """Bumble UUID -> bleak's lower-case 128-bit form."""
    return normalize_uuid_str(uuid.to_hex_str("-"))


def advertisement_data(advertisement: Advertisement) -> AdvertisementData:
    """A Bumble advertisement (advertising data + scan response) as bleak reports it."""
    data = advertisement.data
    local_name = data.get(AdvertisingData.Type.COMPLETE_LOCAL_NAME) or data.get(
        AdvertisingData.Type.SHORTENED_LOCAL_NAME
    )
    service_uuids: list[str] = []
    for list_type in _SERVICE_UUID_LISTS:
        for raw in data.get_all(list_type, raw=True):
            width = _uuid_width(list_type)
            for offset in range(0, len(raw) - width + 1, width):
                uuid = bleak_uuid(UUID.from_bytes(raw[offset : offset + width]))
                if uuid not in service_uuids:
                    service_uuids.append(uuid)
    service_data: dict[str, bytes] = {}
    for data_type in _SERVICE_DATA:
        for raw in data.get_all(data_type, raw=True):
            width = _uuid_width(data_type)
            if len(raw) >= width:
                service_data[bleak_uuid(UUID.from_bytes(raw[:width]))] = raw[width:]
    manufacturer_data: dict[int, bytes] = {}
    for raw in data.get_all(AdvertisingData.Type.MANUFACTURER_SPECIFIC_DATA, raw=True):
        if len(raw) >= 2:
            manufacturer_data[int.from_bytes(raw[:2], "little")] = raw[2:]
    tx_raw = data.get(AdvertisingData.Type.TX_POWER_LEVEL, raw=True)
    return AdvertisementData(
        local_name=local_name,
        manufacturer_data=manufacturer_data,
        service_data=service_data,
        service_uuids=service_uuids,
        tx_power=int.from_bytes(tx_raw[:1], "little", signed=True) if tx_raw else None,
        rssi=advertisement.rssi,
        platform_data=(advertisement,),
    )


def _uuid_width(data_type: AdvertisingData.Type) -> int:
    """Bytes per UUID in an AD structure of `data_type` (Core Supplement, Part A, 1.1)."""
    name = data_type.name
    if "16_BIT" in name:
        return 2
    if "32_BIT" in name:
        return 4
    return 16


def _nothing() -> None:
    pass


class BleakScannerBumble(BaseBleakScanner):
    """Scans through the shared Bumble host on the configured HCI transport.

    Extra keyword argument (via `BleakScanner(..., transport=...)`):
    transport: Bumble transport spec; default `KOMMUNE_BLE_TRANSPORT`.
    """

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: Literal["active", "passive"] = "active",
        *,
        transport: str | None = None,
        **kwargs: Any,  # bluez=, cb=: other backends' options
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self._spec = require_transport(transport)
        self._active = scanning_mode == "active"
        self._host: BumbleHost | None = None
        self._unlisten: Callable[[], None] = _nothing

    async def start(self) -> None:
        if self._host is not None:
            return
        self.seen_devices = {}
        host = await acquire_host(self._spec)
        try:
            self._unlisten = host.listen(self._on_advertisement)
            await host.start_scanning(active=self._active)
        except BaseException:
            self._unlisten()
            await release_host(host)
            raise
        self._host = host

    async def stop(self) -> None:
        host, self._host = self._host, None
        if host is None:
            return
        self._unlisten()
        try:
            await host.stop_scanning()
        finally:
            await release_host(host)

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        adv = advertisement_data(advertisement)
        if not self.is_allowed_uuid(adv.service_uuids):
            return
        address = bleak_address(advertisement.address)
        # Keep a name heard before (e.g. in a scan response) when this one has none.
        seen = self.seen_devices.get(address)
        name = adv.local_name or (seen[0].name if seen else None)
        device = self.create_or_update_device(address, address, name, advertisement.address, adv)
        self.call_detection_callbacks(device, adv)
