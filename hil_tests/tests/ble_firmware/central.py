# A BLE central for the HIL tests, written against MicroPython's documented
# `bluetooth` API only (it runs as it is on an ESP32): it finds the peripheral
# by name with an active scan, connects, discovers, reads, writes, subscribes,
# and prints what it got. The IRQ handler copies what it needs (bytes(),
# bluetooth.UUID()) and flags the main task.
#
# params.py (written by the test): NAME (bytes), SERVICE, COMMAND, STATUS,
# AUDIT, SECRET (UUID strings).
import asyncio
import time

import bluetooth
import params
from micropython import const

_IRQ_SCAN_RESULT = const(5)
_IRQ_SCAN_DONE = const(6)
_IRQ_PERIPHERAL_CONNECT = const(7)
_IRQ_PERIPHERAL_DISCONNECT = const(8)
_IRQ_GATTC_SERVICE_RESULT = const(9)
_IRQ_GATTC_SERVICE_DONE = const(10)
_IRQ_GATTC_CHARACTERISTIC_RESULT = const(11)
_IRQ_GATTC_CHARACTERISTIC_DONE = const(12)
_IRQ_GATTC_DESCRIPTOR_RESULT = const(13)
_IRQ_GATTC_DESCRIPTOR_DONE = const(14)
_IRQ_GATTC_READ_RESULT = const(15)
_IRQ_GATTC_READ_DONE = const(16)
_IRQ_GATTC_WRITE_DONE = const(17)
_IRQ_GATTC_NOTIFY = const(18)
_IRQ_GATTC_INDICATE = const(19)
_IRQ_MTU_EXCHANGED = const(21)

_DISCOVERY_RESULTS = (
    _IRQ_GATTC_SERVICE_RESULT,
    _IRQ_GATTC_CHARACTERISTIC_RESULT,
    _IRQ_GATTC_DESCRIPTOR_RESULT,
)
_ADV_IND = const(0)
_SCAN_RSP = const(4)
_CCCD = bluetooth.UUID(0x2902)
_USER_DESCRIPTION = bluetooth.UUID(0x2901)


def adv_name(adv_data):
    # The complete local name (AD type 0x09), if any.
    i = 0
    while i + 1 < len(adv_data):
        size = adv_data[i]
        if adv_data[i + 1] == 0x09:
            return bytes(adv_data[i + 2 : i + 1 + size])
        i += 1 + size
    return None


