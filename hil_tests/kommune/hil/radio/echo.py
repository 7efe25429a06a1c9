"""A Bumble-native GATT peripheral for the air: what is written is notified back.

Tests and benches use it as the far end of a GATT round trip, without a
board: it advertises a name (in the scan response), its service UUID and
manufacturer data, and serves

    ECHO_SERVICE
      ECHO_CHAR   read | write | write-without-response | notify
                  a write stores the value and notifies it to subscribers
                  (before the write response: the client sees both)
      INFO_CHAR   read: INFO_VALUE, with a User Description descriptor
      UPDATE_CHAR read (only with firmware=2: the table changed)

In its own process (a board's stand-in): `python -m kommune.hil.radio.echo
TRANSPORT ADDRESS [NAME]` prints "ready" once advertising, serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator

from bumble import gatt, hci
from bumble.core import AdvertisingData
from bumble.device import Connection, Device
from bumble.transport import open_transport

ECHO_SERVICE = "4b4d0001-6b6f-6d6d-756e-652d65646765"
ECHO_CHAR = "4b4d0002-6b6f-6d6d-756e-652d65646765"
INFO_CHAR = "4b4d0003-6b6f-6d6d-756e-652d65646765"
UPDATE_CHAR = "4b4d0004-6b6f-6d6d-756e-652d65646765"
INFO_VALUE = b"kommune-echo v1"
INFO_DESCRIPTION = b"echo info"
COMPANY_ID = 0xFFFF  # "no company": for tests
MANUFACTURER_DATA = b"\x4b\x4d"
ADVERTISING_INTERVAL_MS = 20.0


class EchoPeripheral:
    """The peripheral's Bumble device and what it received."""

    def __init__(self, device: Device, echo: gatt.Characteristic[bytes]) -> None:
        self.device = device
        self.echo = echo
        self.writes: list[bytes] = []  # every value written to ECHO_CHAR, in order
        self._advertising = False
        # Our own restart after a disconnection, rather than Bumble's auto_restart,
        # so that closing can wait for a restart in flight.
        self._restarts: set[asyncio.Task[None]] = set()
        device.on(Device.EVENT_CONNECTION, self._on_connection)

    async def _on_write(self, connection: Connection, value: bytes) -> None:
        self.writes.append(value)
        await self.device.notify_subscriber(connection, self.echo, value)

    def _on_connection(self, connection: Connection) -> None:
        connection.on(Connection.EVENT_DISCONNECTION, self._on_disconnection)

    def _on_disconnection(self, _reason: int) -> None:
        if self._advertising:
            task = asyncio.get_running_loop().create_task(self._start_advertising())
            self._restarts.add(task)
            task.add_done_callback(self._restarts.discard)

    async def advertise(self) -> None:
        """Advertise (connectable, public address) now and again after each disconnection."""
        self._advertising = True
        await self._start_advertising()

    async def _start_advertising(self) -> None:
        await self.device.start_advertising(
            own_address_type=hci.OwnAddressType.PUBLIC,
            advertising_interval_min=ADVERTISING_INTERVAL_MS,
            advertising_interval_max=ADVERTISING_INTERVAL_MS,
        )

    async def close(self) -> None:
        self._advertising = False
        await asyncio.gather(*self._restarts, return_exceptions=True)
        await self.device.power_off()


def _advertising_data() -> bytes:
    service = bytes.fromhex(ECHO_SERVICE.replace("-", ""))[::-1]  # AD UUIDs are little-endian
    return bytes(
        AdvertisingData(
            [
                (AdvertisingData.Type.FLAGS, bytes([0x06])),  # LE general discoverable, no BR/EDR
                (AdvertisingData.Type.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS, service),
                (
                    AdvertisingData.Type.MANUFACTURER_SPECIFIC_DATA,
                    COMPANY_ID.to_bytes(2, "little") + MANUFACTURER_DATA,
                ),
            ]
        )
    )


@contextlib.asynccontextmanager
async def echo_peripheral(
    transport: str,
    address: str,
    name: str = "echo",
    *,
    advertise: bool = True,
    firmware: int = 1,
) -> AsyncIterator[EchoPeripheral]:
    """Run the echo peripheral on `transport` (an air device's spec) for the block.

    `firmware=2` adds UPDATE_CHAR: a changed GATT table, as after an update."""
    async with await open_transport(transport) as (source, sink):
        public = hci.Address(address, hci.Address.PUBLIC_DEVICE_ADDRESS)
        device = Device.with_hci(name, public, source, sink)
        echo: gatt.Characteristic[bytes] = gatt.Characteristic(
            ECHO_CHAR,
            gatt.Characteristic.Properties.READ
            | gatt.Characteristic.Properties.WRITE
            | gatt.Characteristic.Properties.WRITE_WITHOUT_RESPONSE
            | gatt.Characteristic.Properties.NOTIFY,
            gatt.Characteristic.Permissions.READABLE | gatt.Characteristic.Permissions.WRITEABLE,
            b"",
        )
        peripheral = EchoPeripheral(device, echo)
        echo.value = gatt.CharacteristicValue(
            read=lambda _connection: peripheral.writes[-1] if peripheral.writes else b"",
            write=peripheral._on_write,
        )
        info: gatt.Characteristic[bytes] = gatt.Characteristic(
            INFO_CHAR,
            gatt.Characteristic.Properties.READ,
            gatt.Characteristic.Permissions.READABLE,
            INFO_VALUE,
            descriptors=[
                gatt.Descriptor(
                    gatt.GATT_CHARACTERISTIC_USER_DESCRIPTION_DESCRIPTOR,
                    gatt.Descriptor.Permissions.READABLE,
                    INFO_DESCRIPTION,
                )
            ],
        )
        characteristics: list[gatt.Characteristic[bytes]] = [echo, info]
        if firmware >= 2:
            characteristics.append(
                gatt.Characteristic(
                    UPDATE_CHAR,
                    gatt.Characteristic.Properties.READ,
                    gatt.Characteristic.Permissions.READABLE,
                    b"v2",
                )
            )
        device.add_service(gatt.Service(ECHO_SERVICE, characteristics))
        device.advertising_data = _advertising_data()
        device.scan_response_data = bytes(
            AdvertisingData([(AdvertisingData.Type.COMPLETE_LOCAL_NAME, name.encode())])
        )
        await device.power_on()
        if advertise:
            await peripheral.advertise()
        try:
            yield peripheral
        finally:
            await peripheral.close()


async def _serve(transport: str, address: str, name: str) -> None:
    async with echo_peripheral(transport, address, name):
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """`python -m kommune.hil.radio.echo TRANSPORT ADDRESS [NAME]`: serve until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m kommune.hil.radio.echo")
    parser.add_argument("transport", help="the air device's transport spec")
    parser.add_argument("address", help="the air device's public address")
    parser.add_argument("name", nargs="?", default="echo", help="advertised local name")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.transport, args.address, args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
