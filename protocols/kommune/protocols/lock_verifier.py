# The lock's side of the BLE protocol: issues challenges, judges each
# incoming message (a peer's CHALLENGE_REQUEST, a holder's REQUEST, an edge
# COMMAND, an AUDIT_ACK, a DENY_LIST), answers it, logs the decision to the
# audit trail, and tells the firmware what to do in Verdict.action. Time is
# injected (now_ms: ticks_ms(); clock_s: the lock's site-time clock) so tests
# and golden vectors are deterministic. Security argument: protocols/LOCK.md.
#
# Failures are charged to the connection they come from, never to the lock:
# a connection that sends junk, a forgery or a bad proof is dropped
# (ACT_DROP), one with max_refusals authentic refusals too, and nothing one
# connection sends can block another's unlock, the edge's commands or acks.
#
# The firmware's whole use of it (one Connection per BLE connection):
#     conn = verifier.connect(time.ticks_ms())                    # on connect
#     v = verifier.respond(conn, written_bytes, time.ticks_ms(), clock_s)
#     if v.state_changed: persist verifier.epoch, verifier.needs_time
#     if v.action == ACT_SET_DENY: persist verifier.deny: (epoch, version, body)
#     persist the audit log (entries, next_seq, last_hash, last_time_s)
#     if v.action == ACT_OPEN: open the bolt     (ACT_LOCK: close it)
#         and if it did not get there: verifier.restatus(v, written_bytes, MECHANISM_FAULT)
#     if v.action == ACT_SET_TIME: set the RTC to v.value
#     if v.reply: notify(v.reply)                   # after persisting
#     if v.action == ACT_DROP: disconnect the peer (the verifier forgot it)
#     else: notify(verifier.challenge(conn, os.urandom(16), ...))  # next one
#     verifier.disconnect(conn)                                 # on disconnect
#     verifier.tick(time.ticks_ms())  # main loop, at least once a minute;
#     then disconnect every peer whose conn.closed is set (idle too long)
# A CHALLENGE_REQUEST is ACT_CHALLENGE with no reply: the "next one" above is
# its answer. At boot: verifier.load_deny(...) with the persisted list, and
# verifier.mechanism_fault set while the bolt is faulty.
from kommune.protocols import token as tokens
from kommune.protocols.audit import (
    EVENT_ACCESS,
    EVENT_COMMAND,
    EVENT_EPOCH_RAISED,
    AuditLog,
    open_ack,
)
from kommune.protocols.errors import (
    BAD_PROOF,
    BAD_TAG,
    BAD_VALUE,
    CLOCK_STALE,
    MECHANISM_FAULT,
    RATE_LIMITED,
    REPLAY,
    REVOKED,
    TOO_LATE,
    TRUNCATED,
    UNKNOWN_TYPE,
    ProtocolError,
)
from kommune.protocols.handshake import (
    COMMAND_MAC_AT,
    NO_DENY,
    PROOF_AT,
    Challenge,
    Notice,
    check_deny_body,
    command_mac,
    decode_challenge_request,
    decode_command,
    decode_request,
    denies,
    encode_result,
    open_deny_list,
    proof,
)
from kommune.protocols.hmac_sha256 import HmacKey, equal
from kommune.protocols.lock_wire import (
    CMD_DENY_SET,
    CMD_EPOCH_SET,
    CMD_TIME_SET,
    MSG_AUDIT_ACK,
    MSG_CHALLENGE_REQUEST,
    MSG_COMMAND,
    MSG_DENY_LIST,
    MSG_REQUEST,
    NONCE_BYTES,
    OK,
    RIGHT_LOCK,
    RIGHT_READ_AUDIT,
    RIGHT_UNLOCK,
    check_bytes,
    check_distinct,
    lock_key,
)
from kommune.protocols.seal import SealKey

try:
    from micropython import const
except ImportError:  # CPython: const() is the identity
    const = int  # type: ignore[assignment]

