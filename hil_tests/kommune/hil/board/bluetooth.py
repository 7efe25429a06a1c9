# MicroPython's `bluetooth` module for the emulated board, installed as
# sys.modules["bluetooth"] by start.py. BLE in the peripheral role (GAP
# advertiser, GATT server: what the firmware uses), carried over the rig
# channel (blewire.py) to the supervisor's Bumble host on the virtual air.
#
# As on a real board, IRQs run as soft IRQs at the VM's dispatch points
# (rig.py), addresses are 6 bytes MSB first, and gatts_read is local: this
# module keeps a mirror of the value store (see blewire.py). Not here: the
# central role (gap_scan, gap_connect, gattc_*), L2CAP, pairing.
import json
import struct

from . import blewire
from . import rig as _rig

try:
    from micropython import const
except ImportError:  # CPython: const() is the identity
    const = int  # type: ignore[assignment]

FLAG_READ = const(0x0002)
FLAG_WRITE_NO_RESPONSE = const(0x0004)
FLAG_WRITE = const(0x0008)
FLAG_NOTIFY = const(0x0010)
FLAG_INDICATE = const(0x0020)

_DEFAULT_BUFFER = const(20)  # MP_BLUETOOTH_DEFAULT_ATTR_LEN
_ENODEV = const(19)
_EINVAL = const(22)
_ON = b"\x01"
_OFF = b"\x00"


class UUID:
    # 16-, 32- or 128-bit; stored little-endian as in MicroPython, and like
    # MicroPython's, bytes(uuid) gives those bytes (here through iteration).
    def __init__(self, value: object) -> None:
        if isinstance(value, UUID):
            data = value._data
        elif isinstance(value, int):
            if 0 <= value <= 0xFFFF:
                data = value.to_bytes(2, "little")
            elif 0 <= value <= 0xFFFFFFFF:
                data = value.to_bytes(4, "little")
            else:
                raise ValueError("invalid UUID")
        elif isinstance(value, str):
            digits = value.replace("-", "")
            if len(digits) not in (4, 8, 32):
                raise ValueError("invalid UUID")
            data = bytes(reversed(bytes.fromhex(digits)))
        else:
            data = bytes(value)  # type: ignore[call-overload]
            if len(data) not in (2, 4, 16):
                raise ValueError("invalid UUID")
        self._data: bytes = data

    def __iter__(self) -> object:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UUID) and other._data == self._data

    def __hash__(self) -> int:
        return hash(self._data)

    def _wire(self) -> object:
        # JSON for the rig: an int (16/32-bit) or the canonical 128-bit string.
        if len(self._data) < 16:
            return int.from_bytes(self._data, "little")
        h = bytes(reversed(self._data)).hex()
        return "%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])

    def __repr__(self) -> str:
        wire = self._wire()
        if isinstance(wire, int):
            return "UUID(0x%04x)" % wire
        return "UUID('%s')" % wire


def _uuid(value: object) -> object:
    if not isinstance(value, UUID):
        raise ValueError("invalid UUID")
    return value._wire()


_ble = None
_active = False
_handler = None
_values: dict = {}  # handle -> [data: bytes, size: int, append: bool]


def _rig_call(kind: int, payload: bytes = b"") -> bytes:
    return _rig.get().call(kind, payload)


def _rig_send(kind: int, payload: bytes = b"") -> None:
    _rig.get().send(kind, payload)


def _on_irq(payload: bytes) -> None:
    # A rig event: update the mirror, then run the firmware's handler.
    event = payload[0]
    fmt = blewire.IRQ_FORMATS.get(event)
    if fmt is None or not _active:
        return
    data = struct.unpack_from(fmt, payload, 1)
    if event == blewire.IRQ_GATTS_WRITE:
        entry = _values.get(data[1])
        if entry is not None:
            written = payload[1 + struct.calcsize(fmt) :]
            entry[0] = ((entry[0] + written) if entry[2] else written)[: entry[1]]
    if _handler is not None:
        _handler(event, data)


def _require_active() -> None:
    if not _active:
        raise OSError(_ENODEV)


def _entry(value_handle: int) -> list:
    _require_active()
    entry = _values.get(value_handle)
    if entry is None:
        raise OSError(_EINVAL)
    return entry


def _data(data: object) -> bytes:
    return data.encode() if isinstance(data, str) else bytes(data)  # type: ignore[call-overload]


