"""The air's link: a Bumble `LocalLink` that times, loses, cuts and ranges LE traffic.

Bumble's `LocalLink` hands every PDU from one virtual controller to another on
the next loop iteration. `AirLink` keeps that path but puts each LE connection
through `ConnectionEvents` (timing, retransmission, supervision timeout) and
each advertisement through the pair's range, under the `LinkProfile` the
tests set at run time. BR/EDR traffic is passed through untouched.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from bumble import core, hci, ll
from bumble.controller import Controller
from bumble.link import LocalLink

from kommune.hil.radio.connection import (
    CONNECTION_TIMEOUT,
    FAILED_TO_BE_ESTABLISHED,
    AirConnection,
    Pair,
    pair,
)
from kommune.hil.radio.profile import LinkProfile
from kommune.hil.radio.timing import ConnectionEvents

logger = logging.getLogger(__name__)

ATT_CID = 0x0004
# A central gives up on a connection whose peer never answered after 6 intervals
# (Core Vol 6, Part B, 4.5.2).
ESTABLISHMENT_EVENTS = 6


# HCI_LE_Set_Advertising_Parameters advertising types (Core Vol 4, Part E, 7.8.5)
LEGACY_CONNECTABLE = (0x00, 0x01, 0x04)  # ADV_IND, ADV_DIRECT_IND (high, low duty)
LEGACY_SCANNABLE = (0x00, 0x02)  # ADV_IND, ADV_SCAN_IND
LEGACY_DIRECTED = (0x01, 0x04)


@dataclass(frozen=True)
class Advertising:
    """How one advertiser advertises: the PDU's properties and its scan response."""

    connectable: bool
    scannable: bool
    directed: bool
    legacy: bool
    scan_response_data: bytes


@dataclass
class LinkStats:
    """What happened on one pair of devices since the air started."""

    pdus_delivered: int = 0
    retransmissions: int = 0
    pdus_lost: int = 0  # in flight or queued when the link dropped
    disconnects: int = 0  # links the air dropped (timeouts and forced cuts)
    advertisements: int = 0  # advertising PDUs delivered between them

    def to_json(self) -> dict[str, int]:
        return asdict(self)


