"""A Bumble virtual controller that reports what the air models.

Bumble's `Controller` stamps every advertising report with -50 dBm, reports
every advertisement as connectable and follows it with a scan response that
repeats the advertising data, connects to a non-connectable advertiser,
reports made-up connection parameters to the peripheral, ignores LE Create
Connection Cancel (a host whose connect times out then waits forever) and
accepts a Disconnect for a link that is gone without ever completing it (the
host then waits forever). `AirController` fixes those on the way to its host,
so the host stack above sees a radio that behaves like one: reports carry the
advertiser's real PDU type (legacy PDUs flagged as such), a scan response
comes only from a scannable advertiser to an active scanner and carries its
scan response data.
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
LegacyType = hci.HCI_LE_Advertising_Report_Event.EventType
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
        advertising = self.air.advertising(advertiser, report.address)
        if advertising is None:
            return None  # it stopped meanwhile
        rssi = self.air.rssi_dbm(self, advertiser)
        if report.event_type == LegacyType.SCAN_RSP:
            if self.le_scan_type == PASSIVE_SCANNING or not advertising.scannable:
                return None  # no SCAN_REQ, or nobody answers one: no response
            return dataclasses.replace(report, rssi=rssi, data=advertising.scan_response_data)
        if advertising.directed:
            kind = LegacyType.ADV_DIRECT_IND
        elif advertising.connectable:
            kind = LegacyType.ADV_IND
        elif advertising.scannable:
            kind = LegacyType.ADV_SCAN_IND
        else:
            kind = LegacyType.ADV_NONCONN_IND
        return dataclasses.replace(report, rssi=rssi, event_type=kind)

    def _extended_report(self, report: ExtendedReport) -> ExtendedReport | None:
        advertiser = self._advertiser(report.address)
        if advertiser is None:
            return report
        advertising = self.air.advertising(advertiser, report.address)
        if advertising is None:
            return None  # it stopped meanwhile
        rssi = self.air.rssi_dbm(self, advertiser)
        kind = ExtendedType(0)
        if advertising.connectable:
            kind |= ExtendedType.CONNECTABLE_ADVERTISING
        if advertising.scannable:
            kind |= ExtendedType.SCANNABLE_ADVERTISING
        if advertising.directed:
            kind |= ExtendedType.DIRECTED_ADVERTISING
        if advertising.legacy:
            kind |= ExtendedType.LEGACY_ADVERTISING_PDU_USED
        if not report.event_type & ExtendedType.SCAN_RESPONSE:
            return dataclasses.replace(report, rssi=rssi, event_type=kind)
        if self.le_scan_type == PASSIVE_SCANNING or not advertising.scannable:
            return None
        return dataclasses.replace(
            report,
            rssi=rssi,
            event_type=kind | ExtendedType.SCAN_RESPONSE,
            data=advertising.scan_response_data,
        )

    def create_le_connection(self, peer_address: hci.Address) -> None:
        """The peer advertised while we initiate: connect, if it takes connections."""
        advertiser = self._advertiser(peer_address)
        if advertiser is not None:
            advertising = self.air.advertising(advertiser, peer_address)
            if advertising is None or not advertising.connectable:
                return  # keep initiating
        super().create_le_connection(peer_address)

    def on_hci_le_set_extended_scan_parameters_command(
        self, command: hci.HCI_LE_Set_Extended_Scan_Parameters_Command
    ) -> hci.HCI_StatusReturnParameters:
        # Bumble keeps the legacy scan type only; the reports above need it.
        result = super().on_hci_le_set_extended_scan_parameters_command(command)
        if command.scan_types:
            self.le_scan_type = command.scan_types[0]
        return result

    def on_hci_disconnect_command(self, command: hci.HCI_Disconnect_Command) -> None:
        """Core Vol 4, Part E, 7.1.6: an unknown handle fails at once (a link the
        peer ended a moment ago is gone)."""
        handle = command.connection_handle
        if (
            self.find_le_connection_by_handle(handle) is None
            and self.find_classic_connection_by_handle(handle) is None
            and self.find_classic_sco_link_by_handle(handle) is None
        ):
            self._send_hci_command_status(
                hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR, command.op_code
            )
            return
        super().on_hci_disconnect_command(command)

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
