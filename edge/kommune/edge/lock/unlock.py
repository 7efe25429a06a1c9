"""Open a lock with a token, as a staff phone does: the API a phone app embeds, and what
`kommune unlock` runs.

    token = tokenfile.read(Path("visit.json"))
    result = await unlock(token)            # KOMMUNE_BLE_TRANSPORT, or bleak's own backend
    result.opened, result.timings           # {"scan_ms": .., "connect_ms": .., ...}

Before any radio the token's window is checked against this machine's clock
(`NotValidNow`). Then: find the lock by its advertised id (or the address given),
connect, ask for a challenge, send the REQUEST (`protocols.lock_client.HolderSession`),
and accept only the lock's authenticated RESULT. Every wait is raced against the link
dropping, so a lock that loses power ends the attempt at once.

Retries never open twice and never reuse a proof: an attempt is retried only if it
failed before its REQUEST went out, and each attempt asks for its own challenge and
draws its own nonce. A REQUEST that went out without an answer is `OutcomeUnknown`,
not retried (the door may have opened).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kommune.edge.lock.errors import LockError, NotReached, NotValidNow, OutcomeUnknown, Refused
from kommune.edge.lock.finder import LockCache
from kommune.edge.lock.session import DEFAULT_REPLY_TIMEOUT_S, LinkLost, open_link
from kommune.edge.lock.times import format_time
from kommune.edge.lock.tokenfile import TokenFile
from kommune.protocols.errors import ProtocolError
from kommune.protocols.lock_client import HolderSession
from kommune.protocols.lock_wire import RIGHT_UNLOCK
from kommune.protocols.token import RIGHT_NAMES

#: What a refusal's reason means for the person at the door.
HINTS = {
    "expired": "the token's window is over (by the lock's clock)",
    "not_yet_valid": "the token's window has not begun (by the lock's clock)",
    "revoked": "the token was revoked",
    "clock_stale": "the lock's clock is not set: the edge (or 'kommune provision time') sets it",
    "no_right": "the token does not grant this",
    "bad_tag": "the token is not for this lock or site",
    "bad_proof": "the session key does not match the token",
    "too_late": "the answer came too late (a slow or relayed link): try again",
    "bad_value": "the lock could not carry it out (a bolt fault?) or the token is malformed",
}


@dataclass
class UnlockResult:
    lock_id: int
    opened: bool
    op: str
    address: str
    attempts: int
    timings: dict[str, float | None] = field(default_factory=dict)
    rssi: int | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "lock_id": self.lock_id,
            "opened": self.opened,
            "op": self.op,
            "status": "ok",
            "address": self.address,
            "attempts": self.attempts,
            "rssi": self.rssi,
            "timings_ms": self.timings,
        }


def check_window(token: TokenFile, now_s: float) -> None:
    """NotValidNow unless now lies in the token's window (this machine's clock)."""
    if now_s < token.not_before_s:
        raise NotValidNow(f"token not valid until {format_time(token.not_before_s)}")
    if now_s > token.not_after_s:
        raise NotValidNow(f"token expired at {format_time(token.not_after_s)}")


def op_name(op: int) -> str:
    return next((name for name, bit in RIGHT_NAMES if bit == op), hex(op))


async def unlock(
    token: TokenFile,
    *,
    op: int = RIGHT_UNLOCK,
    address: str | None = None,
    transport: str | None = None,
    timeout_s: float = 10.0,
    reply_timeout_s: float = DEFAULT_REPLY_TIMEOUT_S,
    attempts: int = 2,
    cache: LockCache | None = None,
    clock: Callable[[], float] = time.time,
    new_nonce: Callable[[], bytes] = lambda: os.urandom(16),
) -> UnlockResult:
    """Open (or, with op=RIGHT_LOCK, lock) `token`'s lock; raises a `LockError`."""
    check_window(token, clock())
    if not token.rights & op:
        raise NotValidNow(f"the token does not grant '{op_name(op)}'")
    address = address or token.lock_address
    started = time.monotonic()
    last: LockError | None = None
    for attempt in range(1, attempts + 1):
        timings: dict[str, float | None] = {}
        try:
            result = await _attempt(
                token,
                op,
                address=address,
                transport=transport,
                timeout_s=timeout_s,
                reply_timeout_s=reply_timeout_s,
                cache=cache,
                timings=timings,
                new_nonce=new_nonce,
            )
        except NotReached as e:
            last = e  # nothing went out: a new attempt cannot open twice
            continue
        result.attempts = attempt
        result.timings["total_ms"] = round((time.monotonic() - started) * 1000, 1)
        return result
    assert last is not None
    raise last


async def _attempt(
    token: TokenFile,
    op: int,
    *,
    address: str | None,
    transport: str | None,
    timeout_s: float,
    reply_timeout_s: float,
    cache: LockCache | None,
    timings: dict[str, float | None],
    new_nonce: Callable[[], bytes],
) -> UnlockResult:
    sent = False
    try:
        async with open_link(
            token.lock_id,
            address=address,
            transport=transport,
            timeout_s=timeout_s,
            reply_timeout_s=reply_timeout_s,
            cache=cache,
            timings=timings,
        ) as link:
            handshake = time.monotonic()
            challenge = await link.challenge()
            holder = HolderSession(token.token, token.session_key, token.lock_id)
            try:
                request = holder.request(challenge, op, new_nonce())
            except ProtocolError as e:
                raise NotReached(f"lock {token.lock_id}: its challenge is unusable: {e}") from e
            sent = True
            reply = await link.exchange(request)
            try:
                answer = holder.result(reply)
            except ProtocolError as e:
                raise OutcomeUnknown(
                    f"lock {token.lock_id}: its answer failed verification ({e.reason}): "
                    "not from the lock; the door's state is unknown"
                ) from e
            timings["handshake_ms"] = round((time.monotonic() - handshake) * 1000, 1)
            rssi = link.advert.rssi if link.advert else None
            found_at = link.address
    except LinkLost as e:
        if sent:
            raise OutcomeUnknown(
                f"{e}; the request had gone out: the door may have opened (not retried)"
            ) from e
        raise NotReached(str(e)) from e
    if not answer.ok:
        hint = HINTS.get(answer.status)
        how = "" if answer.authenticated else " (unauthenticated notice)"
        raise Refused(
            f"refused by lock {token.lock_id}: {answer.status}{how}"
            + (f" — {hint}" if hint else ""),
            answer.status,
            answer.authenticated,
        )
    return UnlockResult(
        lock_id=token.lock_id,
        opened=True,
        op=op_name(op),
        address=found_at,
        attempts=1,
        timings=timings,
        rssi=rssi,
    )
