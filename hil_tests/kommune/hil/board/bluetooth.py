# MicroPython's `bluetooth` module for the emulated board, installed as
# sys.modules["bluetooth"] by bootseq.py: the documented API of an ESP32
# (NimBLE) build -- broadcaster, observer, peripheral and central roles, GATT
# server and client, pairing and bonding -- carried over the rig channel
# (blewire.py) to the supervisor's Bumble host on the virtual air. Not here:
# L2CAP channels (not on the ESP32 port), hci_cmd.
#
# As on a board, IRQs run at the VM's dispatch points (rig.py) and their
# memoryviews are only valid during the handler (bleirq.py); a handler that
# raises is reported and unregistered, as on the ESP32 (synchronous events).
# Addresses are 6 bytes MSB first. gatts_read is local: this module keeps a
# mirror of the value store (see blewire.py).
import json
import struct
import sys

from . import bleirq, blewire
from . import rig as _rig
from .bleuuid import UUID, raw, wire

try:
    from micropython import const
except ImportError:  # CPython: const() is the identity
    const = int  # type: ignore[assignment]

__all__ = ["BLE", "UUID"]

FLAG_READ = const(0x0002)
FLAG_WRITE_NO_RESPONSE = const(0x0004)
FLAG_WRITE = const(0x0008)
FLAG_NOTIFY = const(0x0010)
FLAG_INDICATE = const(0x0020)

_DEFAULT_BUFFER = const(20)  # MP_BLUETOOTH_DEFAULT_ATTR_LEN
_CONNECT_SCAN_MS = const(2000)  # MP_BLUETOOTH_CONNECT_DEFAULT_SCAN_DURATION_MS
_ENODEV = const(19)
_EINVAL = const(22)
_ON = b"\x01"
_OFF = b"\x00"
_BOOLEAN_CONFIG = ("bond", "mitm", "le_secure")

_ble = None
_active = False
_starting = False  # active(True) in progress: IRQs (loading secrets) already run
_handler = None
_values: dict = {}  # handle -> [data: bytes, size: int, append: bool]
_MISSING = object()


def _call(kind: int, payload: bytes = b"") -> bytes:
    return _rig.get().call(kind, payload)


def _send(kind: int, payload: bytes = b"") -> None:
    _rig.get().send(kind, payload)


def _call_answering(kind: int, payload: bytes) -> bytes:
    # rig.call, but a BLE_ASK is answered at once instead of after the reply:
    # while the radio starts, NimBLE calls the IRQ handler from its own task.
    return _rig.get().call(kind, payload, blewire.BLE_ASK, _on_ask)


def _dispatch(body: bytes, at: int) -> object:
    # Run the firmware's handler for the IRQ at body[at]; its return value.
    global _handler
    event = body[at]
    layout = blewire.IRQ_LAYOUTS.get(event)
    if layout is None or not (_active or _starting):
        return None
    buf = bytearray(body)
    data, written, uuids = bleirq.decode(layout, buf, at + 1)
    if event == blewire.IRQ_GATTS_WRITE:
        entry = _values.get(data[1])
        if entry is not None:
            entry[0] = ((entry[0] + written) if entry[2] else written)[: entry[1]]
    result = None
    handler = _handler
    if handler is not None:
        try:
            result = handler(event, data)
        except Exception as e:
            print("Unhandled exception in IRQ callback handler")
            sys.print_exception(e)
            _handler = None
    if isinstance(result, (bytes, bytearray, memoryview)):
        result = bytes(result)  # before the event's buffers are wiped
    bleirq.wipe(buf, uuids)
    return result


def _on_irq(payload: bytes) -> None:
    _dispatch(payload, 0)


