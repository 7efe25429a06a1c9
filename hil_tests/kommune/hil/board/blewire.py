# The rig channel's bluetooth frames, shared by the VM side (bluetooth.py) and
# the supervisor side (kommune.hil.radio.board_ble_bridge). Frame format and
# the kind ranges reserved for bluetooth are in rigwire.py.
#
# The supervisor holds the radio (a Bumble host on the air, see
# kommune.hil.radio.board_ble) and the authoritative value store, which the
# central reads; the VM keeps a mirror of it for gatts_read (a local memory
# read on a real board): its own gatts_write/set_buffer go to both, and each
# GATTS_WRITE event carries the bytes the central wrote, which the mirror
# stores under the same buffer rules.
#
# VM -> rig ("req": answered by REPLY/FAIL; "note": no answer). Little-endian.
# (a) marks requests the rig answers only once the controller is done.
#   BLE_ACTIVE      req(a) state:u8 (0 off, 1 on, 0xFF query) -> REPLY active:u8
#   BLE_CONFIG_GET  req   name:ascii -> REPLY value:json (bytes as hex strings;
#                         mac: [addr_type, "hex"])
#   BLE_CONFIG_SET  req   {name: value}:json (gap_name as a hex string)
#   BLE_ADVERTISE   req(a) interval_us:i32 (-1 stop) connectable:u8
#                         adv_len:i16 resp_len:i16 (-1: None, keep the last)
#                         adv[adv_len] resp[resp_len]
#   BLE_REGISTER    req   services:json [[uuid, [[uuid, flags, [[uuid, flags]..]]..]]..]
#                         (uuid: int for 16/32-bit, "xxxxxxxx-xxxx-..." for 128-bit)
#                         -> REPLY handles:json [[handle, ...], ...]
#   BLE_WRITE       note  handle:u16 send_update:u8 data (gatts_write; an empty
#                         write after an append-mode gatts_read, which takes the value)
#   BLE_NOTIFY      req   conn:u16 handle:u16 has_data:u8 data
#   BLE_INDICATE    req   conn:u16 handle:u16 has_data:u8 data
#   BLE_SET_BUFFER  note  handle:u16 len:u16 append:u8
#   BLE_DISCONNECT  req   conn:u16 -> REPLY connected:u8 (gap_disconnect's bool)
#   BLE_SCAN        req(a) duration_ms:i32 (-1: None, stop) interval_us:i32
#                         window_us:i32 active:u8
#   BLE_CONNECT     req(a) addr_type:u8 addr:6 scan_duration_ms:i32
#                         min_interval_us:i32 max_interval_us:i32 (0: default);
#                         empty: gap_connect(None), cancel
#   BLE_GATTC       req   op:u8 conn:u16, then by op (GATTC_*):
#                         DISCOVER_SERVICES uuid; DISCOVER_CHARACTERISTICS
#                         start:u16 end:u16 uuid; DISCOVER_DESCRIPTORS start:u16
#                         end:u16; READ handle:u16; WRITE handle:u16 mode:u8 data;
#                         EXCHANGE_MTU. (uuid: len:u8 (0: None) then its bytes,
#                         little-endian as bytes(bluetooth.UUID))
#   BLE_PAIR        req   conn:u16
#   BLE_PASSKEY     req   conn:u16 action:u8 passkey:i32
#   BLE_ANSWER      note  ask:u16 kind:u8 (ANSWER_*) data -- the handler's return
#                         value for a BLE_ASK
#
# rig -> VM (events):
#   BLE_IRQ   event:u8 then the event's fields, laid out as IRQ_LAYOUTS[event]
#   BLE_ASK   ask:u16 event:u8 fields -- an IRQ whose return value the stack
#             uses (GET_SECRET, SET_SECRET); the VM answers with BLE_ANSWER. While
#             BLE_ACTIVE switches the radio on, the VM answers at once (as NimBLE
#             calls the handler from its own task then, e.g. to load the IRK);
#             otherwise at its next dispatch point, like any IRQ.
#
# Layout codes: H u16, B u8, b i8, i i32, A address (6 bytes), U UUID (len:u8 +
# little-endian bytes), D data (len:u16 + bytes; len 0xFFFF: None), W the bytes a
# central wrote (len:u16 + bytes; for the mirror, not part of the IRQ's tuple).
try:
    from micropython import const
except ImportError:  # CPython: const() is the identity
    const = int  # type: ignore[assignment]

# VM -> rig
BLE_ACTIVE = const(0x40)
BLE_CONFIG_GET = const(0x41)
BLE_CONFIG_SET = const(0x42)
BLE_ADVERTISE = const(0x43)
BLE_REGISTER = const(0x44)
BLE_WRITE = const(0x45)
BLE_NOTIFY = const(0x46)
BLE_INDICATE = const(0x47)
BLE_SET_BUFFER = const(0x48)
BLE_DISCONNECT = const(0x49)
BLE_SCAN = const(0x4A)
BLE_CONNECT = const(0x4B)
BLE_GATTC = const(0x4C)
BLE_PAIR = const(0x4D)
BLE_PASSKEY = const(0x4E)
BLE_ANSWER = const(0x4F)

