# The peripheral of the pairing tests, written against MicroPython's documented
# `bluetooth` API only: it bonds (keys in flash, bond_store.py), shows a passkey
# when asked to, and serves a characteristic that only an encrypted link reads.
#
# params.py: NAME, SERVICE, SECRET, IO, MITM, LE_SECURE, PASSKEY
import asyncio

import bluetooth
import bond_store
import params
from micropython import const

_IRQ_CENTRAL_CONNECT = const(1)
_IRQ_CENTRAL_DISCONNECT = const(2)
_IRQ_ENCRYPTION_UPDATE = const(28)
_IRQ_PASSKEY_ACTION = const(31)
_PASSKEY_ACTION_DISPLAY = const(3)
_PASSKEY_ACTION_NUMERIC_COMPARISON = const(4)
_FLAG_READ = const(0x0002)
_FLAG_READ_ENCRYPTED = const(0x0200)

_events = []
_flag = asyncio.ThreadSafeFlag()


def irq(event, data):
    handled, answer = bond_store.handle(event, data)
    if handled:
        return answer
    if event == _IRQ_PASSKEY_ACTION:
        conn, action, passkey = data
        print("passkey", action, passkey)
        if action == _PASSKEY_ACTION_DISPLAY:
            ble.gap_passkey(conn, action, params.PASSKEY)  # shown to the user
        elif action == _PASSKEY_ACTION_NUMERIC_COMPARISON:
            ble.gap_passkey(conn, action, 1)  # the user says it matches
        return None
    _events.append((event, tuple(data[:2]) if event != _IRQ_ENCRYPTION_UPDATE else tuple(data)))
    _flag.set()
    return None


async def main():
    bond_store.load()
    ble.irq(irq)
    ble.config(bond=True, mitm=params.MITM, io=params.IO, le_secure=params.LE_SECURE)
    ble.active(True)
    ((secret,),) = ble.gatts_register_services(
        (
            (
                bluetooth.UUID(params.SERVICE),
                ((bluetooth.UUID(params.SECRET), _FLAG_READ | _FLAG_READ_ENCRYPTED),),
            ),
        )
    )
    ble.gatts_write(secret, b"the secret")
    adv = b"\x02\x01\x06" + bytes((len(params.NAME) + 1, 0x09)) + params.NAME
    ble.gap_advertise(20_000, adv)
    print("advertising")
    while True:
        await _flag.wait()
        while _events:
            event, data = _events.pop(0)
            if event == _IRQ_CENTRAL_CONNECT:
                print("connected", data[0])
            elif event == _IRQ_CENTRAL_DISCONNECT:
                print("disconnected", data[0])
                ble.gap_advertise(20_000, adv)
            elif event == _IRQ_ENCRYPTION_UPDATE:
                print("encryption", data[1], data[2], data[3], data[4])


ble = bluetooth.BLE()
asyncio.run(main())
