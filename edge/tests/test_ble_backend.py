"""bleak's public API on the Bumble backend, against a Bumble GATT peripheral on the air."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.exc import BleakBluetoothNotAvailableError, BleakError
from bumble import hci

from kommune.edge.ble import (
    TRANSPORT_ENV,
    BleakClientBumble,
    BleakScannerBumble,
    BumbleDisconnectedError,
    NotificationQueue,
    NoTransportError,
    forget_cached_services,
    hold_host,
    select_backend,
)
from kommune.hil.radio import Air, running_air
from kommune.hil.radio.echo import (
    COMPANY_ID,
    ECHO_CHAR,
    ECHO_SERVICE,
    INFO_CHAR,
    INFO_DESCRIPTION,
    INFO_VALUE,
    MANUFACTURER_DATA,
    UPDATE_CHAR,
    EchoPeripheral,
    echo_peripheral,
)

LOCK_ADDRESS = "F0:4B:00:00:00:01"
LOCK_NAME = "lock-1"
ATT_WRITE_REQUEST = 0x12


@dataclass
class Rig:
    air: Air
    lock: EchoPeripheral
    edge_transport: str


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    """An air with the echo peripheral ("lock") on it and a device for the edge's host."""
    async with running_air(seed=11) as air:
        lock = await air.add_device("lock", LOCK_ADDRESS)
        edge = await air.add_device("edge")
        async with echo_peripheral(lock.transport, lock.address, LOCK_NAME) as peripheral:
            yield Rig(air, peripheral, edge.transport)
    forget_cached_services(LOCK_ADDRESS)


async def find_lock(rig: Rig) -> BLEDevice:
    device = await BleakScanner.find_device_by_name(
        LOCK_NAME, timeout=5.0, backend=BleakScannerBumble, transport=rig.edge_transport
    )
    assert device is not None
    return device


def client(rig: Rig, target: BLEDevice | str, **kwargs: object) -> BleakClient:
    return BleakClient(
        target, backend=BleakClientBumble, transport=rig.edge_transport, timeout=5.0, **kwargs
    )


async def test_scan_reports_name_services_manufacturer_data_and_rssi(rig: Rig) -> None:
    await rig.air.set_link("edge", "lock", rssi_dbm=-67)
    found = await BleakScanner.discover(
        timeout=0.3, return_adv=True, backend=BleakScannerBumble, transport=rig.edge_transport
    )
    device, adv = found[LOCK_ADDRESS]
    assert device.name == LOCK_NAME  # from the scan response
    assert adv.local_name == LOCK_NAME
    assert adv.service_uuids == [ECHO_SERVICE]
    assert adv.manufacturer_data == {COMPANY_ID: MANUFACTURER_DATA}
    assert adv.rssi == -67

    other_service = "0000180f-0000-1000-8000-00805f9b34fb"
    filtered = await BleakScanner.discover(
        timeout=0.2,
        service_uuids=[other_service],
        backend=BleakScannerBumble,
        transport=rig.edge_transport,
    )
    assert filtered == []


async def test_passive_scanning_gets_no_scan_response_until_someone_scans_actively(
    rig: Rig,
) -> None:
    async with BleakScanner(
        scanning_mode="passive", backend=BleakScannerBumble, transport=rig.edge_transport
    ) as passive:
        await asyncio.sleep(0.2)
        _, adv = passive.discovered_devices_and_advertisement_data[LOCK_ADDRESS]
        # No SCAN_REQ, so no scan response: the name is not heard.
        assert adv.local_name is None
        assert adv.service_uuids == [ECHO_SERVICE]
        # An active scanner on the same host turns scan requests on for both.
        found = await BleakScanner.discover(
            timeout=0.3, return_adv=True, backend=BleakScannerBumble, transport=rig.edge_transport
        )
        assert found[LOCK_ADDRESS][1].local_name == LOCK_NAME


