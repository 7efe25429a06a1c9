# OTA over the node link (types 0x0B-0x0D, in the node-runtime range).
#
# The edge announces a firmware bundle with OtaManifest (ack requested), then
# sends it in order in OtaChunks, each acked. After a gap or a reboot the
# node's OtaStatus.next_offset says where to resume (a chunk elsewhere gets
# Nack NACK_OTA_BAD_OFFSET). With all bundle_size bytes in, the node checks
# the SHA-256, then the bundle's own Ed25519 signature, and stages it.
from kommune.protocols.frame import MAX_PAYLOAD
from kommune.protocols.message import RAW, TAIL, U8, U16, U32, Message, register

OTA_MANIFEST = 0x0B
OTA_CHUNK = 0x0C
OTA_STATUS = 0x0D

# OtaStatus.state
OTA_IDLE = 0
OTA_RECEIVING = 1
OTA_VERIFYING = 2
OTA_STAGED = 3  # verified, activates on the next reset
OTA_FAILED = 4

SHA256_SIZE = 32
MAX_CHUNK = MAX_PAYLOAD - 6  # OtaChunk data after transfer_id and offset


class OtaManifest(Message):
    # Edge -> node: a firmware bundle of bundle_size bytes follows in OtaChunks of
    # at most chunk_size bytes; sha256 covers the whole bundle. The bundle's
    # own Ed25519 signature is checked by the node before it activates it.
    TYPE = OTA_MANIFEST
    _LAYOUT = (
        ("transfer_id", U16, 0, 0xFFFF),
        ("fw_major", U8, 0, 0xFF),
        ("fw_minor", U8, 0, 0xFF),
        ("fw_patch", U8, 0, 0xFF),
        ("bundle_size", U32, 1, 0xFFFFFFFF),
        ("chunk_size", U8, 1, MAX_CHUNK),
        ("sha256", RAW, SHA256_SIZE, SHA256_SIZE),
    )

    def __init__(
        self,
        *,
        transfer_id: int = 0,
        fw_major: int = 0,
        fw_minor: int = 0,
        fw_patch: int = 0,
        bundle_size: int = 1,
        chunk_size: int = MAX_CHUNK,
        sha256: bytes = bytes(SHA256_SIZE),
    ) -> None:
        self.transfer_id = transfer_id
        self.fw_major = fw_major
        self.fw_minor = fw_minor
        self.fw_patch = fw_patch
        self.bundle_size = bundle_size
        self.chunk_size = chunk_size
        self.sha256 = sha256


class OtaChunk(Message):
    # Edge -> node: bundle bytes [offset, offset + len(data)).
    TYPE = OTA_CHUNK
    _LAYOUT = (
        ("transfer_id", U16, 0, 0xFFFF),
        ("offset", U32, 0, 0xFFFFFFFF),
        ("data", TAIL, 1, MAX_CHUNK),
    )

    def __init__(self, *, transfer_id: int = 0, offset: int = 0, data: bytes = b"\x00") -> None:
        self.transfer_id = transfer_id
        self.offset = offset
        self.data = data


class OtaStatus(Message):
    # Node -> edge: where a transfer stands; next_offset is where to resume.
    TYPE = OTA_STATUS
    _LAYOUT = (
        ("transfer_id", U16, 0, 0xFFFF),
        ("state", U8, OTA_IDLE, OTA_FAILED),
        ("next_offset", U32, 0, 0xFFFFFFFF),
    )

    def __init__(
        self, *, transfer_id: int = 0, state: int = OTA_IDLE, next_offset: int = 0
    ) -> None:
        self.transfer_id = transfer_id
        self.state = state
        self.next_offset = next_offset


register(OtaManifest, OtaChunk, OtaStatus)
