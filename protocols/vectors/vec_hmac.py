# Golden-vector adapter for HMAC-SHA-256 (kommune.protocols.hmac_sha256).
#
# Ops: "hmac" -> hex digest of args["data"] under args["key"], cut to
# args["bytes"] when given (RFC 4231 test case 5 truncates to 16 bytes);
# "equal" -> the constant-time compare of args["a"] and args["b"].
from kommune.protocols.hmac_sha256 import HmacKey, equal


def decode(data):
    raise ValueError("hmac vectors are op cases only")


def encode(fields):
    raise ValueError("hmac vectors are op cases only")


def op(name, args):
    if name == "hmac":
        digest = HmacKey(bytes.fromhex(args["key"])).digest(bytes.fromhex(args["data"]))
        return digest[: args.get("bytes", len(digest))].hex()
    if name == "equal":
        return equal(bytes.fromhex(args["a"]), bytes.fromhex(args["b"]))
    raise ValueError("unknown op " + name)