async def test_gatt_session_mtu_discovery_read_write_notify_disconnect(rig: Rig) -> None:
    lock = await find_lock(rig)
    disconnected = asyncio.Event()
    async with client(rig, lock, disconnected_callback=lambda _c: disconnected.set()) as c:
        assert c.is_connected
        assert c.mtu_size == 517
        service = c.services.get_service(ECHO_SERVICE)
        assert service is not None
        echo = service.get_characteristic(ECHO_CHAR)
        assert echo is not None
        assert set(echo.properties) == {"read", "write", "write-without-response", "notify"}
        assert echo.max_write_without_response_size == 514

        info = c.services.get_characteristic(INFO_CHAR)
        assert info is not None
        assert await c.read_gatt_char(info) == INFO_VALUE
        (description,) = info.descriptors
        assert await c.read_gatt_descriptor(description) == INFO_DESCRIPTION

        notifications = NotificationQueue()
        await c.start_notify(echo, notifications)
        await c.write_gatt_char(echo, b"open sesame", response=True)
        assert await notifications.next() == b"open sesame"
        await c.write_gatt_char(echo, b"no answer needed", response=False)
        assert await notifications.next() == b"no answer needed"
        assert await c.read_gatt_char(echo) == b"no answer needed"
        assert await c.read_gatt_char(echo, use_cached=True) == b"no answer needed"

        await c.stop_notify(echo)
        await c.write_gatt_char(echo, b"quiet", response=True)
        await asyncio.sleep(0.05)
        assert notifications.queue.empty()
        assert rig.lock.writes == [b"open sesame", b"no answer needed", b"quiet"]
        assert not disconnected.is_set()
    assert disconnected.is_set()
    assert not c.is_connected


async def test_connect_by_address_and_services_come_from_the_cache(rig: Rig) -> None:
    forget_cached_services(LOCK_ADDRESS)

    async def pdus_to_connect(**kwargs: object) -> int:
        before = (await rig.air.stats("edge", "lock")).stats.pdus_delivered
        async with client(rig, LOCK_ADDRESS, **kwargs) as c:  # a string: the backend scans
            assert c.services.get_characteristic(ECHO_CHAR) is not None
            after = (await rig.air.stats("edge", "lock")).stats.pdus_delivered
        return after - before

    discovered = await pdus_to_connect()
    cached = await pdus_to_connect()
    rediscovered = await pdus_to_connect(use_cached_services=False)
    # The cached connect checks the Database Hash instead of walking the table.
    assert cached < discovered / 3
    assert rediscovered == discovered


async def test_subscribing_after_a_fresh_discovery_costs_one_write(rig: Rig) -> None:
    """The descriptors found at connect are not looked up again by start_notify: the
    subscription is the CCCD write alone (a notification sent right behind it is heard)."""
    forget_cached_services(LOCK_ADDRESS)
    async with client(rig, LOCK_ADDRESS, use_cached_services=False) as c:
        before = (await rig.air.stats("edge", "lock")).stats.pdus_delivered
        await c.start_notify(ECHO_CHAR, NotificationQueue())
        after = (await rig.air.stats("edge", "lock")).stats.pdus_delivered
    assert after - before == 2  # Write Request, Write Response


async def test_a_changed_gatt_table_is_rediscovered_despite_the_cache() -> None:
    async with running_air() as air:
        lock = await air.add_device("lock", LOCK_ADDRESS)
        edge = await air.add_device("edge")
        target = BLEDevice(
            LOCK_ADDRESS, LOCK_NAME, hci.Address(LOCK_ADDRESS, hci.Address.PUBLIC_DEVICE_ADDRESS)
        )

        async def characteristics(firmware: int) -> set[str]:
            async with (
                echo_peripheral(lock.transport, lock.address, firmware=firmware),
                BleakClient(
                    target, backend=BleakClientBumble, transport=edge.transport, timeout=5.0
                ) as c,
            ):
                return {ch.uuid for ch in c.services.characteristics.values()}

        forget_cached_services(LOCK_ADDRESS)
        assert UPDATE_CHAR not in await characteristics(firmware=1)
        # The Database Hash changed with the table: the cached tree is not used.
        assert UPDATE_CHAR in await characteristics(firmware=2)
    forget_cached_services(LOCK_ADDRESS)


async def test_round_trip_pays_at_least_the_connection_interval(rig: Rig) -> None:
    await rig.air.set_link("edge", "lock", interval_ms=30)
    lock = await find_lock(rig)
    async with client(rig, lock) as c:
        notifications = NotificationQueue()
        await c.start_notify(ECHO_CHAR, notifications)
        for i in range(5):
            started = time.perf_counter()
            await c.write_gatt_char(ECHO_CHAR, b"ping %d" % i, response=True)
            assert await notifications.next() == b"ping %d" % i
            # Request out at one connection event, response back at a later one.
            assert time.perf_counter() - started >= 0.030 - 0.001


async def test_round_trips_complete_under_loss_by_retransmission(rig: Rig) -> None:
    await rig.air.set_link("edge", "lock", interval_ms=7.5, loss=0.3)
    lock = await find_lock(rig)
    async with client(rig, lock) as c:
        notifications = NotificationQueue()
        await c.start_notify(ECHO_CHAR, notifications)
        for i in range(20):
            await c.write_gatt_char(ECHO_CHAR, b"lossy %d" % i, response=True)
            assert await notifications.next() == b"lossy %d" % i
        stats = await rig.air.stats("edge", "lock")
        assert stats.connected
        assert stats.stats.retransmissions > 0
        assert stats.stats.disconnects == 0


