# The one error type of the protocol layer, with a short machine-readable reason.
#
# Decoders raise only ProtocolError: never IndexError, struct.error, or a
# MemoryError from a length field. `reason` is one of the constants below (a
# stable identifier the golden vectors and nack codes use); `detail` is free
# text for a human.

TRUNCATED = "truncated"  # fewer bytes than the format needs
TOO_LONG = "too_long"  # more bytes than the format allows
BAD_LENGTH = "bad_length"  # a length field disagrees with the data
BAD_VERSION = "bad_version"  # protocol version this side does not speak
BAD_CRC = "bad_crc"  # checksum mismatch
BAD_ENCODING = "bad_encoding"  # framing/escape layer violated (e.g. COBS)
UNKNOWN_TYPE = "unknown_type"  # message type not defined
BAD_VALUE = "bad_value"  # a field outside its allowed range
BAD_TAG = "bad_tag"  # MAC/tag did not verify
EXPIRED = "expired"  # outside the validity window (after)
NOT_YET_VALID = "not_yet_valid"  # outside the validity window (before)
WRONG_LOCK = "wrong_lock"  # token or message for another device
REVOKED = "revoked"  # revocation epoch is older than the device's
REPLAY = "replay"  # nonce/counter already seen
RATE_LIMITED = "rate_limited"  # too many failures; try later
TOO_LATE = "too_late"  # response outside the relay/latency bound
NO_RIGHT = "no_right"  # token lacks the right for this operation


class ProtocolError(ValueError):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        if self.detail:
            return self.reason + ": " + self.detail
        return self.reason


# Appended by the lock protocol (handshake and audit chain).
BAD_PROOF = "bad_proof"  # genuine token, but the holder's proof did not verify
GAP = "gap"  # a sequence number is missing (audit chain)
OUT_OF_ORDER = "out_of_order"  # entries arrived in the wrong order (audit chain)
BAD_CHAIN = "bad_chain"  # an entry does not link to the previous entry's hash
RESTARTED = "restarted"  # an audit chain began again at seq 1 (lock flash reset)
CLOCK_STALE = "clock_stale"  # the lock clock is behind its floor: wait for an edge time set

# Appended for the lock firmware (issue 8, gaps the firmware found).
MECHANISM_FAULT = "mechanism_fault"  # its bolt did not get there, or is latched faulty
UNPROVISIONED = "unprovisioned"  # the lock has no (valid) identity and keys: it serves no one
