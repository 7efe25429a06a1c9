# Golden-vector adapter for the lock's audit trail (kommune.protocols.audit).
#
# "hex" is a 55-byte entry, an AUDIT_BATCH or an AUDIT_ACK (told apart by
# length, then type byte); "fields" has "type" and the fields, bytes as hex.
# Ops (keys and bytes as hex):
#   "log"      entries a lock writes for args["events"] under args["audit_key"]
#   "check"    the edge's chain check of args["entries"] from args["next_seq"] /
#              args["last_hash"]: accepted seqs and the new anchor, or an error
#   "ack"      an AUDIT_ACK for args["seq"]; "open_ack" the seq in args["ack"]
from kommune.protocols import audit
from kommune.protocols.lock_wire import MSG_AUDIT_BATCH, lock_key


def _h(text):
    return bytes.fromhex(text)


def _entry_fields(e):
    return {
        "type": "entry",
        "seq": e.seq,
        "time_s": e.time_s,
        "event": e.event,
        "op": e.op,
        "status": e.status,
        "holder_id": e.holder_id,
        "token_id": e.token_id,
        "arg": e.arg,
        "prev_hash": e.prev_hash.hex(),
        "mac": e.mac.hex(),
    }


def _entry(f):
    return audit.AuditEntry(
        seq=f["seq"],
        time_s=f["time_s"],
        event=f["event"],
        op=f["op"],
        status=f["status"],
        holder_id=f["holder_id"],
        token_id=f["token_id"],
        arg=f["arg"],
        prev_hash=_h(f["prev_hash"]),
        mac=_h(f["mac"]),
    )


def decode(data):
    if len(data) == audit.ENTRY_BYTES:
        return _entry_fields(audit.decode_entry(data))
    if data[:1] == bytes((MSG_AUDIT_BATCH,)):
        return {"type": "batch", "entries": [_entry_fields(e) for e in audit.decode_batch(data)]}
    a = audit.decode_ack(data)
    return {"type": "ack", "seq": a.seq, "mac": a.mac.hex()}


def encode(f):
    if f["type"] == "entry":
        return _entry(f).encode()
    if f["type"] == "batch":
        return audit.encode_batch([_entry(e).encode() for e in f["entries"]])
    return audit.Ack(f["seq"], _h(f["mac"])).encode()


def op(name, args):
    if name == "log":
        log = audit.AuditLog(_h(args["audit_key"]), args["lock_id"])
        for ev in args["events"]:
            log.append(
                ev["time_s"],
                ev["event"],
                ev["op"],
                ev["status"],
                holder_id=ev.get("holder_id", 0),
                token_id=ev.get("token_id", 0),
                arg=ev.get("arg", 0),
            )
        return [e.hex() for e in log.entries]
    if name == "check":
        checker = audit.AuditChecker(
            _h(args["audit_key"]), args["lock_id"], args["next_seq"], _h(args["last_hash"])
        )
        fresh = checker.accept([_h(e) for e in args["entries"]])
        return {
            "accepted": [e.seq for e in fresh],
            "next_seq": checker.next_seq,
            "last_hash": checker.last_hash.hex(),
        }
    if name == "ack":
        return audit.encode_ack(lock_key(_h(args["edge_key"])), args["lock_id"], args["seq"]).hex()
    if name == "open_ack":
        return audit.open_ack(_h(args["ack"]), lock_key(_h(args["edge_key"])), args["lock_id"])
    if name == "hash":
        return audit.entry_hash(_h(args["entry"])).hex()
    raise ValueError("unknown op " + name)