class BLE:
    def __new__(cls) -> "BLE":
        # The singleton, as MicroPython's BLE() returns.
        global _ble
        if _ble is None:
            _ble = object.__new__(cls)
        return _ble

    def active(self, state: object = None) -> bool:
        global _active
        if state is not None:
            _values.clear()
            reply = _rig_call(blewire.BLE_ACTIVE, _ON if state else _OFF)
            _active = bool(reply[0])
            if _active:
                _rig.get().on(blewire.BLE_IRQ, _on_irq)
        return _active

    def config(self, *names: str, **values: object) -> object:
        if values:
            if names:
                raise TypeError("can't specify pos and kw args")
            if "gap_name" in values:
                values["gap_name"] = _data(values["gap_name"]).hex()
            _rig_call(blewire.BLE_CONFIG_SET, json.dumps(values).encode())
            return None
        if len(names) != 1:
            raise TypeError("must query one param")
        value = json.loads(_rig_call(blewire.BLE_CONFIG_GET, names[0].encode()))
        if names[0] == "mac":
            return (value[0], bytes.fromhex(value[1]))
        if names[0] == "gap_name":
            return bytes.fromhex(value)
        return value

    def irq(self, handler: object) -> None:
        global _handler
        if handler is not None and not callable(handler):
            raise ValueError("invalid handler")
        _handler = handler

    def gap_advertise(
        self,
        interval_us: object,
        adv_data: object = None,
        *,
        resp_data: object = None,
        connectable: bool = True,
    ) -> None:
        adv = b"" if adv_data is None else _data(adv_data)
        resp = b"" if resp_data is None else _data(resp_data)
        head = struct.pack(
            "<iBhh",
            -1 if interval_us is None else interval_us,
            1 if connectable else 0,
            blewire.NO_DATA if adv_data is None else len(adv),
            blewire.NO_DATA if resp_data is None else len(resp),
        )
        _rig_call(blewire.BLE_ADVERTISE, head + adv + resp)

    def gap_disconnect(self, conn_handle: int) -> bool:
        return _rig_call(blewire.BLE_DISCONNECT, struct.pack("<H", conn_handle))[0] == 1

    def gatts_register_services(self, services_definition: object) -> tuple:
        # Checked here as MicroPython does (UUID objects, tuple shapes); the
        # model checks flags. The value store starts empty, 20 bytes a value.
        wire = []
        for service in services_definition:  # type: ignore[attr-defined]
            uuid, characteristics = service
            chars = []
            for characteristic in characteristics:
                if not 2 <= len(characteristic) <= 3:
                    raise ValueError("invalid characteristic tuple")
                descriptors = []
                if len(characteristic) == 3:
                    for d_uuid, d_flags in characteristic[2]:
                        descriptors.append([_uuid(d_uuid), d_flags])
                chars.append([_uuid(characteristic[0]), characteristic[1], descriptors])
            wire.append([_uuid(uuid), chars])
        reply = json.loads(_rig_call(blewire.BLE_REGISTER, json.dumps(wire).encode()))
        _values.clear()
        for handles in reply:
            for handle in handles:
                _values[handle] = [b"", _DEFAULT_BUFFER, False]
        return tuple(tuple(handles) for handles in reply)

    def gatts_read(self, value_handle: int) -> bytes:
        entry = _entry(value_handle)
        value = entry[0]
        if entry[2] and value:
            # Append mode: the read takes the value, in the rig's store too.
            entry[0] = b""
            _rig_send(blewire.BLE_WRITE, struct.pack("<HB", value_handle, 0))
        return value

    def gatts_write(self, value_handle: int, data: object, send_update: bool = False) -> None:
        entry = _entry(value_handle)
        value = _data(data)
        entry[0] = value
        entry[1] = max(entry[1], len(value))
        _rig_send(
            blewire.BLE_WRITE, struct.pack("<HB", value_handle, 1 if send_update else 0) + value
        )

    def gatts_notify(self, conn_handle: int, value_handle: int, data: object = None) -> None:
        self._send(blewire.BLE_NOTIFY, conn_handle, value_handle, data)

    def gatts_indicate(self, conn_handle: int, value_handle: int, data: object = None) -> None:
        self._send(blewire.BLE_INDICATE, conn_handle, value_handle, data)

    def _send(self, kind: int, conn_handle: int, value_handle: int, data: object) -> None:
        _entry(value_handle)
        if data is None:
            payload = struct.pack("<HHB", conn_handle, value_handle, 0)
        else:
            payload = struct.pack("<HHB", conn_handle, value_handle, 1) + _data(data)
        _rig_call(kind, payload)

    def gatts_set_buffer(self, value_handle: int, len: int, append: bool = False) -> None:
        entry = _entry(value_handle)
        if not 0 <= len <= 0xFFFF:
            raise OSError(_EINVAL)
        entry[0] = b""
        entry[1] = len
        entry[2] = bool(append)
        _rig_send(
            blewire.BLE_SET_BUFFER, struct.pack("<HHB", value_handle, len, 1 if append else 0)
        )
