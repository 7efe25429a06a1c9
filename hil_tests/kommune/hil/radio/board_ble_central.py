"""The board BLE model's observer and central roles: `gap_scan` and `gap_connect`.

As MicroPython on NimBLE (an ESP32) does them:

- `gap_scan(duration_ms, interval_us, window_us, active)`: 0 scans until
  stopped, None stops (and raises _IRQ_SCAN_DONE, as does the end of the
  duration); scanning again while a scan runs is EALREADY; interval and window
  are clamped to 2.5 ms..10.24 s (a window longer than the interval is
  EINVAL). Every advertising report is an _IRQ_SCAN_RESULT, duplicates
  included, with the legacy PDU type as adv_type: a scan response is its own
  result (adv_type 4), and only an active scan gets one. The air delivers every
  advertisement: the duty cycle (window/interval) is not modelled.
- `gap_connect(addr_type, addr, scan_duration_ms, min_us, max_us)` stops a
  scan, then initiates; _IRQ_PERIPHERAL_CONNECT follows, or after
  `scan_duration_ms` (0: NimBLE's 30 s) without the peer advertising
  connectably, or on `gap_connect(None)`, _IRQ_PERIPHERAL_DISCONNECT with
  handle 0xFFFF, address type 0xFF and a zero address. A second connect while
  one is pending, or a cancel without one, is EALREADY. Intervals default to
  NimBLE's 30..50 ms, with its 2.56 s supervision timeout.
"""

from __future__ import annotations

import asyncio
import errno
import logging

from bumble import hci
from bumble.core import BaseBumbleError
from bumble.device import ConnectionParametersPreferences
from bumble.transport.common import TransportLostError

from kommune.hil.radio.board_ble_events import (
    IRQ_PERIPHERAL_DISCONNECT,
    IRQ_SCAN_DONE,
    IRQ_SCAN_RESULT,
    NO_ADDR,
    NO_ADDR_TYPE,
    NO_CONN_HANDLE,
)
from kommune.hil.radio.board_ble_gatt import BleError
from kommune.hil.radio.board_ble_links import Radio
from kommune.hil.radio.board_ble_stack import HostStack

logger = logging.getLogger(__name__)

SCAN_UNIT_US = 625
SCAN_MIN_UNITS, SCAN_MAX_UNITS = 0x0004, 0x4000
CONN_UNIT_US = 1250
CONN_INTERVAL_MIN_UNITS, CONN_INTERVAL_MAX_UNITS = 0x0018, 0x0028  # 30 ms, 50 ms
SUPERVISION_TIMEOUT_MS = 2560  # BLE_GAP_INITIAL_SUPERVISION_TIMEOUT
CONNECT_DEFAULT_S = 30.0  # BLE_GAP_CONN_DUR_DFLT, for scan_duration_ms=0

LegacyReport = hci.HCI_LE_Advertising_Report_Event.Report
ExtendedReport = hci.HCI_LE_Extended_Advertising_Report_Event.Report
Report = LegacyReport | ExtendedReport
ExtendedType = hci.HCI_LE_Extended_Advertising_Report_Event.EventType
LegacyType = hci.HCI_LE_Advertising_Report_Event.EventType


def legacy_adv_type(report: Report) -> int:
    """The report's advertising PDU type as NimBLE's legacy discovery reports it."""
    if isinstance(report, LegacyReport):
        return int(report.event_type)
    kind = ExtendedType(report.event_type)
    if kind & ExtendedType.SCAN_RESPONSE:
        return LegacyType.SCAN_RSP
    if kind & ExtendedType.DIRECTED_ADVERTISING:
        return LegacyType.ADV_DIRECT_IND
    if kind & ExtendedType.CONNECTABLE_ADVERTISING:
        return LegacyType.ADV_IND
    if kind & ExtendedType.SCANNABLE_ADVERTISING:
        return LegacyType.ADV_SCAN_IND
    return LegacyType.ADV_NONCONN_IND


