# The lock's side of the BLE protocol: issues challenges, judges each
# incoming message (a holder's REQUEST, an edge COMMAND, an AUDIT_ACK),
# answers it, and logs the decision to the audit trail. Time is injected
# (now_ms: ticks_ms(); clock_s: the lock's site-time clock) so tests and
# golden vectors are deterministic. Security argument: protocols/LOCK.md.
#
# The firmware's whole use of it:
#     msg = verifier.challenge(os.urandom(16), time.ticks_ms(), clock_s)   # notify
#     v = verifier.respond(written_bytes, time.ticks_ms(), clock_s)
#     verifier.tick(time.ticks_ms())  # from the main loop, at least every few s
#     if v.epoch_changed: persist verifier.epoch       # before notifying
#     if v.ok and v.kind == MSG_REQUEST: actuate v.op
#     if v.ok and v.op == CMD_TIME_SET: set the clock to v.value
#     notify v.reply
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
    RATE_LIMITED,
    REPLAY,
    TOO_LATE,
    TRUNCATED,
    UNKNOWN_TYPE,
    ProtocolError,
)
from kommune.protocols.handshake import (
    COMMAND_MAC_AT,
    PROOF_AT,
    Challenge,
    Notice,
    command_mac,
    decode_command,
    decode_request,
    encode_result,
    proof,
)
from kommune.protocols.hmac_sha256 import HmacKey, equal
from kommune.protocols.lock_wire import (
    CMD_EPOCH_SET,
    CMD_TIME_SET,
    MSG_AUDIT_ACK,
    MSG_COMMAND,
    MSG_REQUEST,
    OK,
    lock_key,
)

try:
    from micropython import const
except ImportError:  # CPython: const() is the identity
    const = int  # type: ignore[assignment]

# A proof must arrive this soon after its challenge (relay bound; LOCK.md).
DEFAULT_RELAY_BOUND_MS = const(500)
DEFAULT_MAX_FAILURES = const(5)
DEFAULT_FAILURE_WINDOW_MS = const(60_000)
DEFAULT_BACKOFF_MS = const(30_000)
# A genuine token may raise the lock's epoch by at most this much: one token
# cannot revoke all others far into the future (or for good, at 2**32 - 1).
MAX_EPOCH_STEP = const(16)
DEFAULT_MAX_CHALLENGES = const(4)  # outstanding at once (one per connected peer)

# ticks_ms() wraps; every port's period is a multiple of 2**30, so differences
# modulo 2**30 are right for intervals under 2**29 ms (6.2 days).
_TICKS_MASK = const(0x3FFFFFFF)
_TICKS_HALF = const(0x20000000)


def ticks_diff(end: int, start: int) -> int:
    # time.ticks_diff(), also on CPython.
    return ((end - start + _TICKS_HALF) & _TICKS_MASK) - _TICKS_HALF


class RateLimiter:
    # After max_failures failures within window_ms, everything is refused for
    # backoff_ms. One limiter per lock, not per holder: an attacker picks any
    # identity. RAM: at most max_failures ints.
    def __init__(
        self,
        max_failures: int = DEFAULT_MAX_FAILURES,
        window_ms: int = DEFAULT_FAILURE_WINDOW_MS,
        backoff_ms: int = DEFAULT_BACKOFF_MS,
    ) -> None:
        if max_failures < 1:
            raise ProtocolError(BAD_VALUE, "max_failures must be >= 1")
        self.max_failures = max_failures
        self.window_ms = window_ms
        self.backoff_ms = backoff_ms
        self._failures: list[int] = []  # ticks of the latest failures, oldest first
        self._blocked_at: "int | None" = None

    def blocked(self, now_ms: int) -> bool:
        if self._blocked_at is None:
            return False
        # Negative (ticks went back): still blocked. tick() ends a served
        # back-off long before its ticks could wrap into the negative.
        if ticks_diff(now_ms, self._blocked_at) < self.backoff_ms:
            return True
        self._blocked_at = None  # served
        return False

    def tick(self, now_ms: int) -> None:
        # Forget what no longer counts, so no stored ticks can age past a wrap.
        self.blocked(now_ms)
        while self._failures and not 0 <= ticks_diff(now_ms, self._failures[0]) <= self.window_ms:
            self._failures.pop(0)

    def failure(self, now_ms: int) -> bool:
        # Count one failure; True if it starts a back-off.
        self._failures.append(now_ms)
        if len(self._failures) > self.max_failures:
            self._failures.pop(0)
        if len(self._failures) < self.max_failures:
            return False
        if not 0 <= ticks_diff(now_ms, self._failures[0]) <= self.window_ms:
            return False
        del self._failures[:]
        self._blocked_at = now_ms
        return True


