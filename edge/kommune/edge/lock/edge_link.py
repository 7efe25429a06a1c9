"""The edge's side of a lock visit, as far as it exists before the lock manager: the
authenticated time set (`protocols.lock_client.EdgeSession`, the lock's edge key).

A new lock serves nobody until its clock is set (LOCK.md: clock floor, `needs_time`).
`kommune provision time` runs this; the edge's lock manager will on each visit.
"""

from __future__ import annotations

import os
import time
from typing import Any

from kommune.edge.keys import LockKeys
from kommune.edge.lock.errors import NotReached, OutcomeUnknown, Refused
from kommune.edge.lock.finder import LockCache
from kommune.edge.lock.session import LinkLost, open_link
from kommune.protocols.errors import ProtocolError
from kommune.protocols.handshake import decode_challenge
from kommune.protocols.lock_client import EdgeSession
from kommune.protocols.lock_wire import CMD_TIME_SET

#: A technician's time set may correct any error: a lock that lost its RTC reads 2000.
ANY_SKEW_S = 2**32


async def set_time(
    lock_keys: LockKeys,
    *,
    address: str | None = None,
    transport: str | None = None,
    timeout_s: float = 10.0,
    cache: LockCache | None = None,
) -> dict[str, Any]:
    """Set the lock's clock to this machine's; {"time_s", "lock_clock_s", "timings_ms"}."""
    timings: dict[str, float | None] = {}
    sent = False
    try:
        async with open_link(
            lock_keys.lock_id,
            address=address,
            transport=transport,
            timeout_s=timeout_s,
            cache=cache,
            timings=timings,
        ) as link:
            challenge = await link.challenge()
            edge = EdgeSession(lock_keys.edge_key, lock_keys.lock_id)
            now_s = int(time.time())
            try:
                lock_clock_s = decode_challenge(challenge).clock_s
                command = edge.command(
                    challenge,
                    CMD_TIME_SET,
                    now_s,
                    os.urandom(16),
                    now_s=now_s,
                    max_skew_s=ANY_SKEW_S,
                )
            except ProtocolError as e:
                raise NotReached(f"lock {lock_keys.lock_id}: unusable challenge: {e}") from e
            sent = True
            reply = await link.exchange(command)
            try:
                answer = edge.result(reply)
            except ProtocolError as e:
                raise OutcomeUnknown(f"lock {lock_keys.lock_id}: answer failed verification") from e
    except LinkLost as e:
        if sent:
            raise OutcomeUnknown(f"{e}; the time set had gone out") from e
        raise NotReached(str(e)) from e
    if not answer.ok:
        how = "" if answer.authenticated else " (unauthenticated notice: wrong keys?)"
        raise Refused(
            f"lock {lock_keys.lock_id} refused the time set: {answer.status}{how}",
            answer.status,
            answer.authenticated,
        )
    return {
        "lock_id": lock_keys.lock_id,
        "time_s": now_s,
        "lock_clock_s": lock_clock_s,
        "timings_ms": timings,
    }