def _units(value_us: int, unit_us: int, low: int, high: int) -> int:
    return max(low, min(high, value_us // unit_us))


class Central:
    """`gap_scan` and `gap_connect` of one board."""

    def __init__(self, radio: Radio) -> None:
        self.radio = radio
        self._stack: HostStack | None = None
        self._scanning = False  # the firmware's scan (Bumble may scan for itself too)
        self._scan_timer: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Task[None] | None = None

    def attach(self, stack: HostStack) -> None:
        """The radio came up on `stack`: listen to its advertising reports."""
        stack.device.host.on("advertising_report", self._on_report)
        self._stack = stack
        self._scanning = False
        self._scan_timer = None
        self._connecting = None

    def closed(self) -> None:
        """The radio went down: no timer outlives it, no report gets through."""
        if self._scan_timer is not None:
            self._scan_timer.cancel()
        self._stack = self._scan_timer = self._connecting = None
        self._scanning = False

    # -- observer -----------------------------------------------------------------

    async def gap_scan(
        self, duration_ms: int | None, interval_us: int, window_us: int, active: bool
    ) -> None:
        async with self.radio.lock:
            stack = self.radio.require_active()
            if duration_ms is None:
                await self._stop_scan(stack)
                return
            if self._scanning:
                raise BleError(errno.EALREADY, "already scanning")
            if stack.scanning:  # Bumble's own (a connect looking for an identity)
                await stack.stop_scanning()
            interval = _units(interval_us, SCAN_UNIT_US, SCAN_MIN_UNITS, SCAN_MAX_UNITS)
            window = _units(window_us, SCAN_UNIT_US, SCAN_MIN_UNITS, SCAN_MAX_UNITS)
            if window > interval or duration_ms < 0:
                raise BleError(errno.EINVAL, "scan window longer than its interval")
            own_address_type = await self.radio.use_own_address()
            await stack.command(
                stack.device.start_scanning(
                    active=active,
                    scan_interval=interval * SCAN_UNIT_US / 1000,
                    scan_window=window * SCAN_UNIT_US / 1000,
                    own_address_type=own_address_type,
                    filter_duplicates=False,
                )
            )
            self._scanning = True
            if duration_ms > 0:
                loop = asyncio.get_running_loop()
                self._scan_timer = loop.call_later(
                    duration_ms / 1000, lambda: stack.spawn(self._scan_ended(stack))
                )

    async def _scan_ended(self, stack: HostStack) -> None:
        async with self.radio.lock:
            self._scan_timer = None
            if self._stack is stack:
                await self._stop_scan(stack)

    async def _stop_scan(self, stack: HostStack) -> None:
        """Stop a scan (if one runs) and report its end."""
        if self._scan_timer is not None:
            self._scan_timer.cancel()
            self._scan_timer = None
        if self._scanning:
            self._scanning = False
            await stack.stop_scanning()
            self.radio.emit(IRQ_SCAN_DONE, ())

    def _on_report(self, report: Report) -> None:
        if not self._scanning:
            return  # a report in flight when the scan stopped, or Bumble's own scan
        address = report.address
        self.radio.emit(
            IRQ_SCAN_RESULT,
            (
                address.address_type & 1,
                bytes(address)[::-1],
                int(legacy_adv_type(report)),
                report.rssi,
                bytes(report.data),
            ),
        )

    # -- central ------------------------------------------------------------------

    async def gap_connect(
        self,
        addr_type: int | None,
        addr: bytes = NO_ADDR,
        scan_duration_ms: int = 2000,
        min_interval_us: int = 0,
        max_interval_us: int = 0,
    ) -> None:
        """`gap_connect(...)`; `addr_type` None: `gap_connect(None)`, cancel."""
        async with self.radio.lock:
            stack = self.radio.require_active()
            if addr_type is None:
                if self._connecting is None:
                    raise BleError(errno.EALREADY, "no connection attempt to cancel")
                await stack.command(stack.device.cancel_connection())  # type: ignore[no-untyped-call]
                return
            if self._connecting is not None:
                raise BleError(errno.EALREADY, "a connection attempt is in progress")
            if len(addr) != 6 or addr_type not in (0, 1):
                raise BleError(errno.EINVAL, "invalid address")
            await self._stop_scan(stack)
            low = min_interval_us // CONN_UNIT_US if min_interval_us else CONN_INTERVAL_MIN_UNITS
            high = max_interval_us // CONN_UNIT_US if max_interval_us else CONN_INTERVAL_MAX_UNITS
            preferences = ConnectionParametersPreferences(
                connection_interval_min=low * CONN_UNIT_US / 1000,
                connection_interval_max=max(low, high) * CONN_UNIT_US / 1000,
                max_latency=0,
                supervision_timeout=SUPERVISION_TIMEOUT_MS,
            )
            peer = hci.Address(bytes(addr[::-1]), hci.AddressType(addr_type))
            timeout_s = scan_duration_ms / 1000 if scan_duration_ms > 0 else CONNECT_DEFAULT_S
            own_address_type = await self.radio.use_own_address()
            attempt = stack.spawn(
                self._connect(stack, peer, preferences, own_address_type, timeout_s)
            )
            self._connecting = attempt
            # As ble_gap_connect: back once the controller initiates (or it failed).
            initiating = asyncio.ensure_future(stack.device.initiating.wait())
            try:
                await stack.wait(
                    asyncio.wait((attempt, initiating), return_when=asyncio.FIRST_COMPLETED)
                )
            finally:
                initiating.cancel()

    async def _connect(
        self,
        stack: HostStack,
        peer: hci.Address,
        preferences: ConnectionParametersPreferences,
        own_address_type: hci.OwnAddressType,
        timeout_s: float,
    ) -> None:
        # The connection itself is reported by BoardBle's connection handler
        # (_IRQ_PERIPHERAL_CONNECT), before anything can happen on it.
        try:
            await stack.wait(
                stack.device.connect(
                    peer,
                    connection_parameters_preferences={hci.Phy.LE_1M: preferences},
                    own_address_type=own_address_type,
                    timeout=timeout_s,
                )
            )
        except TransportLostError:
            return
        except (BaseBumbleError, TimeoutError) as e:
            logger.debug("gap_connect to %s: %r", peer, e)
            self._connecting = None
            self.radio.emit(IRQ_PERIPHERAL_DISCONNECT, (NO_CONN_HANDLE, NO_ADDR_TYPE, NO_ADDR))
        finally:
            if self._connecting is asyncio.current_task():
                self._connecting = None
        async with self.radio.lock:
            # Bumble scans for a bonded peer's identity address and leaves the scan on.
            if not self._scanning and self._stack is stack:
                await stack.stop_scanning()