class Verdict:
    # The lock's decision on one message, and the bytes to send back.
    def __init__(
        self,
        kind: int,
        op: int,
        status: str,
        reply: bytes,
        *,
        token: "tokens.Token | None" = None,
        value: int = 0,
    ) -> None:
        self.kind = kind  # MSG_REQUEST, MSG_COMMAND, MSG_AUDIT_ACK or the unknown first byte
        self.op = op  # request op (RIGHT_* bit) or command (CMD_*); 0 if unknown
        self.status = status  # OK or a reason from errors.py
        self.reply = reply  # RESULT or NOTICE, to notify the peer
        self.token = token  # the authentic token of a REQUEST, else None
        self.value = value  # COMMAND value or acked seq
        self.epoch_changed = False  # persist verifier.epoch before replying
        self.counts = True  # a failure the rate limiter counts (not an authentic stale ack)

    @property
    def ok(self) -> bool:
        return self.status == OK

    def __repr__(self) -> str:
        return "Verdict(kind=%d op=%d %s)" % (self.kind, self.op, self.status)


def _notice(kind: int, op: int, status: str) -> Verdict:
    return Verdict(kind, op, status, Notice(kind, status).encode())


class LockVerifier:
    def __init__(
        self,
        lock_id: int,
        token_key: bytes,
        edge_key: bytes,
        epoch: int,
        audit: AuditLog,
        *,
        relay_bound_ms: int = DEFAULT_RELAY_BOUND_MS,
        skew_s: int = tokens.DEFAULT_SKEW_S,
        max_challenges: int = DEFAULT_MAX_CHALLENGES,
        limiter: "RateLimiter | None" = None,
    ) -> None:
        self.lock_id = lock_id
        self._token_key = lock_key(token_key)
        self._edge_key = lock_key(edge_key)
        self.epoch = epoch  # revocation epoch; persisted by the firmware
        self.audit = audit
        self.relay_bound_ms = relay_bound_ms
        self.skew_s = skew_s
        self.max_challenges = max_challenges
        self.limiter = limiter if limiter is not None else RateLimiter()
        # Lock clock may move this far (s) between a challenge and its answer.
        self.clock_slack_s = (relay_bound_ms + 999) // 1000 + 1
        # (nonce, issued ticks, lock clock s), oldest first; none older than the bound
        self._pending: list[tuple[bytes, int, int]] = []

    def tick(self, now_ms: int) -> None:
        # Call from the main loop (at least once a minute; ticks wrap after
        # 2**30 ms): drops expired challenges and stale limiter state, so no
        # stored ticks can wrap round into looking fresh again.
        self._expire(now_ms)
        self.limiter.tick(now_ms)

    def _expire(self, now_ms: int) -> None:
        bound = self.relay_bound_ms
        self._pending = [p for p in self._pending if 0 <= ticks_diff(now_ms, p[1]) <= bound]

    def challenge(self, nonce: bytes, now_ms: int, clock_s: int) -> bytes:
        # CHALLENGE for one peer. nonce: 16 fresh random bytes (os.urandom).
        msg = Challenge(self.lock_id, clock_s, self.epoch, nonce).encode()
        self._expire(now_ms)
        if len(self._pending) >= self.max_challenges:
            self._pending.pop(0)  # the oldest peer must ask again
        self._pending.append((bytes(nonce), now_ms, clock_s))
        return msg

    def respond(self, data: bytes, now_ms: int, clock_s: int) -> Verdict:
        kind = data[0] if data else 0
        if self.limiter.blocked(now_ms):
            # No work, no log entry; and no challenge survives a refusal, so a
            # refused message cannot be replayed once the back-off ends.
            del self._pending[:]
            return _notice(kind, 0, RATE_LIMITED)
        try:
            return self._respond(kind, data, now_ms, clock_s)
        finally:
            self._expire(now_ms)  # after the named challenge was judged

    def _respond(self, kind: int, data: bytes, now_ms: int, clock_s: int) -> Verdict:
        epoch = self.epoch
        if kind == MSG_REQUEST:
            v = self._request(data, now_ms, clock_s)
        elif kind == MSG_COMMAND:
            v = self._command(data, now_ms, clock_s)
        elif kind == MSG_AUDIT_ACK:
            v = self._ack(data)
        else:
            v = _notice(kind, 0, UNKNOWN_TYPE if data else TRUNCATED)
        v.epoch_changed = self.epoch != epoch
        if not v.ok and v.counts and self.limiter.failure(now_ms):
            del self._pending[:]  # a back-off uses up every outstanding challenge
            event = EVENT_COMMAND if kind == MSG_COMMAND else EVENT_ACCESS
            self.audit.append(clock_s, event, 0, RATE_LIMITED, arg=kind)
        return v

    def _take(self, nonce: bytes, now_ms: int, clock_s: int) -> bool:
        # A challenge answers once: the first message naming it consumes it.
        # True if the answer came late, by the ticks or by the lock clock.
        for i in range(len(self._pending)):
            if self._pending[i][0] == nonce:
                _, issued_ms, issued_s = self._pending.pop(i)
                elapsed = ticks_diff(now_ms, issued_ms)
                moved_s = clock_s - issued_s
                return (
                    elapsed < 0
                    or elapsed > self.relay_bound_ms
                    or moved_s < 0
                    or moved_s > self.clock_slack_s
                )
        raise ProtocolError(REPLAY, "challenge not outstanding (used, dropped or expired)")

    def _request(self, data: bytes, now_ms: int, clock_s: int) -> Verdict:
        op = 0
        try:
            req = decode_request(data)
            op = req.op
            late = self._take(req.lock_nonce, now_ms, clock_s)
            tok = tokens.authenticate(req.token, self._token_key, self.lock_id)
        except ProtocolError as e:
            # No authentic token, so no session key: an unauthenticated NOTICE,
            # and no holder in the log (the ids in a forged token mean nothing).
            self.audit.append(clock_s, EVENT_ACCESS, op, e.reason)
            return _notice(MSG_REQUEST, op, e.reason)
        session = HmacKey(tokens.session_key(self._token_key, tok))
        status = self._judge(data, tok, session, late, clock_s)
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
        return Verdict(MSG_REQUEST, op, status, reply, token=tok)

    def _judge(
        self,
        data: bytes,
        tok: tokens.Token,
        session: HmacKey,
        late: bool,
        clock_s: int,
    ) -> str:
        if late:
            return TOO_LATE
        if not equal(data[PROOF_AT:], proof(session, self.lock_id, data[:PROOF_AT])):
            return BAD_PROOF
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
        try:
            tokens.authorize(tok, clock_s, self.epoch, data[1], self.skew_s)
        except ProtocolError as e:
            return e.reason
        return OK

    def _command(self, data: bytes, now_ms: int, clock_s: int) -> Verdict:
        try:
            cmd = decode_command(data)
            late = self._take(cmd.lock_nonce, now_ms, clock_s)
            body = data[:COMMAND_MAC_AT]
            if not equal(cmd.mac, command_mac(self._edge_key, self.lock_id, body)):
                raise ProtocolError(BAD_TAG, "command MAC")
        except ProtocolError as e:
            self.audit.append(clock_s, EVENT_COMMAND, 0, e.reason)
            return _notice(MSG_COMMAND, 0, e.reason)
        status = OK
        if late:
            status = TOO_LATE  # a delayed time set would set the clock wrong
        elif cmd.cmd == CMD_TIME_SET:
            del self._pending[:]  # their clock_s is from the old time
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
        return Verdict(MSG_COMMAND, cmd.cmd, status, reply, value=cmd.value)

    def _ack(self, data: bytes) -> Verdict:
        # Not logged: the edge holds every acked entry, and logging an ack
        # would leave a new unacked entry after every collection.
        try:
            ack = open_ack(data, self._edge_key, self.lock_id)
        except ProtocolError as e:
            return _notice(MSG_AUDIT_ACK, 0, e.reason)
        try:
            self.audit.prune(ack.seq, ack.entry_hash)
            v = _notice(MSG_AUDIT_ACK, 0, OK)
        except ProtocolError as e:
            # Genuine but stale (the chain restarted, or an ack from before a
            # reset): refused, but not a guess, so the limiter does not count it.
            v = _notice(MSG_AUDIT_ACK, 0, e.reason)
            v.counts = False
        v.value = ack.seq
        return v