# A proof must arrive this soon after its challenge (relay bound; LOCK.md).
_DEFAULT_RELAY_BOUND_MS = const(500)
# Authentic refusals (expired, no right, ...) one connection may collect
# before it is dropped; unauthenticated failures drop it at once.
_DEFAULT_MAX_REFUSALS = const(3)
# A genuine token may raise the lock's epoch by at most this much: one token
# cannot revoke all others far into the future (or for good, at 2**32 - 1).
MAX_EPOCH_STEP = const(16)
_DEFAULT_MAX_CONNECTIONS = const(4)  # tracked at once; the least recently active goes
# A connection silent this long is closed by tick(): nobody squats on a slot.
_DEFAULT_IDLE_MS = const(10_000)
# Nonces of the latest challenges no longer outstanding: a repeat of one (or
# of an outstanding one) is refused, so a weak RNG cannot revive a recording.
# Kept as 30-bit fingerprints (small ints: no heap objects, no fragmentation);
# a false match only makes the firmware draw another nonce.
_RECENT_NONCES = const(16)

# What the firmware does after a verdict (Verdict.action).
ACT_OPEN = const(1)  # an ok unlock request: open the bolt
ACT_LOCK = const(2)  # an ok lock request: close it
ACT_SEND_AUDIT = const(3)  # an ok read-audit request: notify audit.batch(n)
ACT_ADMIN = const(4)  # an ok admin request (firmware-defined)
ACT_SET_TIME = const(5)  # an ok time set: set the RTC to v.value
ACT_SET_EPOCH = const(6)  # an ok epoch set (verifier.epoch is set; persist it)
ACT_AUDIT_ACK = const(7)  # an ok ack: the log was pruned; persist it
ACT_REFUSE = const(8)  # an authentic refusal: notify the reply, keep the connection
ACT_DROP = const(9)  # notify the reply, then disconnect the peer
ACT_CHALLENGE = const(10)  # a CHALLENGE_REQUEST: no reply; notify the next challenge
ACT_SET_DENY = const(11)  # a newer deny-list: persist verifier.deny, then reply

# ticks_ms() wraps; every port's period is a multiple of 2**30, so differences
# modulo 2**30 are right for intervals under 2**29 ms (6.2 days).
_TICKS_MASK = const(0x3FFFFFFF)
_TICKS_HALF = const(0x20000000)


def ticks_diff(end: int, start: int) -> int:
    # time.ticks_diff(), also on CPython.
    return ((end - start + _TICKS_HALF) & _TICKS_MASK) - _TICKS_HALF


def _fingerprint(nonce: "bytes | bytearray") -> int:
    # All 16 bytes folded into 30 bits, a small int (no allocation).
    # (A 30-bit rotate-xor: every intermediate stays a small int on 32-bit ports.)
    h = 0
    for b in nonce:
        h = (((h & 0x1FFFFFF) << 5) | (h >> 25)) ^ b
    return h


def _op_action(op: int) -> int:
    if op == RIGHT_UNLOCK:
        return ACT_OPEN
    if op == RIGHT_LOCK:
        return ACT_LOCK
    if op == RIGHT_READ_AUDIT:
        return ACT_SEND_AUDIT
    return ACT_ADMIN


class Connection:
    # One BLE connection's state: its outstanding challenge and its record.
    def __init__(self, now_ms: int) -> None:
        # The outstanding challenge's nonce, in place (no allocation per challenge).
        self.nonce = bytearray(NONCE_BYTES)
        self.pending = False  # a challenge is outstanding
        self.issued_ms = 0  # its ticks
        self.issued_s = 0  # the lock clock then
        self.refusals = 0  # authentic refusals so far
        self.proven = False  # a message on it proved a key (holder's or edge's)
        self.closed = False  # dropped: the firmware must disconnect it
        self.seen_ms = now_ms  # last activity


class Verdict:
    # The lock's decision on one message, what the firmware does about it
    # (action, one of ACT_*), and the bytes to send back.
    def __init__(
        self,
        kind: int,
        op: int,
        status: str,
        reply: bytes,
        action: int,
        *,
        token: "tokens.Token | None" = None,
        value: int = 0,
    ) -> None:
        self.kind = kind  # MSG_REQUEST, MSG_COMMAND, MSG_AUDIT_ACK or the unknown first byte
        self.op = op  # request op (RIGHT_* bit) or command (CMD_*); 0 if unknown
        self.status = status  # OK or a reason from errors.py
        self.reply = reply  # RESULT or NOTICE, to notify the peer
        self.action = action  # ACT_*: the only thing the firmware acts on
        self.token = token  # the authentic token of a REQUEST, else None
        self.value = value  # COMMAND value or acked seq
        self.epoch_changed = False  # verifier.epoch changed
        # epoch or needs_time changed: persist both before replying
        self.state_changed = False
        self.counts = True  # a refusal charged to the connection (not a stale ack)

    @property
    def ok(self) -> bool:
        return self.status == OK

    def __repr__(self) -> str:
        return "Verdict(kind=%d op=%d %s action=%d)" % (
            self.kind,
            self.op,
            self.status,
            self.action,
        )


