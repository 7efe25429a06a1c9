"""BLE for the edge: bleak's public API over a Bumble host stack.

The edge's BLE code uses only bleak (`BleakScanner`, `BleakClient`). With an
HCI transport configured, the backends here run a Bumble host on it: the HIL
rig's virtual air (`tcp-client:127.0.0.1:PORT`, see `kommune.hil.radio`) or a
real controller (`usb:0`, `hci-socket:0`, `serial:...`). Without one, bleak
picks the platform backend (BlueZ on Linux).

    backend = select_backend()          # transport= or KOMMUNE_BLE_TRANSPORT
    async with BleakScanner(backend=backend.scanner, **backend.kwargs) as scanner: ...
    async with BleakClient(device, backend=backend.client, **backend.kwargs) as client:
        client.mtu_size                 # negotiated ATT MTU (we ask for 517)
        await client.write_gatt_char(CHAR, b"...", response=True)

Scanners and clients on one transport share one host (`host.hold_host` pins it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bleak.backends.client import BaseBleakClient
from bleak.backends.scanner import BaseBleakScanner

from kommune.edge.ble.client import BleakClientBumble, BumbleDisconnectedError
from kommune.edge.ble.gatt import forget as forget_cached_services
from kommune.edge.ble.host import hold_host
from kommune.edge.ble.notifications import NotificationQueue
from kommune.edge.ble.scanner import BleakScannerBumble
from kommune.edge.ble.transport import TRANSPORT_ENV, NoTransportError, configured_transport


@dataclass(frozen=True)
class BleBackend:
    """What to pass to bleak: backend classes (None: the platform's) and their kwargs."""

    scanner: type[BaseBleakScanner] | None = None
    client: type[BaseBleakClient] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


def select_backend(transport: str | None = None) -> BleBackend:
    """Bumble on `transport` (or `KOMMUNE_BLE_TRANSPORT`) if set, else bleak's default."""
    spec = configured_transport(transport)
    if spec is None:
        return BleBackend()
    return BleBackend(BleakScannerBumble, BleakClientBumble, {"transport": spec})


__all__ = [
    "TRANSPORT_ENV",
    "BleBackend",
    "BleakClientBumble",
    "BleakScannerBumble",
    "BumbleDisconnectedError",
    "NoTransportError",
    "NotificationQueue",
    "forget_cached_services",
    "hold_host",
    "select_backend",
]
