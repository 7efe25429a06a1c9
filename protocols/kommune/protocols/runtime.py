# Node-runtime messages (types 0x01-0x1F), common to every node kind:
# ack/nack, identity, health, logs, time, config, groups (OTA: ota.py).
#
# Ack/nack: a frame sent with FLAG_ACK_REQUESTED is answered by Ack or Nack
# carrying its seq. The sender retries unanswered frames with the same seq
# (and FLAG_RETRY); the receiver acts on a (src, seq) once and answers a retry
# with the answer it gave before (see dedup.RecentFrames), so retries are
# idempotent. Nack codes below say whether a retry can help (NACK_BUSY) or not.
from kommune.protocols.errors import (
    BAD_LENGTH,
    BAD_VALUE,
    TOO_LONG,
    TRUNCATED,
    UNKNOWN_TYPE,
    ProtocolError,
)
from kommune.protocols.frame import MAX_GROUP, MAX_PAYLOAD
from kommune.protocols.message import (
    BLOB,
    I16,
    TAIL,
    U8,
    U16,
    U16_LIST,
    U32,
    Message,
    register,
)

ACK = 0x01
NACK = 0x02
HELLO = 0x03
STATUS = 0x04
LOG = 0x05
TIME_REQUEST = 0x06
TIME_SYNC = 0x07
CONFIG_SET = 0x08
CONFIG_GET = 0x09
CONFIG_VALUE = 0x0A
# 0x0B-0x0D: OTA_MANIFEST, OTA_CHUNK, OTA_STATUS in ota.py
GROUPS = 0x0E
REQUEST = 0x0F

# Nack codes. 0x01-0x0F: the frame was understood but its payload was not.
NACK_UNKNOWN_TYPE = 0x01
NACK_TRUNCATED = 0x02
NACK_TOO_LONG = 0x03
NACK_BAD_LENGTH = 0x04
NACK_BAD_VALUE = 0x05
NACK_REJECTED = 0x06  # any other protocol check failed
# 0x10-0xFE: the node could not or would not act on a valid message.
NACK_NOT_SUPPORTED = 0x10  # valid, but not for this kind of node
NACK_BUSY = 0x11  # transient: retry later with the same seq
NACK_UNKNOWN_KEY = 0x12  # config key
NACK_OTA_UNKNOWN_TRANSFER = 0x13
NACK_OTA_BAD_OFFSET = 0x14  # resume from OtaStatus.next_offset
NACK_OTA_BAD_DIGEST = 0x15
NACK_STORAGE = 0x16  # flash write failed
NACK_NO_MEMORY = 0x17
NACK_INTERNAL = 0xFF

_NACK_NAMES = {
    NACK_UNKNOWN_TYPE: UNKNOWN_TYPE,
    NACK_TRUNCATED: TRUNCATED,
    NACK_TOO_LONG: TOO_LONG,
    NACK_BAD_LENGTH: BAD_LENGTH,
    NACK_BAD_VALUE: BAD_VALUE,
    NACK_REJECTED: "rejected",
    NACK_NOT_SUPPORTED: "not_supported",
    NACK_BUSY: "busy",
    NACK_UNKNOWN_KEY: "unknown_key",
    NACK_OTA_UNKNOWN_TRANSFER: "ota_unknown_transfer",
    NACK_OTA_BAD_OFFSET: "ota_bad_offset",
    NACK_OTA_BAD_DIGEST: "ota_bad_digest",
    NACK_STORAGE: "storage",
    NACK_NO_MEMORY: "no_memory",
    NACK_INTERNAL: "internal",
}
_REASON_CODES = {
    UNKNOWN_TYPE: NACK_UNKNOWN_TYPE,
    TRUNCATED: NACK_TRUNCATED,
    TOO_LONG: NACK_TOO_LONG,
    BAD_LENGTH: NACK_BAD_LENGTH,
    BAD_VALUE: NACK_BAD_VALUE,
}


def nack_name(code: int) -> str:
    # A stable name for a nack code; unknown codes still get one.
    return _NACK_NAMES.get(code, "code_%d" % code)


