"""Which HCI transport the edge's BLE host stack opens.

A Bumble transport spec names it: `tcp-client:127.0.0.1:40123` (a device on
the HIL rig's virtual air), `usb:0` (the first USB dongle), `hci-socket:0`
(a Linux HCI device taken from BlueZ), `serial:/dev/ttyACM0,1000000` (an
HCI UART controller). An explicit argument wins, then `KOMMUNE_BLE_TRANSPORT`.
"""

from __future__ import annotations

import os

from bleak.exc import BleakError

TRANSPORT_ENV = "KOMMUNE_BLE_TRANSPORT"


class NoTransportError(BleakError):
    """No HCI transport was given and `KOMMUNE_BLE_TRANSPORT` is not set."""


def configured_transport(explicit: str | None = None) -> str | None:
    """The transport spec to use, or None when none is configured."""
    if explicit:
        return explicit
    return os.environ.get(TRANSPORT_ENV) or None


def require_transport(explicit: str | None = None) -> str:
    spec = configured_transport(explicit)
    if spec is None:
        raise NoTransportError(
            f"no BLE HCI transport: pass transport=... or set {TRANSPORT_ENV} "
            "(e.g. usb:0, or the tcp-client:HOST:PORT the HIL air reports)"
        )
    return spec
