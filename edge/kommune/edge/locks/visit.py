"""One visit to one lock, over one BLE connection: the lock's side of the protocol as the
edge drives it (protocols/LOCK.md). Runs in the edge agent (CPython), inside the lock
manager part; knows nothing of the key store or the outbox (`Plan` and `Ledger` bring
them), so a test can drive it against the protocol's own `LockVerifier`.

    report = await visit(link, plan, ledger, max_drift_s=5)

In order, on the one connection:

1. read the status characteristic (battery, `time=ok|needed`, the lock's next seq);
2. ask for a CHALLENGE: it carries the lock's clock and epoch;
3. set the clock (COMMAND time set) if the lock needs the time or drifted past the bound;
4. raise the epoch (COMMAND epoch set) if the key store's is newer;
5. push the deny-list (sealed DENY_LIST) if the lock may not have the key store's;
6. read audit batches (a REQUEST with the edge's own read-audit token): each batch is
   checked (`Ledger.accept`), committed durably (`Ledger.commit`: the outbox, then the
   audit anchor) and only then acknowledged (AUDIT_ACK), until the log is drained.

After every answer the lock sends the connection's next CHALLENGE unasked; it is taken
at once (an ask would replace it, and a late copy of the old one would then be answered
with a `replay`). Any refusal or unusable answer ends the visit (`VisitError`); what was
committed and acked before stays so.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from kommune.edge.keys import LockKeys
from kommune.edge.northbound import Event, Priority
from kommune.edge.token_authority import IssuedToken
from kommune.protocols.audit import EVENT_ACCESS, AuditEntry
from kommune.protocols.audit_check import Accepted, AuditChecker
from kommune.protocols.errors import ProtocolError
from kommune.protocols.handshake import decode_challenge
from kommune.protocols.lock_client import EdgeSession, HolderSession, Reply, notice
from kommune.protocols.lock_wire import CMD_EPOCH_SET, CMD_TIME_SET, OK, RIGHT_READ_AUDIT

#: The holder id of the edge's own read-audit tokens (openings by people never use it).
EDGE_HOLDER_ID = 0xFFFF_FFFF
#: The edge's read-audit token is valid this long around the visit (s).
READ_TOKEN_WINDOW_S = (-60, 600)
#: A challenge older than this is not answered (the lock's relay bound is 500 ms): ask anew.
FRESH_CHALLENGE_S = 0.3
#: Batches read in one visit at most (a few entries each): a lock that logs faster than
#: it is read cannot hold the connection for ever.
MAX_BATCHES_PER_VISIT = 64
#: A time set may correct any error (a lock that lost its RTC reads 1970 or 2000).
ANY_SKEW_S = 2**32


class VisitError(Exception):
    """The visit ended early; the message is one line (what was done stays done)."""


class Link(Protocol):
    """One connection to the lock (`kommune.edge.lock.session.LockLink`)."""

    async def challenge(self) -> bytes: ...

    async def exchange(self, message: bytes) -> bytes: ...

    async def receive(self, what: str = ...) -> bytes: ...

    async def read_status(self) -> str: ...


class Ledger(Protocol):
    """The durable side of the audit trail for one lock."""

    checker: AuditChecker

    async def accept(self, batch: bytes) -> Accepted:
        """`checker.accept_batch(batch)` (it may look entries up in the durable store)."""
        ...

    async def commit(self, accepted: Accepted) -> None:
        """Store the entries (the outbox), then the anchor (the audit store), then
        `checker.commit`: returns once all of it is durable."""
        ...


@dataclass(frozen=True)
class DenyList:
    epoch: int
    version: int
    token_ids: tuple[int, ...]
    holder_ids: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    """What the key store says about one lock, read just before the visit."""

    lock_keys: LockKeys
    #: The authority's epoch for the lock.
    epoch: int
    #: Its deny-list, or None when it never had one.
    deny: DenyList | None
    #: The edge's own token for this visit: read-audit, holder EDGE_HOLDER_ID.
    read_token: IssuedToken


@dataclass
class VisitReport:
    lock_id: int
    status: dict[str, str] = field(default_factory=dict)
    lock_clock_s: int | None = None
    #: Lock clock minus ours when the visit began (s; + is ahead).
    drift_s: int | None = None
    time_set: bool = False
    epoch_before: int | None = None
    epoch_set: int | None = None
    #: (epoch, version) of the deny-list the lock took (or already had), if pushed.
    deny_pushed: tuple[int, int] | None = None
    #: Why the key store's deny-list could not be sent (more ids than a lock keeps).
    deny_problem: str | None = None
    batches: int = 0
    entries: list[AuditEntry] = field(default_factory=list)
    lost: list[tuple[int, int]] = field(default_factory=list)
    #: The lock's audit chain refused: its reason and detail (nothing acked after it).
    audit_problem: tuple[str, str] | None = None
    acked_seq: int | None = None
    #: Entries the lock still holds unacked after the visit (its next seq minus ours).
    backlog: int | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def battery(self) -> tuple[int, int] | None:
        """(mV, %) from the status, if it says."""
        text = self.status.get("battery", "")
        try:
            mv, percent = text.split(",")
            return int(mv.removesuffix("mV")), int(percent.removesuffix("%"))
        except ValueError:
            return None


def parse_status(text: str) -> dict[str, str]:
    """The status characteristic's `key=value` words (firmware/lock/README.md)."""
    out: dict[str, str] = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if sep:
            out[key] = value
    return out