class Central:
    def __init__(self, ble):
        self._ble = ble
        self._events = []
        self._flag = asyncio.ThreadSafeFlag()
        self.peer = None
        self.got_response = False
        self.kept_addr = None  # an addr memoryview kept past its IRQ (as firmware must not)
        ble.irq(self._irq)
        ble.active(True)

    def _irq(self, event, data):
        if event == _IRQ_SCAN_RESULT:
            addr_type, addr, adv_type, rssi, adv_data = data
            if self.kept_addr is None:
                self.kept_addr = addr
            if adv_type == _ADV_IND and adv_name(adv_data) == params.NAME:
                self.peer = (addr_type, bytes(addr), rssi)
            elif adv_type == _SCAN_RSP and self.peer and bytes(addr) == self.peer[1]:
                self.got_response = bytes(adv_data) == b"\x04\xffKM"
            return
        if event in (_IRQ_PERIPHERAL_CONNECT, _IRQ_PERIPHERAL_DISCONNECT):
            item = (data[0], data[1], bytes(data[2]))
        elif event in _DISCOVERY_RESULTS:
            # The UUID is the stack's: copy it. (MicroPython has no (*a, b) display.)
            item = tuple(data[:-1]) + (bluetooth.UUID(data[-1]),)  # noqa: RUF005
        elif event in (_IRQ_GATTC_READ_RESULT, _IRQ_GATTC_NOTIFY, _IRQ_GATTC_INDICATE):
            item = (data[0], data[1], bytes(data[2]))
        else:
            item = tuple(data)
        self._events.append((event, item))
        self._flag.set()

    async def expect(self, wanted, timeout_ms=5000):
        # The next event of kind `wanted` (others before it are kept in order).
        deadline = time.ticks_add(time.ticks_ms(), timeout_ms)
        while True:
            for i, (event, item) in enumerate(self._events):
                if event == wanted:
                    self._events.pop(i)
                    return item
            left = time.ticks_diff(deadline, time.ticks_ms())
            if left <= 0:
                raise OSError(110, "no IRQ " + str(wanted))
            await asyncio.wait_for_ms(self._flag.wait(), left)

    async def collect(self, result, done):
        # Results until the done event: (results, done's data)
        items = []
        while True:
            for i, (event, item) in enumerate(self._events):
                if event in (result, done):
                    self._events.pop(i)
                    if event == done:
                        return items, item
                    items.append(item)
                    break
            else:
                await asyncio.wait_for_ms(self._flag.wait(), 5000)

    async def run(self):
        ble = self._ble
        started = time.ticks_ms()
        ble.gap_scan(5000, 30_000, 30_000, True)
        while not (self.peer and self.got_response):
            await asyncio.sleep_ms(10)
        ble.gap_scan(None)
        await self.expect(_IRQ_SCAN_DONE)
        addr_type, addr, rssi = self.peer
        print("found", addr_type, addr, rssi, "response", self.got_response)

        ble.gap_connect(addr_type, addr)
        conn, _, peer = await self.expect(_IRQ_PERIPHERAL_CONNECT)
        print("connected", conn, peer == addr)
        ble.gattc_exchange_mtu(conn)
        print("mtu", (await self.expect(_IRQ_MTU_EXCHANGED))[1])

        ble.gattc_discover_services(conn)
        services, (_, status) = await self.collect(
            _IRQ_GATTC_SERVICE_RESULT, _IRQ_GATTC_SERVICE_DONE
        )
        start, end = next((s, e) for _, s, e, u in services if u == bluetooth.UUID(params.SERVICE))
        print("services", len(services), status)

        ble.gattc_discover_characteristics(conn, start, end)
        found, (_, status) = await self.collect(
            _IRQ_GATTC_CHARACTERISTIC_RESULT, _IRQ_GATTC_CHARACTERISTIC_DONE
        )
        chars = {u: (v, e, p) for _, e, v, p, u in found}
        command = chars[bluetooth.UUID(params.COMMAND)][0]
        status_handle, status_end, props = chars[bluetooth.UUID(params.STATUS)]
        audit, audit_end, _ = chars[bluetooth.UUID(params.AUDIT)]
        secret = chars[bluetooth.UUID(params.SECRET)][0]
        print("characteristics", len(found), status, "status props", props)
        print("discovered in", time.ticks_diff(time.ticks_ms(), started), "ms")

        ble.gattc_discover_descriptors(conn, status_handle, status_end)
        descriptors, (_, status) = await self.collect(
            _IRQ_GATTC_DESCRIPTOR_RESULT, _IRQ_GATTC_DESCRIPTOR_DONE
        )
        by_uuid = {u: h for _, h, u in descriptors}
        print("descriptors", [h - status_handle for _, h, _ in descriptors], status)

        ble.gattc_read(conn, by_uuid[_USER_DESCRIPTION])
        print("label", (await self.expect(_IRQ_GATTC_READ_RESULT))[2])
        await self.expect(_IRQ_GATTC_READ_DONE)
        ble.gattc_read(conn, status_handle)
        value = (await self.expect(_IRQ_GATTC_READ_RESULT))[2]
        print("read", value, (await self.expect(_IRQ_GATTC_READ_DONE))[2])

        ble.gattc_write(conn, by_uuid[_CCCD], b"\x01\x00", 1)
        print("subscribed", (await self.expect(_IRQ_GATTC_WRITE_DONE))[2])
        ble.gattc_write(conn, command, b"open", 1)
        print("written", (await self.expect(_IRQ_GATTC_WRITE_DONE))[2])
        handle, value = (await self.expect(_IRQ_GATTC_NOTIFY))[1:]
        print("notified", handle == status_handle, value)

        ble.gattc_discover_descriptors(conn, audit, audit_end)
        descriptors, _ = await self.collect(
            _IRQ_GATTC_DESCRIPTOR_RESULT, _IRQ_GATTC_DESCRIPTOR_DONE
        )
        audit_cccd = next(h for _, h, u in descriptors if u == _CCCD)
        ble.gattc_write(conn, audit_cccd, b"\x02\x00", 1)
        await self.expect(_IRQ_GATTC_WRITE_DONE)
        ble.gattc_write(conn, command, b"audit")  # mode 0: no IRQ for this one
        handle, value = (await self.expect(_IRQ_GATTC_INDICATE))[1:]
        print("indicated", handle == audit, value)

        ble.gattc_read(conn, command)  # not readable
        print("refused read", (await self.expect(_IRQ_GATTC_READ_DONE))[2])
        ble.gattc_read(conn, secret)  # READ_ENCRYPTED, on a link that is not
        print("secret read", (await self.expect(_IRQ_GATTC_READ_DONE))[2])

        print("kept addr wiped", bytes(self.kept_addr) == bytes(6))
        print("disconnect", ble.gap_disconnect(conn))
        print("disconnected", (await self.expect(_IRQ_PERIPHERAL_DISCONNECT))[0] == conn)
        print("again", ble.gap_disconnect(conn))
        print("done")


asyncio.run(Central(bluetooth.BLE()).run())