class AirLink(LocalLink):
    """A `LocalLink` with per-pair timing, loss, range and forced disconnects."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Bumble leaves it unannotated
        self.seed = seed
        self.default_profile = LinkProfile()
        self._profiles: dict[Pair, LinkProfile] = {}
        self._connections: dict[frozenset[Controller], AirConnection] = {}
        self._stats: dict[Pair, LinkStats] = {}
        self._cuts: dict[Pair, int | None] = {}  # armed cut -> ATT opcode to match (None: any)
        self._ordinals: dict[Pair, int] = {}  # connections made per pair, for their seeds

    # -- conditions -----------------------------------------------------------

    def profile(self, a: str, b: str) -> LinkProfile:
        return self._profiles.get(pair(a, b), self.default_profile)

    def set_profile(self, a: str, b: str, changes: dict[str, Any]) -> LinkProfile:
        profile = self.profile(a, b).updated(changes)
        self._profiles[pair(a, b)] = profile
        for connection in list(self._connections.values()):
            if connection.names == pair(a, b):
                self._apply_profile(connection)
        return profile

    def set_default_profile(self, changes: dict[str, Any]) -> LinkProfile:
        self.default_profile = self.default_profile.updated(changes)
        for connection in list(self._connections.values()):
            self._apply_profile(connection)
        return self.default_profile

    def stats(self, a: str, b: str) -> LinkStats:
        return self._stats.setdefault(pair(a, b), LinkStats())

    def rssi_dbm(self, receiver: Controller, sender: Controller) -> int:
        return round(self.profile(receiver.name, sender.name).rssi_dbm)

    def connection_timing_ms(
        self, controller: Controller, peer: hci.Address
    ) -> tuple[float, float] | None:
        """(interval, supervision timeout) the air runs `controller`'s link to `peer` at."""
        connection = self._between(controller, self.find_le_controller(peer))
        if connection is None:
            return None
        return connection.events.interval_s * 1000, connection.events.supervision_timeout_s * 1000

    def advertising(self, advertiser: Controller, address: hci.Address) -> Advertising | None:
        """What `advertiser` advertises as `address` now (None: nothing, or it stopped)."""
        legacy = advertiser.le_legacy_advertiser
        if legacy.enabled and legacy.address == address:
            kind = legacy.advertising_type
            return Advertising(
                connectable=kind in LEGACY_CONNECTABLE,
                scannable=kind in LEGACY_SCANNABLE,
                directed=kind in LEGACY_DIRECTED,
                legacy=True,
                scan_response_data=legacy.scan_response_data,
            )
        for advertising_set in advertiser.advertising_sets.values():
            if advertising_set.enabled and advertising_set.address == address:
                properties = 0
                if advertising_set.parameters is not None:
                    properties = int(advertising_set.parameters.advertising_event_properties)
                return Advertising(
                    connectable=bool(properties & 0x01),
                    scannable=bool(properties & 0x02),
                    directed=bool(properties & 0x04),
                    legacy=bool(properties & 0x10),
                    scan_response_data=bytes(advertising_set.scan_response_data),
                )
        return None

    # -- faults ---------------------------------------------------------------

    def disconnect(self, a: str, b: str, reason: int = CONNECTION_TIMEOUT) -> bool:
        """Drop the link between `a` and `b` now; both hosts see `reason`."""
        connection = self._find(a, b)
        if connection is None:
            return False
        self._drop(connection, reason)
        return True

    def arm_cut(self, a: str, b: str, att_opcode: int | None = None) -> None:
        """Lose the next PDU between `a` and `b` (with that ATT opcode) and drop the link."""
        self._cuts[pair(a, b)] = att_opcode

    def connected(self, a: str, b: str) -> bool:
        return self._find(a, b) is not None

    # -- LocalLink overrides ----------------------------------------------------

    def remove_controller(self, controller: Controller) -> None:
        """The device lost power: its peers notice when their supervision timers expire."""
        for connection in [c for c in self._connections.values() if controller in c.directions]:
            dropped = connection.directions[controller].cancel()
            self.stats(*connection.names).pdus_lost += dropped
            peer = connection.peer_of(controller)
            connection.directions[peer].cancel()
            self._doom(connection, connection.events.supervision_timeout_s)
        super().remove_controller(controller)

    def send_advertising_pdu(
        self, sender_controller: Controller, packet: ll.AdvertisingPdu
    ) -> None:
        loop = asyncio.get_running_loop()
        if isinstance(packet, ll.ConnectInd):
            self._on_connect_ind(sender_controller, packet)
            return
        for receiver in list(self.controllers):
            if receiver is sender_controller or not self._in_range(sender_controller, receiver):
                continue
            self.stats(sender_controller.name, receiver.name).advertisements += 1
            loop.call_soon(receiver.on_ll_advertising_pdu, packet)

    def send_acl_data(
        self,
        sender_controller: Controller,
        destination_address: hci.Address,
        transport: core.PhysicalTransport,
        data: bytes,
    ) -> None:
        if transport != core.PhysicalTransport.LE:
            super().send_acl_data(sender_controller, destination_address, transport, data)
            return
        receiver = self.find_le_controller(destination_address)
        connection = self._between(sender_controller, receiver)
        if receiver is None or connection is None:
            logger.debug(
                "ACL from %s to %s: no connection", sender_controller.name, destination_address
            )
            return
        source_address = connection.address_of(sender_controller)
        names = connection.names
        if names in self._cuts and _matches(self._cuts[names], data):
            del self._cuts[names]
            self.stats(*names).pdus_lost += 1
            # Next iteration: the sender's controller first completes this
            # packet towards its host, as a real one does before the link dies.
            connection.doom_reason = CONNECTION_TIMEOUT
            self._doom(connection, 0.0)
            return

        def deliver() -> None:
            if source_address in receiver.le_connections:
                receiver.on_link_acl_data(source_address, transport, data)

        self._transmit(connection, sender_controller, deliver)

    def send_ll_control_pdu(
        self, sender_address: hci.Address, receiver_address: hci.Address, packet: ll.ControlPdu
    ) -> None:
        receiver = self.find_le_controller(receiver_address)
        sender = self.find_le_controller(sender_address)
        connection = self._between(sender, receiver)
        if receiver is None or sender is None or connection is None:
            logger.debug("LL control %s to %s: no connection", packet, receiver_address)
            return
        terminating = isinstance(packet, ll.TerminateInd)

        def deliver() -> None:
            if sender_address in receiver.le_connections:
                receiver.on_ll_control_pdu(sender_address, packet)
            if terminating:
                self._forget(connection)

        self._transmit(connection, sender, deliver)

    # -- internals --------------------------------------------------------------

    def _between(self, a: Controller | None, b: Controller | None) -> AirConnection | None:
        if a is None or b is None:
            return None
        return self._connections.get(frozenset((a, b)))

    def _find(self, a: str, b: str) -> AirConnection | None:
        for connection in self._connections.values():
            if connection.names == pair(a, b):
                return connection
        return None

    def _in_range(self, a: Controller, b: Controller) -> bool:
        return self.profile(a.name, b.name).in_range

    def _on_connect_ind(self, central: Controller, packet: ll.ConnectInd) -> None:
        peripheral = self.find_le_controller(packet.advertiser_address)
        if peripheral is None or peripheral is central:
            return
        names = pair(central.name, peripheral.name)
        ordinal = self._ordinals.get(names, 0)
        self._ordinals[names] = ordinal + 1
        a, b = sorted(names)
        loop = asyncio.get_running_loop()
        negotiated_interval_s = packet.interval * 1.25e-3
        negotiated_timeout_s = packet.timeout * 10e-3
        connection = AirConnection(
            central,
            peripheral,
            central_address=packet.initiator_address,
            peripheral_address=packet.advertiser_address,
            negotiated_interval_s=negotiated_interval_s,
            negotiated_timeout_s=negotiated_timeout_s,
            events=ConnectionEvents(
                anchor_s=loop.time(),
                interval_s=negotiated_interval_s,
                supervision_timeout_s=negotiated_timeout_s,
                aligned=False,
                rng=random.Random(f"{self.seed}/{a}/{b}/{ordinal}"),
            ),
        )
        self._connections[frozenset((central, peripheral))] = connection
        self._apply_profile(connection)
        if not self._in_range(central, peripheral):
            # The peripheral never hears CONNECT_IND; the central gives up.
            connection.doom_reason = FAILED_TO_BE_ESTABLISHED
            self._doom(connection, ESTABLISHMENT_EVENTS * connection.events.interval_s)
            return
        loop.call_soon(peripheral.on_ll_advertising_pdu, packet)

    def _apply_profile(self, connection: AirConnection) -> None:
        profile = self.profile(*connection.names)
        interval_s = (
            connection.negotiated_interval_s
            if profile.interval_ms is None
            else profile.interval_ms / 1000
        )
        timeout_s = (
            connection.negotiated_timeout_s
            if profile.supervision_timeout_ms is None
            else profile.supervision_timeout_ms / 1000
        )
        connection.events.retime(
            now_s=asyncio.get_running_loop().time(),
            interval_s=interval_s,
            supervision_timeout_s=timeout_s,
            aligned=profile.interval_ms is not None,
        )
        blackout = profile.effective_loss >= 1.0
        if blackout and connection.watchdog is None:
            connection.watchdog = asyncio.get_running_loop().call_later(
                timeout_s, self._drop, connection, CONNECTION_TIMEOUT
            )
        elif not blackout and connection.watchdog is not None:
            connection.watchdog.cancel()
            connection.watchdog = None

    def _transmit(
        self, connection: AirConnection, sender: Controller, deliver: Callable[[], None]
    ) -> None:
        stats = self.stats(*connection.names)
        if connection.doom is not None:
            stats.pdus_lost += 1
            return
        direction = connection.directions[sender]
        attempt = connection.events.transmit(
            now_s=asyncio.get_running_loop().time(),
            not_before_s=direction.last_at_s,
            loss=self.profile(*connection.names).effective_loss,
        )
        stats.retransmissions += attempt.retransmissions
        if attempt.delivered:
            stats.pdus_delivered += 1
            direction.push(attempt.at_s, deliver)
        else:
            stats.pdus_lost += 1
            self._doom(connection, attempt.at_s - asyncio.get_running_loop().time())

    def _doom(self, connection: AirConnection, delay_s: float) -> None:
        """The link will drop in `delay_s` (supervision timeout); nothing gets through meanwhile."""
        if connection.doom is None:
            connection.doom = asyncio.get_running_loop().call_later(
                max(0.0, delay_s), lambda: self._drop(connection, connection.doom_reason)
            )

    def _drop(self, connection: AirConnection, reason: int) -> None:
        """Both ends lose the link now (each end that still has it gets `reason`)."""
        if self._connections.get(frozenset(connection.directions)) is not connection:
            return
        self._forget(connection)
        stats = self.stats(*connection.names)
        stats.disconnects += 1
        for end in (connection.central, connection.peripheral):
            stats.pdus_lost += connection.directions[end].cancel()
            peer_address = connection.address_of(connection.peer_of(end))
            hci_connection = end.le_connections.get(peer_address)
            if end in self.controllers and hci_connection is not None:
                end.on_le_disconnected(hci_connection, reason)

    def _forget(self, connection: AirConnection) -> None:
        key = frozenset(connection.directions)
        if self._connections.get(key) is connection:
            del self._connections[key]
        for timer in (connection.watchdog, connection.doom):
            if timer is not None:
                timer.cancel()
        connection.watchdog = connection.doom = None


def _matches(att_opcode: int | None, l2cap_pdu: bytes) -> bool:
    """Does this L2CAP PDU (length, CID, payload) carry the ATT opcode (None: any PDU)?"""
    if att_opcode is None:
        return True
    if len(l2cap_pdu) < 5:
        return False
    cid = int.from_bytes(l2cap_pdu[2:4], "little")
    return cid == ATT_CID and l2cap_pdu[4] == att_opcode