def audit_event(lock_id: int, entry: AuditEntry) -> Event:
    """An audit entry as the outbox takes it: stream `lock-<id>/audit`, source_seq the
    entry's seq (a re-read entry is the same event: recognised as a duplicate), the
    record "entry" with the decoded fields and the 55 bytes (so a backend checks the
    chain and, with the audit key, the MAC)."""
    value = {
        "seq": entry.seq,
        "time_s": entry.time_s,
        "event": entry.event,
        "op": entry.op,
        "status": entry.status,
        "holder_id": entry.holder_id,
        "token_id": entry.token_id,
        "arg": entry.arg,
        "entry": entry.encode().hex(),
    }
    return Event(
        f"lock-{lock_id}/audit",
        Priority.AUDIT,
        entry.seq,
        entry.time_s * 1000,
        "entry",
        json.dumps(value, separators=(",", ":"), sort_keys=True),
    )


class _Visit:
    def __init__(
        self,
        link: Link,
        plan: Plan,
        ledger: Ledger,
        *,
        max_drift_s: int,
        deny_known: tuple[int, int] | None,
        clock: Callable[[], float],
    ) -> None:
        self.link = link
        self.plan = plan
        self.ledger = ledger
        self.max_drift_s = max_drift_s
        self.deny_known = deny_known
        self.clock = clock
        self.lock_id = plan.lock_keys.lock_id
        self.edge = EdgeSession(plan.lock_keys.edge_key, self.lock_id)
        self.report = VisitReport(self.lock_id)
        self._challenge = b""
        self._challenge_at = 0.0

    def _lap(self, name: str, since: float) -> None:
        self.report.timings_ms[name] = round((time.monotonic() - since) * 1000, 1)

    async def challenge(self) -> bytes:
        """The connection's current CHALLENGE, asked for anew if it is too old."""
        if not self._challenge or time.monotonic() - self._challenge_at > FRESH_CHALLENGE_S:
            self._challenge_at = time.monotonic()
            self._challenge = await self.link.challenge()
        ch, self._challenge = self._challenge, b""
        return ch

    async def next_challenge(self) -> None:
        """Take the CHALLENGE the lock sends unasked after an answer it kept the link for."""
        self._challenge_at = time.monotonic()
        self._challenge = await self.link.receive("waiting for the next challenge")

    async def command(self, cmd: int, value: int, what: str, *, max_skew_s: int) -> None:
        ch = await self.challenge()
        try:
            message = self.edge.command(
                ch, cmd, value, os.urandom(16), now_s=int(self.clock()), max_skew_s=max_skew_s
            )
        except ProtocolError as e:
            raise VisitError(f"lock {self.lock_id}: unusable challenge for the {what}: {e}") from e
        reply = await self.link.exchange(message)
        try:
            answer = self.edge.result(reply)
        except ProtocolError as e:
            raise VisitError(f"lock {self.lock_id}: the {what}'s answer: {e}") from e
        self._check(answer, what)
        await self.next_challenge()

    def _check(self, answer: Reply, what: str) -> None:
        if not answer.ok:
            how = "" if answer.authenticated else " (unauthenticated notice: wrong keys?)"
            raise VisitError(f"lock {self.lock_id} refused the {what}: {answer.status}{how}")

    async def run(self) -> VisitReport:
        report = self.report
        began = time.monotonic()
        report.status = parse_status(await self.link.read_status())
        self._lap("status_ms", began)
        raw = await self.challenge()
        try:
            ch = decode_challenge(raw)
        except ProtocolError as e:
            raise VisitError(f"lock {self.lock_id}: no usable challenge: {e}") from e
        self._challenge = raw  # unanswered: the first request answers it (if still fresh)
        now_s = int(self.clock())
        report.lock_clock_s, report.drift_s = ch.clock_s, ch.clock_s - now_s
        report.epoch_before = ch.epoch
        needs_time = report.status.get("time") == "needed"
        step = time.monotonic()
        if needs_time or abs(report.drift_s) > self.max_drift_s:
            await self.command(CMD_TIME_SET, int(self.clock()), "time set", max_skew_s=ANY_SKEW_S)
            report.time_set = True
            self._lap("time_set_ms", step)
        if self.plan.epoch > ch.epoch:
            step = time.monotonic()
            await self.command(CMD_EPOCH_SET, self.plan.epoch, "epoch set", max_skew_s=ANY_SKEW_S)
            report.epoch_set = self.plan.epoch
            self._lap("epoch_set_ms", step)
        deny = self.plan.deny
        if deny is not None and (deny.epoch, deny.version) != self.deny_known:
            step = time.monotonic()
            await self.push_deny(deny)
            self._lap("deny_ms", step)
        step = time.monotonic()
        await self.collect()
        self._lap("audit_ms", step)
        lock_next = report.status.get("seq", "")
        if lock_next.isdigit():
            # The status was read before our own read requests (one entry each).
            ours = sum(1 for e in report.entries if self._is_ours(e))
            report.backlog = max(0, int(lock_next) + ours - self.ledger.checker.next_seq)
        self._lap("visit_ms", began)
        return report

    async def push_deny(self, deny: DenyList) -> None:
        try:
            message = self.edge.deny_list(
                deny.epoch, deny.version, list(deny.token_ids), list(deny.holder_ids)
            )
        except ProtocolError as e:  # too many ids: revoke_all starts a new, short list
            self.report.deny_problem = str(e)
            return  # the audit is still collected
        self._challenge = b""  # the lock sends a new one after its answer
        answer = notice(await self.link.exchange(message))
        if answer.status == OK:
            self.report.deny_pushed = (deny.epoch, deny.version)
        elif answer.status != "bad_value":  # bad_value: the lock has a newer list
            raise VisitError(f"lock {self.lock_id} refused the deny-list: {answer.status}")
        await self.next_challenge()

    def _is_ours(self, entry: AuditEntry) -> bool:
        token = self.plan.read_token
        return (
            entry.event == EVENT_ACCESS
            and entry.op == RIGHT_READ_AUDIT
            and entry.token_id == token.token_id
            and entry.holder_id == EDGE_HOLDER_ID
        )

    async def collect(self) -> None:
        """Read, check, commit, then ack, until the log holds nothing older than our
        last read request (each read request logs an entry itself)."""
        report, token = self.report, self.plan.read_token
        ours = 0
        for reads in range(1, MAX_BATCHES_PER_VISIT + 1):
            holder = HolderSession(token.token, token.session_key, self.lock_id)
            ch = await self.challenge()
            try:
                request = holder.request(ch, RIGHT_READ_AUDIT, os.urandom(16))
            except ProtocolError as e:
                raise VisitError(f"lock {self.lock_id}: unusable challenge: {e}") from e
            reply = await self.link.exchange(request)
            try:
                answer = holder.result(reply)
            except ProtocolError as e:
                raise VisitError(f"lock {self.lock_id}: the read-audit answer: {e}") from e
            self._check(answer, "audit read")
            batch = await self.link.receive("waiting for the audit batch")
            await self.next_challenge()
            report.batches += 1
            try:
                accepted = await self.ledger.accept(batch)
            except ProtocolError as e:
                report.audit_problem = (e.reason, str(e))
                return  # nothing acked: the lock keeps everything until this is resolved
            if accepted.entries or accepted.lost or accepted.restarted:
                await self.ledger.commit(accepted)  # durable first ...
            report.entries += accepted.entries
            report.lost += accepted.lost
            ours += sum(1 for e in accepted.entries if self._is_ours(e))
            if self.ledger.checker.next_seq > 1:
                await self.ack()  # ... then the lock may prune
            if ours >= reads or len(batch) <= 18:
                return  # our newest read is in: the log is drained (or sends nothing)

    async def ack(self) -> None:
        checker = self.ledger.checker
        self._challenge = b""  # the lock sends a new one after its answer
        answer = notice(await self.link.exchange(checker.ack(self.plan.lock_keys.edge_key)))
        if answer.status != OK:
            raise VisitError(f"lock {self.lock_id} refused the audit ack: {answer.status}")
        self.report.acked_seq = checker.next_seq - 1
        await self.next_challenge()


async def visit(
    link: Link,
    plan: Plan,
    ledger: Ledger,
    *,
    max_drift_s: int,
    deny_known: tuple[int, int] | None = None,
    clock: Callable[[], float] = time.time,
) -> VisitReport:
    """Visit the lock behind `link` (see the module docstring). `deny_known`: the
    (epoch, version) of the deny-list the lock is known to hold (not pushed again)."""
    return await _Visit(
        link, plan, ledger, max_drift_s=max_drift_s, deny_known=deny_known, clock=clock
    ).run()