def _notice(kind: int, op: int, status: str, action: int = ACT_DROP) -> Verdict:
    return Verdict(kind, op, status, Notice(kind, status).encode(), action)


class LockVerifier:
    def __init__(
        self,
        lock_id: int,
        token_key: bytes,
        edge_key: bytes,
        epoch: int,
        audit: AuditLog,
        *,
        relay_bound_ms: int = _DEFAULT_RELAY_BOUND_MS,
        skew_s: int = tokens.DEFAULT_SKEW_S,
        max_connections: int = _DEFAULT_MAX_CONNECTIONS,
        max_refusals: int = _DEFAULT_MAX_REFUSALS,
        idle_ms: int = _DEFAULT_IDLE_MS,
        needs_time: bool = False,
    ) -> None:
        self.lock_id = lock_id
        self._token_key = SealKey(token_key)
        self._edge_key = lock_key(edge_key)  # MACs commands, acks, their RESULTs
        self._edge_raw = bytes(edge_key)  # deny-lists are sealed under it (rare: SealKey then)
        check_distinct(self._token_key.mac, self._edge_key, audit.mac_key)
        self.epoch = epoch  # revocation epoch; persisted by the firmware
        self.audit = audit
        self.relay_bound_ms = relay_bound_ms
        self.skew_s = skew_s
        if max_connections < 1 or max_refusals < 1:
            raise ProtocolError(BAD_VALUE, "max_connections and max_refusals must be >= 1")
        self.max_connections = max_connections
        self.max_refusals = max_refusals
        self.idle_ms = idle_ms
        # The lock clock went below its floor (the newest time it ever logged,
        # audit.last_time_s): no REQUEST is served until an edge time set.
        # Persisted by the firmware.
        self.needs_time = needs_time
        # The newest deny-list this lock has accepted, (epoch, version, body):
        # persisted by the firmware on ACT_SET_DENY, restored by load_deny.
        self.deny = NO_DENY
        # Set by the firmware while its bolt is faulty (nonzero: firmware-
        # defined fault code): unlock requests are refused mechanism_fault
        # before the motor runs. Admin and lock requests are still served.
        self.mechanism_fault = 0
        # Lock clock may move this far (s) between a challenge and its answer.
        self.clock_slack_s = (relay_bound_ms + 999) // 1000 + 1
        self._conns: list[Connection] = []
        # Fingerprints of nonces no longer outstanding: a ring, oldest overwritten.
        self._recent = [-1] * _RECENT_NONCES
        self._recent_at = 0

    @property
    def clock_floor_s(self) -> int:
        return self.audit.last_time_s

    def load_deny(self, epoch: int, version: int, body: bytes) -> None:
        # At boot: the deny-list the firmware persisted (verifier.deny).
        check_deny_body(body)
        self.deny = (epoch, version, bytes(body))

    def restatus(self, v: Verdict, message: bytes, status: str) -> bytes:
        # The firmware could not carry out an ok verdict on `message` (the
        # bolt did not reach its end): the authenticated RESULT of the same
        # request with another status replaces v.reply, and the verdict
        # becomes a refusal not charged to the peer. The log is unchanged:
        # the firmware logs what the mechanism did.
        if v.reply[:1] != b"\x03" or message[:1] != bytes((v.kind,)):  # 0x03: a RESULT
            raise ProtocolError(BAD_VALUE, "no RESULT to restate")
        key = self._edge_key
        if v.token is not None:
            key = HmacKey(tokens.session_key(self._token_key, v.token))
        v.status = status
        v.reply = encode_result(
            key, self.lock_id, message[2:18], message[18:34], kind=v.kind, op=v.op, status=status
        )
        if status != OK:
            v.action = ACT_REFUSE
            v.counts = False
        return v.reply

    def connect(self, now_ms: int) -> Connection:
        # A new BLE connection. Past max_connections one is closed (its peer
        # must connect again): the least recently active of those that have
        # proven no key, else of all - a flood of new connections cannot push
        # out an edge or holder session that has proven itself.
        if len(self._conns) >= self.max_connections:
            victim = self._conns[0]
            for c in self._conns:
                if c.proven != victim.proven:
                    if victim.proven:
                        victim = c
                elif ticks_diff(c.seen_ms, victim.seen_ms) < 0:
                    victim = c
            self._close(victim)
        conn = Connection(now_ms)
        self._conns.append(conn)
        return conn

    def disconnect(self, conn: Connection) -> None:
        # The peer went away (or was dropped): forget it.
        self._close(conn)

    def tick(self, now_ms: int) -> None:
        # Call from the main loop (at least once a minute; ticks wrap after
        # 2**30 ms): drops expired challenges, so no stored ticks can wrap
        # round into looking fresh again, and closes connections silent for
        # idle_ms (the firmware disconnects every conn with conn.closed).
        self._expire(now_ms)
        i = 0
        while i < len(self._conns):
            c = self._conns[i]
            if 0 <= ticks_diff(now_ms, c.seen_ms) <= self.idle_ms:
                i += 1
            else:
                self._close(c)

    def _close(self, conn: Connection) -> None:
        conn.closed = True
        self._retire(conn)
        for i in range(len(self._conns)):
            if self._conns[i] is conn:
                self._conns.pop(i)
                break

    def _retire(self, conn: Connection) -> None:
        # The connection's challenge is no longer outstanding.
        if conn.pending:
            self._recent[self._recent_at] = _fingerprint(conn.nonce)
            self._recent_at = (self._recent_at + 1) % _RECENT_NONCES
            conn.pending = False

    def _expire(self, now_ms: int) -> None:
        bound = self.relay_bound_ms
        for c in self._conns:
            if c.pending and not 0 <= ticks_diff(now_ms, c.issued_ms) <= bound:
                self._retire(c)

    def _seen(self, nonce: bytes) -> bool:
        for c in self._conns:
            if c.pending and c.nonce == nonce:
                return True
        return _fingerprint(nonce) in self._recent

    def challenge(self, conn: Connection, nonce: bytes, now_ms: int, clock_s: int) -> bytes:
        # CHALLENGE for this connection, replacing its outstanding one. nonce:
        # 16 fresh random bytes (os.urandom); one that repeats an outstanding
        # or recent nonce is refused (replay): draw another.
        if conn.closed:
            raise ProtocolError(RATE_LIMITED, "connection was dropped")
        nonce = check_bytes("nonce", nonce, NONCE_BYTES)
        msg = Challenge(self.lock_id, clock_s, self.epoch, nonce).encode()
        self._expire(now_ms)
        self._retire(conn)
        if self._seen(nonce):
            raise ProtocolError(REPLAY, "nonce repeats a recent challenge")
        conn.nonce[:] = nonce
        conn.pending = True
        conn.issued_ms, conn.issued_s = now_ms, clock_s
        conn.seen_ms = now_ms
        return msg

    def respond(self, conn: Connection, data: bytes, now_ms: int, clock_s: int) -> Verdict:
        kind = data[0] if data else 0
        if conn.closed:
            # Dropped: no work, no log entry; the firmware disconnects it.
            return _notice(kind, 0, RATE_LIMITED)
        conn.seen_ms = now_ms
        epoch, needs_time = self.epoch, self.needs_time
        if clock_s < self.audit.last_time_s:
            self.needs_time = True  # the clock went back (RTC lost, or tampered)
        try:
            if kind == MSG_REQUEST:
                v = self._request(conn, data, now_ms, clock_s)
            elif kind == MSG_COMMAND:
                v = self._command(conn, data, now_ms, clock_s)
            elif kind == MSG_AUDIT_ACK:
                v = self._ack(conn, data)
            elif kind == MSG_CHALLENGE_REQUEST:
                # Not logged: it proves nothing, and costs one challenge.
                try:
                    decode_challenge_request(data)
                    v = Verdict(kind, 0, OK, b"", ACT_CHALLENGE)
                except ProtocolError as e:
                    v = _notice(kind, 0, e.reason)
            elif kind == MSG_DENY_LIST:
                v = self._deny(conn, data, clock_s)
            else:
                v = _notice(kind, 0, UNKNOWN_TYPE if data else TRUNCATED)
        finally:
            self._expire(now_ms)  # after the named challenge was judged
        v.epoch_changed = self.epoch != epoch
        v.state_changed = v.epoch_changed or self.needs_time != needs_time
        if v.action == ACT_REFUSE and v.counts:
            conn.refusals += 1
            if conn.refusals >= self.max_refusals:
                v.action = ACT_DROP
        if v.action == ACT_DROP:
            self._close(conn)
        return v

    def _take(self, conn: Connection, nonce: bytes, now_ms: int, clock_s: int) -> bool:
        # The connection's challenge answers once: the first message naming it
        # consumes it. True if the answer came late, by the ticks or the clock.
        if not conn.pending or conn.nonce != nonce:
            raise ProtocolError(REPLAY, "not this connection's outstanding challenge")
        elapsed = ticks_diff(now_ms, conn.issued_ms)
        moved_s = clock_s - conn.issued_s
        self._retire(conn)
        return (
            elapsed < 0
            or elapsed > self.relay_bound_ms
            or moved_s < 0
            or moved_s > self.clock_slack_s
        )

    def _request(self, conn: Connection, data: bytes, now_ms: int, clock_s: int) -> Verdict:
        op = 0
        try:
            req = decode_request(data)
            op = req.op
            late = self._take(conn, req.lock_nonce, now_ms, clock_s)
            tok = tokens.authenticate(req.token, self._token_key, self.lock_id)
            session = HmacKey(tokens.session_key(self._token_key, tok))
            if not equal(data[PROOF_AT:], proof(session, self.lock_id, data[:PROOF_AT])):
                raise ProtocolError(BAD_PROOF, "holder proof")
        except ProtocolError as e:
            # Not proven to come from the token's holder: an unauthenticated
            # NOTICE, no holder in the log (a sniffed or forged token names
            # someone who was not here), and the connection is dropped.
            self.audit.append(clock_s, EVENT_ACCESS, op, e.reason)
            return _notice(MSG_REQUEST, op, e.reason)
        conn.proven = True
        status = self._judge(tok, late, op, clock_s)
        reply = encode_result(
            session,
            self.lock_id,
            req.lock_nonce,
            req.holder_nonce,
            kind=MSG_REQUEST,
            op=op,
            status=status,
        )
        self.audit.append(
            clock_s, EVENT_ACCESS, op, status, holder_id=tok.holder_id, token_id=tok.token_id
        )
        action = _op_action(op) if status == OK else ACT_REFUSE
        return Verdict(MSG_REQUEST, op, status, reply, action, token=tok)

    def _judge(self, tok: tokens.Token, late: bool, op: int, clock_s: int) -> str:
        # The holder proved it holds the token; may it do op now?
        if late:
            return TOO_LATE
        if tok.epoch > self.epoch:
            # Only the authority mints, and it mints at the current epoch: a
            # newer epoch here means revocations this lock has not heard of.
            # Further ahead than MAX_EPOCH_STEP: an authority fault; refused
            # until the edge sets the epoch by COMMAND.
            if tok.epoch - self.epoch > MAX_EPOCH_STEP:
                return BAD_VALUE
            self.epoch = tok.epoch
            self.audit.append(
                clock_s,
                EVENT_EPOCH_RAISED,
                0,
                OK,
                holder_id=tok.holder_id,
                token_id=tok.token_id,
                arg=tok.epoch,
            )
        if self.needs_time:
            return CLOCK_STALE
        try:
            tokens.authorize(tok, clock_s, self.epoch, op, self.skew_s)
        except ProtocolError as e:
            return e.reason
        body = self.deny[2]
        if len(body) > 2 and denies(body, tok.token_id, tok.holder_id):
            return REVOKED
        if op == RIGHT_UNLOCK and self.mechanism_fault:
            return MECHANISM_FAULT
        return OK

    def _command(self, conn: Connection, data: bytes, now_ms: int, clock_s: int) -> Verdict:
        try:
            cmd = decode_command(data)
            late = self._take(conn, cmd.lock_nonce, now_ms, clock_s)
            body = data[:COMMAND_MAC_AT]
            if not equal(cmd.mac, command_mac(self._edge_key, self.lock_id, body)):
                raise ProtocolError(BAD_TAG, "command MAC")
        except ProtocolError as e:
            self.audit.append(clock_s, EVENT_COMMAND, 0, e.reason)
            return _notice(MSG_COMMAND, 0, e.reason)
        conn.proven = True
        status = OK
        action = ACT_SET_EPOCH
        if late:
            status = TOO_LATE  # a delayed time set would set the clock wrong
        elif cmd.cmd == CMD_TIME_SET:
            action = ACT_SET_TIME
            for c in self._conns:
                self._retire(c)  # their clock_s is from the old time
        elif cmd.cmd == CMD_EPOCH_SET:
            if cmd.value < self.epoch:
                status = BAD_VALUE  # an epoch never goes back: that would un-revoke
            else:
                self.epoch = cmd.value
        reply = encode_result(
            self._edge_key,
            self.lock_id,
            cmd.lock_nonce,
            cmd.edge_nonce,
            kind=MSG_COMMAND,
            op=cmd.cmd,
            status=status,
        )
        self.audit.append(clock_s, EVENT_COMMAND, cmd.cmd, status, arg=cmd.value)
        if status != OK:
            action = ACT_REFUSE
        elif action == ACT_SET_TIME:
            # The edge's time is the truth: it is the new floor (even below
            # times logged under a clock that ran ahead), and the lock serves again.
            self.audit.last_time_s = cmd.value
            self.needs_time = False
        return Verdict(MSG_COMMAND, cmd.cmd, status, reply, action, value=cmd.value)

    def _deny(self, conn: Connection, data: bytes, clock_s: int) -> Verdict:
        # A sealed deny-list from the edge; not bound to a challenge (a phone
        # may carry it), so only a newer one than the lock holds is taken.
        try:
            new = open_deny_list(data, SealKey(self._edge_raw), self.lock_id)
        except ProtocolError as e:
            return _notice(MSG_DENY_LIST, 0, e.reason)
        if new[:2] > self.deny[:2]:
            # Only a newer list proves the edge: an old one may be replayed by
            # anyone, and must not keep a squatter's connection from eviction.
            conn.proven = True
            self.deny = new
            # Logged: the lock's policy changed, to this list (epoch, version).
            self.audit.append(clock_s, EVENT_COMMAND, CMD_DENY_SET, OK, token_id=new[0], arg=new[1])
            v = _notice(MSG_DENY_LIST, 0, OK, ACT_SET_DENY)
        elif new == self.deny:
            v = _notice(MSG_DENY_LIST, 0, OK, ACT_SET_DENY)  # the same list again (not logged)
        else:
            # Older than the lock's (or the same version with other ids: an
            # edge fault). Genuine, so not charged.
            v = _notice(MSG_DENY_LIST, 0, BAD_VALUE, ACT_REFUSE)
            v.counts = False
        v.value = new[1]
        return v

    def _ack(self, conn: Connection, data: bytes) -> Verdict:
        # Not logged: the edge holds every acked entry, and logging an ack
        # would leave a new unacked entry after every collection.
        try:
            ack = open_ack(data, self._edge_key, self.lock_id)
        except ProtocolError as e:
            return _notice(MSG_AUDIT_ACK, 0, e.reason)
        try:
            # Only an ack that prunes proves the edge: one that prunes nothing may be
            # replayed from the air by anyone, and must not keep a squatter's
            # connection from eviction.
            if self.audit.prune(ack.seq, ack.entry_hash):
                conn.proven = True
            v = _notice(MSG_AUDIT_ACK, 0, OK, ACT_AUDIT_ACK)
        except ProtocolError as e:
            # Genuine but stale (the chain restarted, or an ack from before a
            # reset): refused, but not a guess, so it is not charged.
            v = _notice(MSG_AUDIT_ACK, 0, e.reason, ACT_REFUSE)
            v.counts = False
        v.value = ack.seq
        return v
