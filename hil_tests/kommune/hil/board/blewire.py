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
#   BLE_ACTIVE      req   state:u8 (0 off, 1 on, 0xFF query) -> REPLY active:u8
#   BLE_CONFIG_GET  req   name:ascii -> REPLY value:json (bytes as hex strings;
#                         mac: [addr_type, "hex"])
#   BLE_CONFIG_SET  req   {name: value}:json (gap_name as a hex string)
#   BLE_ADVERTISE   req   interval_us:i32 (-1 stop) connectable:u8
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
#
# rig -> VM (events):
#   BLE_IRQ   event:u8 then the event's fields, IRQ_FORMATS[event]; GATTS_WRITE
#             is followed by the bytes the central wrote.
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

# rig -> VM
BLE_IRQ = const(0xC0)

ACTIVE_QUERY = const(0xFF)
NO_DATA = const(-1)  # adv_len/resp_len: None (keep the previous data)

# MicroPython's IRQ codes, and the struct format of each event's fields.
IRQ_CENTRAL_CONNECT = const(1)
IRQ_CENTRAL_DISCONNECT = const(2)
IRQ_GATTS_WRITE = const(3)
IRQ_GATTS_INDICATE_DONE = const(20)
IRQ_MTU_EXCHANGED = const(21)
IRQ_CONNECTION_UPDATE = const(27)

IRQ_FORMATS = {
    IRQ_CENTRAL_CONNECT: "<HB6s",  # conn_handle, addr_type, addr
    IRQ_CENTRAL_DISCONNECT: "<HB6s",
    IRQ_GATTS_WRITE: "<HH",  # conn_handle, attr_handle (+ the written bytes)
    IRQ_GATTS_INDICATE_DONE: "<HHH",  # conn_handle, value_handle, status
    IRQ_MTU_EXCHANGED: "<HH",  # conn_handle, mtu
    IRQ_CONNECTION_UPDATE: "<HHHHB",  # conn_handle, interval, latency, timeout, status
}