def nack_code(err: ProtocolError) -> int:
    # The nack code answering a payload that raised `err`.
    return _REASON_CODES.get(err.reason, NACK_REJECTED)


# Hello.kind
KIND_LOCK = 1
KIND_LAMP = 2
KIND_PARKING = 3

# Hello.reset_cause
RESET_UNKNOWN = 0
RESET_POWER_ON = 1
RESET_HARD = 2
RESET_WATCHDOG = 3
RESET_DEEPSLEEP = 4
RESET_SOFT = 5
RESET_BROWNOUT = 6

# LogRecord.level
LOG_DEBUG = 1
LOG_INFO = 2
LOG_WARNING = 3
LOG_ERROR = 4
LOG_CRITICAL = 5

MAX_GROUPS = 8  # groups one node can belong to
MAX_LOG_TEXT = MAX_PAYLOAD - 7
MAX_CONFIG_VALUE = MAX_PAYLOAD - 1
MAX_UID = 16


class Ack(Message):
    TYPE = ACK
    _LAYOUT = (("acked_seq", U16, 0, 0xFFFF),)

    def __init__(self, *, acked_seq: int = 0) -> None:
        self.acked_seq = acked_seq


class Nack(Message):
    # Any code decodes (see nack_name), so older nodes can read newer codes.
    TYPE = NACK
    _LAYOUT = (("acked_seq", U16, 0, 0xFFFF), ("code", U8, 0, 0xFF))

    def __init__(self, *, acked_seq: int = 0, code: int = NACK_INTERNAL) -> None:
        self.acked_seq = acked_seq
        self.code = code


class Hello(Message):
    # Node -> edge after every boot: who it is, what it runs, why it reset.
    TYPE = HELLO
    _LAYOUT = (
        ("kind", U8, KIND_LOCK, KIND_PARKING),
        ("hw_rev", U8, 0, 0xFF),
        ("fw_major", U8, 0, 0xFF),
        ("fw_minor", U8, 0, 0xFF),
        ("fw_patch", U8, 0, 0xFF),
        ("reset_cause", U8, 0, 0xFF),
        ("boot_count", U16, 0, 0xFFFF),
        ("uid", BLOB, 0, MAX_UID),
    )

    def __init__(
        self,
        *,
        kind: int = KIND_LAMP,
        hw_rev: int = 0,
        fw_major: int = 0,
        fw_minor: int = 0,
        fw_patch: int = 0,
        reset_cause: int = RESET_UNKNOWN,
        boot_count: int = 0,
        uid: bytes = b"",
    ) -> None:
        self.kind = kind
        self.hw_rev = hw_rev
        self.fw_major = fw_major
        self.fw_minor = fw_minor
        self.fw_patch = fw_patch
        self.reset_cause = reset_cause
        self.boot_count = boot_count
        self.uid = uid


class Status(Message):
    # Node -> edge: health, periodically or on Request(STATUS).
    TYPE = STATUS
    _LAYOUT = (
        ("uptime_s", U32, 0, 0xFFFFFFFF),
        ("heap_free", U32, 0, 0xFFFFFFFF),
        ("heap_min_free", U32, 0, 0xFFFFFFFF),
        ("supply_mv", U16, 0, 0xFFFF),
        ("temp_c_x10", I16, -0x8000, 0x7FFF),
        ("rx_ok", U16, 0, 0xFFFF),
        ("rx_bad", U16, 0, 0xFFFF),
        ("tx_retries", U16, 0, 0xFFFF),
    )

    def __init__(
        self,
        *,
        uptime_s: int = 0,
        heap_free: int = 0,
        heap_min_free: int = 0,
        supply_mv: int = 0,
        temp_c_x10: int = 0,
        rx_ok: int = 0,
        rx_bad: int = 0,
        tx_retries: int = 0,
    ) -> None:
        self.uptime_s = uptime_s
        self.heap_free = heap_free
        self.heap_min_free = heap_min_free
        self.supply_mv = supply_mv
        self.temp_c_x10 = temp_c_x10
        self.rx_ok = rx_ok
        self.rx_bad = rx_bad
        self.tx_retries = tx_retries


