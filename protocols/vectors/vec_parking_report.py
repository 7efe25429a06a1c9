# Golden-vector adapter for the parking report (kommune.protocols.parking_report).
#
# Op cases only (a report needs its key and node id):
#   "encode"  args key, node, state, seq, duration_s, heartbeat -> report hex
#   "verify"  args key, node, hex -> the fields (or the ProtocolError)
#   "decode"  args hex -> the fields, unauthenticated
#   "duration_code" args seconds -> code; "code_duration_s" args code -> seconds
from kommune.protocols import parking_report as pr
from kommune.protocols.hmac_sha256 import HmacKey


def decode(data):
    raise ValueError("parking_report vectors are op cases only")


def encode(fields):
    raise ValueError("parking_report vectors are op cases only")


def _fields(report):
    return {
        "state": report.state,
        "seq": report.seq,
        "duration_s": report.duration_s,
        "heartbeat": report.heartbeat,
    }


def op(name, args):
    if name == "encode":
        report = pr.Report(
            state=args["state"],
            seq=args["seq"],
            duration_s=args["duration_s"],
            heartbeat=args["heartbeat"],
        )
        return pr.encode(HmacKey(bytes.fromhex(args["key"])), args["node"], report).hex()
    if name == "verify":
        key = HmacKey(bytes.fromhex(args["key"]))
        return _fields(pr.verify(key, args["node"], bytes.fromhex(args["hex"])))
    if name == "decode":
        return _fields(pr.decode(bytes.fromhex(args["hex"])))
    if name == "duration_code":
        return pr.duration_code(args["seconds"])
    if name == "code_duration_s":
        return pr.code_duration_s(args["code"])
    raise ValueError("unknown op " + name)
