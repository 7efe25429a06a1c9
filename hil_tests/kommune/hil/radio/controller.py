"""A Bumble virtual controller that reports what the air models.

Bumble's `Controller` stamps every advertising report with -50 dBm, repeats
the advertising data as the scan response, reports made-up connection
parameters to the peripheral, and ignores LE Create Connection Cancel (a host
whose connect times out then waits forever). `AirController` fixes those on the
way to its host, so the host stack above sees a radio that behaves like one.
"""

from __future__ import annotations

import asyncio
import dataclasses

from bumble import hci
from bumble.controller import Controller

from kommune.hil.radio.link import AirLink

LegacyReport = hci.HCI_LE_Advertising_Report_Event.Report
ExtendedReport = hci.HCI_LE_Extended_Advertising_Report_Event.Report
ExtendedType = hci.HCI_LE_Extended_Advertising_Report_Event.EventType
PASSIVE_SCANNING = 0x00


class AirController(Controller):
    """One device's controller on the air, named after the device."""

    def __init__(self, name: str, air: AirLink, public_address: hci.Address) -> None:
        super().__init__(name, link=air, public_address=public_address)
        self.air = air

    def send_hci_packet(self, packet: hci.HCI_Packet) -> None:
        if isinstance(packet, hci.HCI_LE_Advertising_Report_Event):
            reports = [r for r in map(self._legacy_report, packet.reports) if r is not None]
            if not reports:
                return
            packet = hci.HCI_LE_Advertising_Report_Event(reports)
        elif isinstance(packet, hci.HCI_LE_Extended_Advertising_Report_Event):
            ext_reports = [r for r in map(self._extended_report, packet.reports) if r is not None]
            if not ext_reports:
                return
            packet = hci.HCI_LE_Extended_Advertising_Report_Event(ext_reports)
        elif (
            isinstance(packet, hci.HCI_LE_Connection_Complete_Event)
            and packet.status == hci.HCI_ErrorCode.SUCCESS
            and (timing := self.air.connection_timing_ms(self, packet.peer_address)) is not None
        ):
            interval_ms, timeout_ms = timing
            packet = dataclasses.replace(
                packet,
                connection_interval=round(interval_ms / 1.25),
                supervision_timeout=round(timeout_ms / 10),
            )
        super().send_hci_packet(packet)

    def _advertiser(self, address: hci.Address) -> Controller | None:
        return self.air.find_le_controller(address)

    def _legacy_report(self, report: LegacyReport) -> LegacyReport | None:
        advertiser = self._advertiser(report.address)
        if advertiser is None:
            return report
        rssi = self.air.rssi_dbm(self, advertiser)
        if report.event_type != hci.HCI_LE_Advertising_Report_Event.EventType.SCAN_RSP:
            return dataclasses.replace(report, rssi=rssi)
        if self.le_scan_type == PASSIVE_SCANNING:
            return None  # a passive scanner sends no SCAN_REQ, so it gets no response
        data = self.air.scan_response_data(advertiser, report.address)
        return dataclasses.replace(report, rssi=rssi, data=data)

    def _extended_report(self, report: ExtendedReport) -> ExtendedReport | None:
        advertiser = self._advertiser(report.address)
        if advertiser is None:
            return report
        rssi = self.air.rssi_dbm(self, advertiser)
        if not report.event_type & ExtendedType.SCAN_RESPONSE:
            event_type = report.event_type
            if self.le_scan_type != PASSIVE_SCANNING:
                # Scannable: the host then merges this with the scan response below.
                event_type |= ExtendedType.SCANNABLE_ADVERTISING
            return dataclasses.replace(report, rssi=rssi, event_type=event_type)
        if self.le_scan_type == PASSIVE_SCANNING:
            return None
        data = self.air.scan_response_data(advertiser, report.address)
        return dataclasses.replace(report, rssi=rssi, data=data)

    def on_hci_le_set_extended_scan_parameters_command(
        self, command: hci.HCI_LE_Set_Extended_Scan_Parameters_Command
    ) -> hci.HCI_StatusReturnParameters:
        # Bumble keeps the legacy scan type only; the reports above need it.
        result = super().on_hci_le_set_extended_scan_parameters_command(command)
        if command.scan_types:
            self.le_scan_type = command.scan_types[0]
        return result

    def on_hci_le_create_connection_cancel_command(
        self, command: hci.HCI_LE_Create_Connection_Cancel_Command
    ) -> hci.HCI_StatusReturnParameters:
        """Core Vol 4, Part E, 7.8.13: cancel, then report the attempt as failed."""
        pending = self.pending_le_connection
        if pending is None:
            return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.COMMAND_DISALLOWED_ERROR)
        self.pending_le_connection = None
        failed = hci.HCI_LE_Connection_Complete_Event(
            status=hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR,
            connection_handle=0,
            role=hci.Role.CENTRAL,
            peer_address_type=pending.peer_address.address_type,
            peer_address=pending.peer_address,
            connection_interval=0,
            peripheral_latency=0,
            supervision_timeout=0,
            central_clock_accuracy=0,
        )
        # After the Command Complete that returning the status produces.
        asyncio.get_running_loop().call_soon(self.send_hci_packet, failed)
        return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.SUCCESS)
