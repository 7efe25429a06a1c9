# Golden-vector adapter for the lock's BLE handshake (kommune.protocols.handshake,
# lock_verifier and lock_client).
#
# "hex" is one message; "fields" has its "type" (challenge, request, command,
# result, notice) and fields, bytes as hex. Ops (keys and bytes as hex):
#   "lock"   replays args["steps"] against a LockVerifier built from
#            args["lock"]: {"challenge": nonce, "now_ms", "clock_s"} issues a
#            challenge, {"respond": message, "now_ms", "clock_s"} answers one,
#            {"tick": now_ms} is the firmware's main-loop tick; "conn" names
#            the connection (default 0; connected on first use), and
#            {"disconnect": conn} ends one; {"fault": n} sets the firmware's
#            mechanism_fault, {"restatus": status} restates the last verdict
#            (its new reply). Result: each step's output (status, reply,
#            action), the lock's epoch, needs_time, deny-list, audit entries.
#   "holder" builds a phone's request for args["challenge"] and opens the
#            lock's args["reply"] (the holder side of the same transcript).
#   "edge"   the same for an edge command.
#   "deny_list"  the edge's sealed DENY_LIST for args (edge_key, lock_id,
#            epoch, version, tokens, holders); "open_deny_list" opens
#            args["message"] as the lock does: epoch, version, the ids.
from kommune.protocols import handshake as hs
from kommune.protocols import lock_client
from kommune.protocols.audit import AuditLog
from kommune.protocols.errors import ProtocolError
from kommune.protocols.lock_client import ACTION_NAMES, EdgeSession, HolderSession, deny_ids
from kommune.protocols.lock_verifier import LockVerifier
from kommune.protocols.seal import SealKey


def _h(text):
    return bytes.fromhex(text)


def decode(data):
    m = lock_client.decode(data)
    if m == hs.CHALLENGE_REQUEST:
        return {"type": "challenge_request"}
    if isinstance(m, hs.Challenge):
        return {
            "type": "challenge",
            "lock_id": m.lock_id,
            "clock_s": m.clock_s,
            "epoch": m.epoch,
            "nonce": m.nonce.hex(),
        }
    if isinstance(m, hs.Request):
        return {
            "type": "request",
            "op": m.op,
            "lock_nonce": m.lock_nonce.hex(),
            "holder_nonce": m.holder_nonce.hex(),
            "token": m.token.hex(),
            "proof": m.proof.hex(),
        }
    if isinstance(m, hs.Command):
        return {
            "type": "command",
            "cmd": m.cmd,
            "lock_nonce": m.lock_nonce.hex(),
            "edge_nonce": m.edge_nonce.hex(),
            "value": m.value,
            "mac": m.mac.hex(),
        }
    if isinstance(m, hs.Result):
        return {
            "type": "result",
            "kind": m.kind,
            "op": m.op,
            "status": m.status,
            "mac": m.mac.hex(),
        }
    return {"type": "notice", "kind": m.kind, "status": m.status}


def encode(f):
    t = f["type"]
    if t == "challenge_request":
        return hs.CHALLENGE_REQUEST
    if t == "challenge":
        return hs.Challenge(f["lock_id"], f["clock_s"], f["epoch"], _h(f["nonce"])).encode()
    if t == "request":
        return hs.Request(
            f["op"], _h(f["lock_nonce"]), _h(f["holder_nonce"]), _h(f["token"]), _h(f["proof"])
        ).encode()
    if t == "command":
        return hs.Command(
            f["cmd"], _h(f["lock_nonce"]), _h(f["edge_nonce"]), f["value"], _h(f["mac"])
        ).encode()
    if t == "result":
        return hs.Result(f["kind"], f["op"], f["status"], _h(f["mac"])).encode()
    return hs.Notice(f["kind"], f["status"]).encode()


def _verifier(c):
    log = AuditLog(_h(c["audit_key"]), c["lock_id"], last_time_s=c.get("clock_floor_s", 0))
    v = LockVerifier(
        c["lock_id"],
        _h(c["token_key"]),
        _h(c["edge_key"]),
        c["epoch"],
        log,
        relay_bound_ms=c.get("relay_bound_ms", 500),
        skew_s=c.get("skew_s", 60),
        max_refusals=c.get("max_refusals", 3),
        max_connections=c.get("max_connections", 4),
        needs_time=c.get("needs_time", False),
    )
    return v, log


def _lock(args):
    v, log = _verifier(args["lock"])
    conns = {}
    out = []
    last = None
    for s in args["steps"]:
        if "fault" in s:
            v.mechanism_fault = s["fault"]
            out.append({"fault": s["fault"]})
            continue
        if "restatus" in s:
            try:
                out.append({"restated": v.restatus(last[0], last[1], s["restatus"]).hex()})
            except ProtocolError as e:
                out.append({"refused": e.reason})
            continue
        if "tick" in s:
            v.tick(s["tick"])
            out.append({"tick": s["tick"]})
            continue
        if "disconnect" in s:
            v.disconnect(conns.pop(s["disconnect"]))
            out.append({"disconnect": s["disconnect"]})
            continue
        k = s.get("conn", 0)
        if k not in conns:
            conns[k] = v.connect(s["now_ms"])
        if "challenge" in s:
            try:
                msg = v.challenge(conns[k], _h(s["challenge"]), s["now_ms"], s["clock_s"])
                out.append({"challenge": msg.hex()})
            except ProtocolError as e:
                out.append({"refused": e.reason})
        else:
            r = v.respond(conns[k], _h(s["respond"]), s["now_ms"], s["clock_s"])
            last = (r, _h(s["respond"]))
            out.append(
                {"status": r.status, "reply": r.reply.hex(), "action": ACTION_NAMES[r.action]}
            )
    return {
        "steps": out,
        "epoch": v.epoch,
        "needs_time": v.needs_time,
        "deny": [v.deny[0], v.deny[1], v.deny[2].hex()],
        "audit": [e.hex() for e in log.entries],
    }


def _reply(session, reply):
    r = session.result(_h(reply))
    return {"status": r.status, "authenticated": r.authenticated}


def op(name, args):
    if name == "lock":
        return _lock(args)
    if name == "holder":
        holder = HolderSession(_h(args["token"]), _h(args["session_key"]), args["lock_id"])
        request = holder.request(
            _h(args["challenge"]), args["op"], _h(args["holder_nonce"]), args.get("now_s")
        )
        return {"request": request.hex(), "reply": _reply(holder, args["reply"])}
    if name == "edge":
        edge = EdgeSession(_h(args["edge_key"]), args["lock_id"])
        command = edge.command(
            _h(args["challenge"]),
            args["cmd"],
            args["value"],
            _h(args["edge_nonce"]),
            now_s=args["now_s"],
        )
        return {"command": command.hex(), "reply": _reply(edge, args["reply"])}
    if name == "deny_list":
        edge = EdgeSession(_h(args["edge_key"]), args["lock_id"])
        message = edge.deny_list(args["epoch"], args["version"], args["tokens"], args["holders"])
        return {"message": message.hex()}
    if name == "open_deny_list":
        key = SealKey(_h(args["edge_key"]))
        epoch, version, body = hs.open_deny_list(_h(args["message"]), key, args["lock_id"])
        tokens, holders = deny_ids(body)
        return {"epoch": epoch, "version": version, "tokens": tokens, "holders": holders}
    raise ValueError("unknown op " + name)