def _on_ask(payload: bytes) -> None:
    result = _dispatch(payload, 2)
    if isinstance(result, bytes):
        answer = bytes((blewire.ANSWER_BYTES,)) + result
    else:
        answer = bytes((blewire.ANSWER_TRUE if result else blewire.ANSWER_NONE,))
    _send(blewire.BLE_ANSWER, payload[:2] + answer)


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

    # -- configuration ----------------------------------------------------------

    def active(self, state: object = None) -> bool:
        global _active, _starting
        if state is not None:
            r = _rig.get()
            r.on(blewire.BLE_IRQ, _on_irq)
            r.on(blewire.BLE_ASK, _on_ask)
            _values.clear()
            _active = False
            _starting = bool(state)
            try:
                reply = _call_answering(blewire.BLE_ACTIVE, _ON if state else _OFF)
            finally:
                _starting = False
            _active = bool(reply[0])
        return _active

    def config(self, *names: str, **values: object) -> object:
        if values:
            if names:
                raise TypeError("can't specify pos and kw args")
            for name in _BOOLEAN_CONFIG:
                if name in values:
                    values[name] = bool(values[name])
            if "gap_name" in values:
                values["gap_name"] = _data(values["gap_name"]).hex()
            _call(blewire.BLE_CONFIG_SET, json.dumps(values).encode())
            return None
        if len(names) != 1:
            raise TypeError("must query one param")
        value = json.loads(_call(blewire.BLE_CONFIG_GET, names[0].encode()))
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

    # -- GAP ------------------------------------------------------------------------

    def gap_advertise(
        self,
        interval_us: object = 500_000,
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
        _call(blewire.BLE_ADVERTISE, head + adv + resp)

    def gap_scan(
        self,
        duration_ms: object = 0,
        interval_us: int = 1280000,
        window_us: int = 11250,
        active: bool = False,
    ) -> None:
        # None stops; 0 scans until stopped. The defaults: NimBLE's background scan.
        duration = blewire.NO_DATA if duration_ms is None else int(duration_ms)  # type: ignore[call-overload]
        payload = struct.pack("<iiiB", duration, interval_us, window_us, 1 if active else 0)
        _call(blewire.BLE_SCAN, payload)

    def gap_connect(
        self,
        addr_type: object,
        addr: object = _MISSING,
        scan_duration_ms: object = None,
        min_conn_interval_us: object = None,
        max_conn_interval_us: object = None,
    ) -> None:
        if addr is _MISSING:
            if addr_type is None:
                _call(blewire.BLE_CONNECT)  # cancel the attempt in progress
                return
            raise TypeError("invalid addr")
        address = bytes(addr)  # type: ignore[call-overload]
        if len(address) != 6:
            raise ValueError("invalid addr")
        payload = struct.pack("<B", addr_type) + address
        payload += struct.pack(
            "<iii",
            _CONNECT_SCAN_MS if scan_duration_ms is None else scan_duration_ms,
            0 if min_conn_interval_us is None else min_conn_interval_us,
            0 if max_conn_interval_us is None else max_conn_interval_us,
        )
        _call(blewire.BLE_CONNECT, payload)

    def gap_disconnect(self, conn_handle: int) -> bool:
        return _call(blewire.BLE_DISCONNECT, struct.pack("<H", conn_handle))[0] == 1

    def gap_pair(self, conn_handle: int) -> None:
        _call(blewire.BLE_PAIR, struct.pack("<H", conn_handle))

    def gap_passkey(self, conn_handle: int, action: int, passkey: int) -> None:
        _call(blewire.BLE_PASSKEY, struct.pack("<HBi", conn_handle, action, passkey))

    # -- GATT server --------------------------------------------------------------

    def gatts_register_services(self, services_definition: object) -> tuple:
        # Checked here as MicroPython does (UUID objects, tuple shapes); the
        # model takes the flags. The value store starts empty, 20 bytes a value.
        definition = []
        for service in services_definition:  # type: ignore[attr-defined]
            uuid, characteristics = service
            chars = []
            for characteristic in characteristics:
                if not 2 <= len(characteristic) <= 3:
                    raise ValueError("invalid characteristic tuple")
                descriptors = []
                if len(characteristic) == 3:
                    for d_uuid, d_flags in characteristic[2]:
                        descriptors.append([wire(d_uuid), d_flags])
                chars.append([wire(characteristic[0]), characteristic[1], descriptors])
            definition.append([wire(uuid), chars])
        reply = json.loads(_call(blewire.BLE_REGISTER, json.dumps(definition).encode()))
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
            _send(blewire.BLE_WRITE, struct.pack("<HB", value_handle, 0))
        return value

    def gatts_write(self, value_handle: int, data: object, send_update: bool = False) -> int:
        entry = _entry(value_handle)
        value = _data(data)
        entry[0] = value
        entry[1] = max(entry[1], len(value))
        _send(blewire.BLE_WRITE, struct.pack("<HB", value_handle, 1 if send_update else 0) + value)
        return len(value)

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
        _call(kind, payload)

    def gatts_set_buffer(self, value_handle: int, len: int, append: bool = False) -> None:
        entry = _entry(value_handle)
        if not 0 <= len <= 0xFFFF:
            raise OSError(_EINVAL)
        entry[0] = b""
        entry[1] = len
        entry[2] = bool(append)
        _send(blewire.BLE_SET_BUFFER, struct.pack("<HHB", value_handle, len, 1 if append else 0))

    # -- GATT client --------------------------------------------------------------

    def gattc_discover_services(self, conn_handle: int, uuid: object = None) -> None:
        self._gattc(blewire.GATTC_DISCOVER_SERVICES, conn_handle, raw(uuid))

    def gattc_discover_characteristics(
        self, conn_handle: int, start_handle: int, end_handle: int, uuid: object = None
    ) -> None:
        head = struct.pack("<HH", start_handle, end_handle)
        self._gattc(blewire.GATTC_DISCOVER_CHARACTERISTICS, conn_handle, head + raw(uuid))

    def gattc_discover_descriptors(
        self, conn_handle: int, start_handle: int, end_handle: int
    ) -> None:
        head = struct.pack("<HH", start_handle, end_handle)
        self._gattc(blewire.GATTC_DISCOVER_DESCRIPTORS, conn_handle, head)

    def gattc_read(self, conn_handle: int, value_handle: int) -> None:
        self._gattc(blewire.GATTC_READ, conn_handle, struct.pack("<H", value_handle))

    def gattc_write(self, conn_handle: int, value_handle: int, data: object, mode: int = 0) -> None:
        head = struct.pack("<HB", value_handle, mode)
        self._gattc(blewire.GATTC_WRITE, conn_handle, head + _data(data))

    def gattc_exchange_mtu(self, conn_handle: int) -> None:
        self._gattc(blewire.GATTC_EXCHANGE_MTU, conn_handle, b"")

    def _gattc(self, op: int, conn_handle: int, fields: bytes) -> None:
        _call(blewire.BLE_GATTC, struct.pack("<BH", op, conn_handle) + fields)
