# The central of the pairing tests, written against MicroPython's documented
# `bluetooth` API only: it connects to the peripheral, reads the characteristic
# only an encrypted link may read, secures the link (gap_pair: pairing the first
# time, re-encryption with the stored key once bonded; keys in flash,
# bond_store.py), types the passkey the peripheral shows, and reads again.
#
# params.py: PERIPHERAL (address bytes), SERVICE, SECRET, IO, MITM, LE_SECURE, PASSKEY
import asyncio
import time

import bluetooth
import bond_store
import params
from micropython import const

_IRQ_PERIPHERAL_CONNECT = const(7)
_IRQ_GATTC_CHARACTERISTIC_RESULT = const(11)
_IRQ_GATTC_CHARACTERISTIC_DONE = const(12)
_IRQ_GATTC_READ_RESULT = const(15)
_IRQ_GATTC_READ_DONE = const(16)
_IRQ_ENCRYPTION_UPDATE = const(28)
_IRQ_PASSKEY_ACTION = const(31)
_PASSKEY_ACTION_INPUT = const(2)
_PASSKEY_ACTION_NUMERIC_COMPARISON = const(4)

_events = []
_flag = asyncio.ThreadSafeFlag()


def irq(event, data):
    handled, answer = bond_store.handle(event, data)
    if handled:
        return answer
    if event == _IRQ_PASSKEY_ACTION:
        conn, action, passkey = data
        print("passkey", action, passkey)
        if action == _PASSKEY_ACTION_INPUT:
            ble.gap_passkey(conn, action, params.PASSKEY)  # typed by the user
        elif action == _PASSKEY_ACTION_NUMERIC_COMPARISON:
            ble.gap_passkey(conn, action, 1)
        return None
    if event == _IRQ_GATTC_READ_RESULT:
        _events.append((event, (data[0], data[1], bytes(data[2]))))
    else:
        _events.append((event, tuple(data[:-1]) if event == 11 else tuple(data)))
    _flag.set()
    return None


async def expect(wanted):
    deadline = time.ticks_add(time.ticks_ms(), 10_000)
    while True:
        for i, (event, data) in enumerate(_events):
            if event == wanted:
                _events.pop(i)
                return data
        await asyncio.wait_for_ms(_flag.wait(), time.ticks_diff(deadline, time.ticks_ms()))


async def read(conn, handle):
    ble.gattc_read(conn, handle)
    status = (await expect(_IRQ_GATTC_READ_DONE))[2]
    value = None
    if status == 0:
        value = (await expect(_IRQ_GATTC_READ_RESULT))[2]
    print("read", value, status)


async def main():
    bond_store.load()
    ble.irq(irq)
    ble.config(bond=True, mitm=params.MITM, io=params.IO, le_secure=params.LE_SECURE)
    ble.active(True)
    ble.gap_connect(0, params.PERIPHERAL, 5000)
    conn = (await expect(_IRQ_PERIPHERAL_CONNECT))[0]
    print("connected", conn)
    ble.gattc_discover_characteristics(conn, 1, 0xFFFF, bluetooth.UUID(params.SECRET))
    handle = (await expect(_IRQ_GATTC_CHARACTERISTIC_RESULT))[2]
    await expect(_IRQ_GATTC_CHARACTERISTIC_DONE)
    await read(conn, handle)  # not encrypted yet
    ble.gap_pair(conn)
    update = await expect(_IRQ_ENCRYPTION_UPDATE)
    print("encryption", update[1], update[2], update[3], update[4])
    await read(conn, handle)
    print("done")


ble = bluetooth.BLE()
asyncio.run(main())