class LogRecord(Message):
    # One record of the node's log ring; `index` counts records (wraps), so
    # the edge sees gaps. Text is bytes (UTF-8 by convention), never decoded here.
    TYPE = LOG
    _LAYOUT = (
        ("index", U16, 0, 0xFFFF),
        ("level", U8, LOG_DEBUG, LOG_CRITICAL),
        ("uptime_ms", U32, 0, 0xFFFFFFFF),
        ("text", TAIL, 0, MAX_LOG_TEXT),
    )

    def __init__(
        self, *, index: int = 0, level: int = LOG_INFO, uptime_ms: int = 0, text: bytes = b""
    ) -> None:
        self.index = index
        self.level = level
        self.uptime_ms = uptime_ms
        self.text = text


class TimeRequest(Message):
    # Node -> edge: "what time is it?", stamped with the node's ms counter.
    TYPE = TIME_REQUEST
    _LAYOUT = (("node_ms", U32, 0, 0xFFFFFFFF),)

    def __init__(self, *, node_ms: int = 0) -> None:
        self.node_ms = node_ms


class TimeSync(Message):
    # Edge -> node: wall-clock time (Unix seconds + ms) when sent, echoing the
    # request's node_ms so the node can halve the round trip.
    TYPE = TIME_SYNC
    _LAYOUT = (
        ("node_ms", U32, 0, 0xFFFFFFFF),
        ("unix_s", U32, 0, 0xFFFFFFFF),
        ("ms", U16, 0, 999),
    )

    def __init__(self, *, node_ms: int = 0, unix_s: int = 0, ms: int = 0) -> None:
        self.node_ms = node_ms
        self.unix_s = unix_s
        self.ms = ms


class ConfigSet(Message):
    # Edge -> node: set config `key` (firmware-defined) to `value` bytes.
    TYPE = CONFIG_SET
    _LAYOUT = (("key", U8, 0, 0xFF), ("value", TAIL, 0, MAX_CONFIG_VALUE))

    def __init__(self, *, key: int = 0, value: bytes = b"") -> None:
        self.key = key
        self.value = value


class ConfigGet(Message):
    TYPE = CONFIG_GET
    _LAYOUT = (("key", U8, 0, 0xFF),)

    def __init__(self, *, key: int = 0) -> None:
        self.key = key


class ConfigValue(Message):
    # Node -> edge: answer to ConfigGet.
    TYPE = CONFIG_VALUE
    _LAYOUT = (("key", U8, 0, 0xFF), ("value", TAIL, 0, MAX_CONFIG_VALUE))

    def __init__(self, *, key: int = 0, value: bytes = b"") -> None:
        self.key = key
        self.value = value


class Groups(Message):
    # Edge -> node: the groups (0..4094) whose frames this node takes,
    # replacing the previous set; see frame.accepts().
    TYPE = GROUPS
    _LAYOUT = (("groups", U16_LIST, 0, MAX_GROUPS),)

    def __init__(self, *, groups: list[int] | None = None) -> None:
        self.groups = [] if groups is None else groups

    def _check(self) -> None:
        for g in self.groups:
            if not 0 <= g <= MAX_GROUP:
                raise ProtocolError(BAD_VALUE, "group %d not in 0..%d" % (g, MAX_GROUP))


class Request(Message):
    # Edge -> node: send a message of type msg_type now (Hello, Status,
    # ota.OtaStatus, lamp.EnergyReport, parking.Heartbeat, ...).
    TYPE = REQUEST
    _LAYOUT = (("msg_type", U8, 1, 0xFF),)

    def __init__(self, *, msg_type: int = STATUS) -> None:
        self.msg_type = msg_type


register(
    Ack,
    Nack,
    Hello,
    Status,
    LogRecord,
    TimeRequest,
    TimeSync,
    ConfigSet,
    ConfigGet,
    ConfigValue,
    Groups,
    Request,
)
