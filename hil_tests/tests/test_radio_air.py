"""The air process with Bumble host stacks on it: devices, range, link loss, power cuts."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import pytest
from bumble import hci
from bumble.device import Advertisement, Connection, Device
from bumble.transport import open_transport

from kommune.hil.radio import Air, AirError, running_air
from kommune.hil.radio.echo import echo_peripheral

LOCK_ADDRESS = "F0:4B:00:00:00:01"
CONNECTION_TIMEOUT = hci.HCI_ErrorCode.CONNECTION_TIMEOUT_ERROR


@pytest.fixture
async def air() -> AsyncIterator[Air]:
    async with running_air(seed=7) as air:
        yield air


@contextlib.asynccontextmanager
async def bumble_host(transport: str) -> AsyncIterator[Device]:
    """A plain Bumble host stack on an air device (the way a board bridge attaches)."""
    async with await open_transport(transport) as (source, sink):
        device = Device.with_hci("host", hci.Address.generate_static_address(), source, sink)
        await device.power_on()
        try:
            yield device
        finally:
            await device.power_off()


async def connect(central: Device) -> tuple[Connection, asyncio.Future[int]]:
    """Connect to the lock; the future gets the disconnection reason."""
    target = hci.Address(LOCK_ADDRESS, hci.Address.PUBLIC_DEVICE_ADDRESS)
    connection = await central.connect(target, timeout=5.0)
    reason: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    connection.on(Connection.EVENT_DISCONNECTION, reason.set_result)
    return connection, reason


async def test_air_hands_out_transports_and_leaves_no_process() -> None:
    async with running_air() as air:
        pid = air.pid
        assert pid is not None
        lock = await air.add_device("lock", LOCK_ADDRESS)
        edge = await air.add_device("edge")
        assert lock.address == LOCK_ADDRESS
        assert lock.transport.startswith("tcp-client:127.0.0.1:")
        assert edge.address != lock.address and edge.transport != lock.transport
        with pytest.raises(AirError, match="taken"):
            await air.add_device("lock")
        with pytest.raises(AirError, match="bad address"):
            await air.add_device("other", "not-an-address")
        async with bumble_host(lock.transport):
            attached = {d.name: d.host_attached for d in await air.devices()}
            assert attached == {"lock": True, "edge": False}
        await air.remove_device("edge")
        assert [d.name for d in await air.devices()] == ["lock"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_scanners_hear_the_modelled_rssi_and_nothing_out_of_range(air: Air) -> None:
    lock = await air.add_device("lock", LOCK_ADDRESS)
    edge = await air.add_device("edge")
    await air.set_link("edge", "lock", rssi_dbm=-72)
    heard: list[Advertisement] = []
    async with (
        echo_peripheral(lock.transport, lock.address),
        bumble_host(edge.transport) as scanner,
    ):
        scanner.on(Device.EVENT_ADVERTISEMENT, heard.append)
        await scanner.start_scanning(filter_duplicates=False)
        await asyncio.sleep(0.2)
        assert heard
        assert {a.rssi for a in heard} == {-72}
        await air.set_link("edge", "lock", rssi_dbm=-110)
        # An HCI round trip flushes the reports already on their way (one ordered stream).
        await scanner.send_sync_command(hci.HCI_Read_BD_ADDR_Command())
        heard.clear()
        before = (await air.stats("edge", "lock")).stats.advertisements
        await asyncio.sleep(0.3)
        assert heard == []
        assert (await air.stats("edge", "lock")).stats.advertisements == before
        await scanner.stop_scanning()


async def test_going_out_of_range_times_the_link_out(air: Air) -> None:
    lock = await air.add_device("lock", LOCK_ADDRESS)
    edge = await air.add_device("edge")
    await air.set_link("edge", "lock", supervision_timeout_ms=200)
    async with (
        echo_peripheral(lock.transport, lock.address),
        bumble_host(edge.transport) as central,
    ):
        _, reason = await connect(central)
        assert (await air.stats("edge", "lock")).connected
        await air.set_link("edge", "lock", rssi_dbm=-120)
        async with asyncio.timeout(3):
            assert await reason == CONNECTION_TIMEOUT
        stats = await air.stats("edge", "lock")
        assert not stats.connected
        assert stats.stats.disconnects == 1


async def test_a_power_cut_on_one_side_times_out_the_other(air: Air) -> None:
    lock = await air.add_device("lock", LOCK_ADDRESS)
    edge = await air.add_device("edge")
    await air.set_link("edge", "lock", supervision_timeout_ms=300)
    async with bumble_host(edge.transport) as central:
        async with echo_peripheral(lock.transport, lock.address):
            _, reason = await connect(central)
        # The lock's host is gone (transport closed): its controller is off the air.
        assert not reason.done()
        async with asyncio.timeout(3):
            assert await reason == CONNECTION_TIMEOUT


async def test_forced_disconnect_reaches_both_hosts_with_the_reason(air: Air) -> None:
    lock = await air.add_device("lock", LOCK_ADDRESS)
    edge = await air.add_device("edge")
    async with (
        echo_peripheral(lock.transport, lock.address) as peripheral,
        bumble_host(edge.transport) as central,
    ):
        lost_on_lock: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_connection(connection: Connection) -> None:
            connection.on(Connection.EVENT_DISCONNECTION, lost_on_lock.set_result)

        peripheral.device.on(Device.EVENT_CONNECTION, on_connection)
        _, reason = await connect(central)
        assert await air.disconnect("edge", "lock", reason=0x13)
        async with asyncio.timeout(3):
            assert await reason == 0x13
            assert await lost_on_lock == 0x13
        assert not await air.disconnect("edge", "lock")