# rig -> VM
BLE_IRQ = const(0xC0)
BLE_ASK = const(0xC1)

ACTIVE_QUERY = const(0xFF)
NO_DATA = const(-1)  # adv_len/resp_len: None (keep the previous data); scan: stop
NONE_LEN = const(0xFFFF)  # a D field that is None

# BLE_GATTC ops
GATTC_DISCOVER_SERVICES = const(1)
GATTC_DISCOVER_CHARACTERISTICS = const(2)
GATTC_DISCOVER_DESCRIPTORS = const(3)
GATTC_READ = const(4)
GATTC_WRITE = const(5)
GATTC_EXCHANGE_MTU = const(6)

# BLE_ANSWER kinds
ANSWER_NONE = const(0)  # None (or a false value)
ANSWER_TRUE = const(1)  # a true value that is not a buffer
ANSWER_BYTES = const(2)  # a buffer, its bytes follow

# MicroPython's IRQ codes (extmod/modbluetooth.h) and their fields' layout.
IRQ_CENTRAL_CONNECT = const(1)
IRQ_CENTRAL_DISCONNECT = const(2)
IRQ_GATTS_WRITE = const(3)
IRQ_SCAN_RESULT = const(5)
IRQ_SCAN_DONE = const(6)
IRQ_PERIPHERAL_CONNECT = const(7)
IRQ_PERIPHERAL_DISCONNECT = const(8)
IRQ_GATTC_SERVICE_RESULT = const(9)
IRQ_GATTC_SERVICE_DONE = const(10)
IRQ_GATTC_CHARACTERISTIC_RESULT = const(11)
IRQ_GATTC_CHARACTERISTIC_DONE = const(12)
IRQ_GATTC_DESCRIPTOR_RESULT = const(13)
IRQ_GATTC_DESCRIPTOR_DONE = const(14)
IRQ_GATTC_READ_RESULT = const(15)
IRQ_GATTC_READ_DONE = const(16)
IRQ_GATTC_WRITE_DONE = const(17)
IRQ_GATTC_NOTIFY = const(18)
IRQ_GATTC_INDICATE = const(19)
IRQ_GATTS_INDICATE_DONE = const(20)
IRQ_MTU_EXCHANGED = const(21)
IRQ_CONNECTION_UPDATE = const(27)
IRQ_ENCRYPTION_UPDATE = const(28)
IRQ_GET_SECRET = const(29)
IRQ_SET_SECRET = const(30)
IRQ_PASSKEY_ACTION = const(31)

IRQ_LAYOUTS = {
    IRQ_CENTRAL_CONNECT: "HBA",  # conn_handle, addr_type, addr
    IRQ_CENTRAL_DISCONNECT: "HBA",
    IRQ_GATTS_WRITE: "HHW",  # conn_handle, attr_handle (+ the written bytes)
    IRQ_SCAN_RESULT: "BABbD",  # addr_type, addr, adv_type, rssi, adv_data
    IRQ_SCAN_DONE: "",
    IRQ_PERIPHERAL_CONNECT: "HBA",
    IRQ_PERIPHERAL_DISCONNECT: "HBA",
    IRQ_GATTC_SERVICE_RESULT: "HHHU",  # conn_handle, start_handle, end_handle, uuid
    IRQ_GATTC_SERVICE_DONE: "HH",  # conn_handle, status
    IRQ_GATTC_CHARACTERISTIC_RESULT: "HHHBU",  # conn, end_handle, value_handle, props, uuid
    IRQ_GATTC_CHARACTERISTIC_DONE: "HH",
    IRQ_GATTC_DESCRIPTOR_RESULT: "HHU",  # conn_handle, dsc_handle, uuid
    IRQ_GATTC_DESCRIPTOR_DONE: "HH",
    IRQ_GATTC_READ_RESULT: "HHD",  # conn_handle, value_handle, char_data
    IRQ_GATTC_READ_DONE: "HHH",  # conn_handle, value_handle, status
    IRQ_GATTC_WRITE_DONE: "HHH",
    IRQ_GATTC_NOTIFY: "HHD",  # conn_handle, value_handle, notify_data
    IRQ_GATTC_INDICATE: "HHD",
    IRQ_GATTS_INDICATE_DONE: "HHB",  # conn_handle, value_handle, status
    IRQ_MTU_EXCHANGED: "HH",  # conn_handle, mtu
    IRQ_CONNECTION_UPDATE: "HHHHB",  # conn_handle, interval, latency, timeout, status
    IRQ_ENCRYPTION_UPDATE: "HBBBB",  # conn, encrypted, authenticated, bonded, key_size
    IRQ_GET_SECRET: "BBD",  # sec_type, index, key (None: the index'th of the type)
    IRQ_SET_SECRET: "BDD",  # sec_type, key, value (None: delete)
    IRQ_PASSKEY_ACTION: "HBi",  # conn_handle, action, passkey
}
