# A BLE peripheral for the HIL tests, written against MicroPython's documented
# `bluetooth` API only (it runs as it is on an ESP32). The IRQ handler copies
# what it needs and flags the main task, which does the work.
#
# params.py (written by the test): NAME (bytes), SERVICE, COMMAND, STATUS,
# AUDIT (UUID strings), SECURE (a flag value for the SECRET characteristic).
import asyncio

import bluetooth
import params
from micropython import const

_IRQ_CENTRAL_CONNECT = const(1)
_IRQ_CENTRAL_DISCONNECT = const(2)
_IRQ_GATTS_WRITE = const(3)
_IRQ_GATTS_INDICATE_DONE = const(20)
_IRQ_MTU_EXCHANGED = const(21)
_IRQ_ENCRYPTION_UPDATE = const(28)

_FLAG_READ = const(0x0002)
_FLAG_WRITE = const(0x0008)
_FLAG_NOTIFY = const(0x0010)
_FLAG_INDICATE = const(0x0020)

_SERVICE = bluetooth.UUID(params.SERVICE)
_COMMAND = (bluetooth.UUID(params.COMMAND), _FLAG_WRITE)
_STATUS = (
    bluetooth.UUID(params.STATUS),
    _FLAG_READ | _FLAG_NOTIFY,
    ((bluetooth.UUID(0x2901), _FLAG_READ),),  # a user description
)
_AUDIT = (bluetooth.UUID(params.AUDIT), _FLAG_INDICATE)
_SECRET = (bluetooth.UUID(params.SECRET), _FLAG_READ | params.SECURE)


def adv_payload(name):
    # flags, complete local name
    return b"\x02\x01\x06" + bytes((len(name) + 1, 0x09)) + name


class Peripheral:
    def __init__(self, ble):
        self._ble = ble
        self._events = []
        self._flag = asyncio.ThreadSafeFlag()
        ble.irq(self._irq)
        ble.active(True)
        ((self._command, self._status, self._label, self._audit, self._secret),) = (
            ble.gatts_register_services(((_SERVICE, (_COMMAND, _STATUS, _AUDIT, _SECRET)),))
        )
        ble.gatts_write(self._status, b"closed")
        ble.gatts_write(self._label, b"lock state")
        ble.gatts_write(self._secret, b"the secret")

    def _irq(self, event, data):
        if event in (_IRQ_CENTRAL_CONNECT, _IRQ_CENTRAL_DISCONNECT):
            self._events.append((event, data[0], bytes(data[2])))
        elif event == _IRQ_GATTS_WRITE:
            self._events.append((event, data[0], self._ble.gatts_read(data[1])))
        elif event == _IRQ_ENCRYPTION_UPDATE:
            self._events.append((event, data[0], tuple(data[1:])))
        else:
            self._events.append((event, data[0], data[-1]))
        self._flag.set()

    def advertise(self):
        self._ble.gap_advertise(20_000, adv_payload(params.NAME), resp_data=b"\x04\xffKM")

    async def run(self):
        self.advertise()
        print("advertising")
        while True:
            await self._flag.wait()
            while self._events:
                event, conn, value = self._events.pop(0)
                if event == _IRQ_CENTRAL_CONNECT:
                    print("central connected", conn)
                elif event == _IRQ_CENTRAL_DISCONNECT:
                    print("central disconnected", conn)
                    self.advertise()
                elif event == _IRQ_MTU_EXCHANGED:
                    print("mtu", value)
                elif event == _IRQ_ENCRYPTION_UPDATE:
                    print("encryption", value)
                elif event == _IRQ_GATTS_INDICATE_DONE:
                    print("indicated", value)
                elif event == _IRQ_GATTS_WRITE:
                    print("command", value)
                    if value == b"audit":
                        self._ble.gatts_indicate(conn, self._audit, b"entry 1")
                    else:
                        self._ble.gatts_write(self._status, b"ok:" + value.upper(), True)


asyncio.run(Peripheral(bluetooth.BLE()).run())
