# Golden-vector adapter for the lock's audit trail (kommune.protocols.audit).
#
# "hex" is a 55-byte entry or an AUDIT_ACK (told apart by length); "fields"
# has "type" and the fields, bytes as hex. Ops (keys and bytes as hex):
#   "log"      entries a lock holds after args["events"] under args["audit_key"]
#              (optional "capacity"; an event {"ack": seq, "hash": h} prunes)
#   "check"    the edge's chain check of args["entries"] from args["next_seq"] /
#              args["last_hash"] (optional "recent" {seq: hash}, "resync"):
#              accepted seqs, lost ranges, restart flag, the new anchor; or an error
#   "ack"      an AUDIT_ACK for args["seq"] / args["hash"]; "open_ack" its fields
#   "batch"    the sealed AUDIT_BATCH a lock sends after args["events"] (as "log",
#              optional "max_entries", "mem_free"); "seal_batch" of args["entries"]
#   "open_batch"  the entries of the sealed args["batch"] (the edge's side)
from kommune.protocols import audit, audit_check
from kommune.protocols.audit_check import AuditChecker
from kommune.protocols.lock_wire import lock_key
from kommune.protocols.seal import SealKey


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
    a = audit.decode_ack(data)
    return {"type": "ack", "seq": a.seq, "entry_hash": a.entry_hash.hex(), "mac": a.mac.hex()}


def encode(f):
    if f["type"] == "entry":
        return _entry(f).encode()
    return audit.Ack(f["seq"], _h(f["entry_hash"]), _h(f["mac"])).encode()


def _log(args):
    log = audit.AuditLog(_h(args["audit_key"]), args["lock_id"], capacity=args.get("capacity", 64))
    for ev in args["events"]:
        if "ack" in ev:
            log.prune(ev["ack"], _h(ev["hash"]))
            continue
        log.append(
            ev["time_s"],
            ev["event"],
            ev["op"],
            ev["status"],
            holder_id=ev.get("holder_id", 0),
            token_id=ev.get("token_id", 0),
            arg=ev.get("arg", 0),
        )
    return log


def op(name, args):
    if name == "batch":
        log = _log(args)
        return log.batch(args.get("max_entries", 255), args.get("mem_free", -1)).hex()
    if name == "seal_batch":
        key = SealKey(_h(args["audit_key"]))
        return audit_check.encode_batch(
            [_h(e) for e in args["entries"]], key, args["lock_id"]
        ).hex()
    if name == "open_batch":
        key = SealKey(_h(args["audit_key"]))
        return [e.hex() for e in audit_check.open_batch(_h(args["batch"]), key, args["lock_id"])]
    if name == "log":
        log = _log(args)
        log.batch(0)  # logs a pending failure summary, as a collection would
        return [e.hex() for e in log.entries]
    if name == "check":
        recent = {}
        for seq in args.get("recent", {}):
            recent[int(seq)] = _h(args["recent"][seq])
        durable = {}
        for seq in args.get("durable", {}):
            durable[int(seq)] = _h(args["durable"][seq])
        checker = AuditChecker(
            _h(args["audit_key"]),
            args["lock_id"],
            args["next_seq"],
            _h(args["last_hash"]),
            recent,
            lookup=durable.get if "durable" in args else None,
        )
        accepted = checker.accept([_h(e) for e in args["entries"]], args.get("resync", False))
        checker.commit(accepted)
        return {
            "accepted": [e.seq for e in accepted.entries],
            "lost": [[first, last] for first, last in accepted.lost],
            "restarted": accepted.restarted,
            "next_seq": checker.next_seq,
            "last_hash": checker.last_hash.hex(),
        }
    if name == "ack":
        key = lock_key(_h(args["edge_key"]))
        return audit.encode_ack(key, args["lock_id"], args["seq"], _h(args["hash"])).hex()
    if name == "open_ack":
        a = audit.open_ack(_h(args["ack"]), lock_key(_h(args["edge_key"])), args["lock_id"])
        return {"seq": a.seq, "entry_hash": a.entry_hash.hex()}
    if name == "hash":
        return audit.entry_hash(_h(args["entry"])).hex()
    raise ValueError("unknown op " + name)