async def test_cut_in_the_middle_of_a_write_raises_and_calls_back(rig: Rig) -> None:
    lock = await find_lock(rig)
    disconnected = asyncio.Event()
    async with client(rig, lock, disconnected_callback=lambda _c: disconnected.set()) as c:
        await c.write_gatt_char(ECHO_CHAR, b"before", response=True)
        await rig.air.arm_cut("edge", "lock", att_opcode=ATT_WRITE_REQUEST)
        async with asyncio.timeout(5):  # a hang fails here, not at the suite's timeout
            with pytest.raises(BumbleDisconnectedError, match="write: disconnected"):
                await c.write_gatt_char(ECHO_CHAR, b"lost", response=True)
            await disconnected.wait()
        assert not c.is_connected
        with pytest.raises(BleakError):  # bleak: no services once disconnected
            await c.read_gatt_char(ECHO_CHAR)
    assert rig.lock.writes == [b"before"]


async def test_sustained_loss_ends_in_a_supervision_timeout(rig: Rig) -> None:
    await rig.air.set_link("edge", "lock", supervision_timeout_ms=300)
    lock = await find_lock(rig)
    disconnected = asyncio.Event()
    async with client(rig, lock, disconnected_callback=lambda _c: disconnected.set()) as c:
        await rig.air.set_link("edge", "lock", loss=1.0)
        async with asyncio.timeout(5):
            with pytest.raises(BumbleDisconnectedError, match="CONNECTION_TIMEOUT"):
                await c.read_gatt_char(INFO_CHAR)
            await disconnected.wait()
    assert (await rig.air.stats("edge", "lock")).stats.disconnects == 1


async def test_forced_disconnect_then_reconnect(rig: Rig) -> None:
    lock = await find_lock(rig)
    disconnected = asyncio.Event()
    c = client(rig, lock, disconnected_callback=lambda _c: disconnected.set())
    await c.connect()
    assert await rig.air.disconnect("edge", "lock")
    async with asyncio.timeout(5):
        await disconnected.wait()
    assert not c.is_connected
    await c.connect()  # the lock advertises again; the same client reconnects
    assert await c.read_gatt_char(INFO_CHAR) == INFO_VALUE
    await c.disconnect()


async def test_connect_out_of_range_times_out_and_the_radio_recovers(rig: Rig) -> None:
    lock = await find_lock(rig)
    await rig.air.set_link("edge", "lock", rssi_dbm=-120)
    with pytest.raises(TimeoutError):
        async with BleakClient(
            lock, backend=BleakClientBumble, transport=rig.edge_transport, timeout=0.5
        ):
            pass
    await rig.air.set_link("edge", "lock", rssi_dbm=-60)
    async with client(rig, lock) as c:
        assert await c.read_gatt_char(INFO_CHAR) == INFO_VALUE


async def test_a_cancelled_connect_leaves_the_radio_usable(rig: Rig) -> None:
    lock = await find_lock(rig)
    await rig.air.set_link("edge", "lock", rssi_dbm=-120)
    async with hold_host(rig.edge_transport):  # the same controller throughout, as in the agent
        attempt = asyncio.create_task(client(rig, lock).connect())
        await asyncio.sleep(0.2)
        attempt.cancel()
        with pytest.raises(asyncio.CancelledError):
            await attempt
        await rig.air.set_link("edge", "lock", rssi_dbm=-60)
        async with client(rig, lock) as c:
            assert await c.read_gatt_char(INFO_CHAR) == INFO_VALUE


async def test_an_unreachable_transport_means_no_bluetooth() -> None:
    scanner = BleakScanner(backend=BleakScannerBumble, transport="tcp-client:127.0.0.1:1")
    with pytest.raises(BleakBluetoothNotAvailableError):
        await scanner.start()


def test_backend_selection_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TRANSPORT_ENV, raising=False)
    assert select_backend().client is None  # bleak's own platform backend
    with pytest.raises(NoTransportError):
        BleakScanner(backend=BleakScannerBumble)
    monkeypatch.setenv(TRANSPORT_ENV, "usb:0")
    backend = select_backend()
    assert backend.scanner is BleakScannerBumble
    assert backend.client is BleakClientBumble
    assert backend.kwargs == {"transport": "usb:0"}
    assert select_backend("tcp-client:127.0.0.1:1").kwargs == {
        "transport": "tcp-client:127.0.0.1:1"
    }
