# LockVerifier with what this door adds to the protocol's decision:
#  - a deny-list of token ids and holder ids (/lock/deny.json): an authentic
#    token on it is refused "revoked" (LOCK.md has no finer status);
#  - no opening while the bolt reports a fault: refused "bad_value", the
#    closest status the table has (the status characteristic names the fault);
#  - result(): an authenticated RESULT with another status, for an ok opening
#    whose bolt then did not reach its end (the lock never claims an opening
#    its end switch did not see).
import json

from kommune.protocols import token as tokens
from kommune.protocols.errors import BAD_VALUE, REVOKED
from kommune.protocols.handshake import encode_result
from kommune.protocols.hmac_sha256 import HmacKey
from kommune.protocols.lock_verifier import LockVerifier
from kommune.protocols.lock_wire import MSG_REQUEST, OK, RIGHT_UNLOCK

DENY_PATH = "/lock/deny.json"


def load_deny(path: str = DENY_PATH) -> "tuple[list, list]":
    # (token ids, holder ids); none if the file is missing or broken.
    try:
        with open(path) as f:
            doc = json.load(f)
        return [int(x) for x in doc.get("tokens", ())], [int(x) for x in doc.get("holders", ())]
    except (OSError, ValueError, TypeError, AttributeError):
        return [], []


class DoorVerifier(LockVerifier):
    deny_tokens: list = []
    deny_holders: list = []
    fault = 0  # the bolt's fault (bolt.FAULT_*), set by the firmware

    def _judge(self, tok: tokens.Token, late: bool, op: int, clock_s: int) -> str:
        status = super()._judge(tok, late, op, clock_s)
        if status != OK:
            return status
        if tok.token_id in self.deny_tokens or tok.holder_id in self.deny_holders:
            return REVOKED
        if op == RIGHT_UNLOCK and self.fault:
            return BAD_VALUE
        return OK

    def result(self, request: bytes, tok: tokens.Token, status: str) -> bytes:
        # RESULT for this (authentic) REQUEST saying `status` instead.
        session = HmacKey(tokens.session_key(self._token_key, tok))
        return encode_result(
            session,
            self.lock_id,
            request[2:18],
            request[18:34],
            kind=MSG_REQUEST,
            op=request[1],
            status=status,
        )
