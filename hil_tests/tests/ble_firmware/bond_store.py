# The bond store of the pairing test firmware: the secrets the BLE stack asks to
# keep (_IRQ_SET_SECRET) and to give back (_IRQ_GET_SECRET), in a JSON file in the
# board's flash, written before the IRQ handler returns -- so a bond outlives a
# power cut. Written against MicroPython's documented `bluetooth` API only.
import binascii
import json

from micropython import const

_IRQ_GET_SECRET = const(29)
_IRQ_SET_SECRET = const(30)
_PATH = "secrets.json"

_secrets = {}  # "sec_type:key-hex" -> value-hex


def load():
    try:
        with open(_PATH) as f:
            _secrets.update(json.load(f))
    except OSError:
        pass  # the first boot: nothing stored yet
    print("secrets", len(_secrets))


def _name(sec_type, key):
    return str(sec_type) + ":" + binascii.hexlify(bytes(key)).decode()


def handle(event, data):
    # (True, the handler's answer) for the two secret IRQs, else (False, None).
    if event == _IRQ_SET_SECRET:
        sec_type, key, value = data
        name = _name(sec_type, key)
        if value is None:
            found = _secrets.pop(name, None) is not None
        else:
            _secrets[name] = binascii.hexlify(bytes(value)).decode()
            found = True
        with open(_PATH, "w") as f:
            json.dump(_secrets, f)
        print("stored", sec_type)
        return True, found
    if event == _IRQ_GET_SECRET:
        sec_type, index, key = data
        if key is None:  # the index'th secret of this type
            prefix = str(sec_type) + ":"
            values = [v for k, v in sorted(_secrets.items()) if k.startswith(prefix)]
            value = values[index] if index < len(values) else None
        else:
            value = _secrets.get(_name(sec_type, key))
        return True, None if value is None else binascii.unhexlify(value)
    return False, None
