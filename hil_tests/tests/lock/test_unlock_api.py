"""The phone's unlock API (`kommune.edge.lock.unlock`, what a phone app embeds) against
the lock firmware on an emulated board: it opens, a retry never opens twice, a request
whose answer is lost is not repeated, a lock that loses power ends the wait at once,
and the GATT handles come from the cache file on the next run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from bumble.core import UUID
from lock_rig import Lock, start_lock

from hil_tests.testing.fixtures import MakeBoard
from kommune.edge.ble import forget_cached_services
from kommune.edge.ble.gatt import cached
from kommune.edge.lock import session
from kommune.edge.lock.edge_link import set_time
from kommune.edge.lock.errors import NotValidNow, OutcomeUnknown, Refused
from kommune.edge.lock.finder import HANDSHAKE_UUID, LockCache
from kommune.edge.lock.tokenfile import TokenFile
from kommune.edge.lock.unlock import unlock
from kommune.hil.radio import Air
from kommune.protocols.audit import EVENT_ACCESS
from kommune.protocols.lock_wire import OK

pytestmark = pytest.mark.micropython

ATT_WRITE_REQUEST = 0x12  # the CCCD write (subscription) and the REQUEST
ATT_NOTIFICATION = 0x1B  # CHALLENGE and RESULT


async def _lock_with_time(air: Air, make_board: MakeBoard) -> Lock:
    """A provisioned lock whose clock the edge set (`kommune provision time`'s API)."""
    lock = await start_lock(air, make_board)
    result = await set_time(lock.lock_keys, transport=lock.phone)
    assert abs(result["time_s"] - time.time()) < 5
    return lock


def _openings(lock: Lock) -> list[int]:
    """Token ids of the lock's logged openings (access entries with status ok)."""
    return [
        e.token_id for e in lock.flash_state().entries if e.event == EVENT_ACCESS and e.status == OK
    ]


def _token(lock: Lock, **window: int) -> TokenFile:
    return TokenFile.from_issued(lock.issue(**window))


async def test_opens_and_the_next_run_uses_the_cached_handles(
    air: Air, make_board: MakeBoard, tmp_path: Path
) -> None:
    lock = await _lock_with_time(air, make_board)
    token = _token(lock)
    cache = LockCache(tmp_path / "locks.json")
    result = await unlock(token, transport=lock.phone, cache=cache)
    assert result.opened and result.attempts == 1
    assert lock.bolt_state() == "unlocked"
    assert _openings(lock) == [token.token_id]
    assert set(result.timings) == {
        "scan_ms",
        "connect_ms",
        "discover_ms",
        "handshake_ms",
        "total_ms",
    }
    # Another process (the next `kommune unlock`): nothing in memory, the file has it.
    forget_cached_services(lock.address)
    again = LockCache(tmp_path / "locks.json")
    assert again.address(lock.lock_id) == lock.address
    assert again.preload(lock.lock_id, lock.address)
    database = cached(lock.address)
    assert database is not None
    assert database.handle_of(UUID(HANDSHAKE_UUID)) is not None
    second = await unlock(token, transport=lock.phone, cache=again)
    assert second.opened
    # By address instead of the advertised id (the token file's lock_address, or typed).
    third = await unlock(token, transport=lock.phone, address=lock.address.lower())
    assert third.opened and third.address == lock.address
    assert _openings(lock) == [token.token_id] * 3


async def test_a_retry_after_a_failure_before_the_request_opens_once(
    air: Air, make_board: MakeBoard
) -> None:
    lock = await _lock_with_time(air, make_board)
    token = _token(lock)
    # The first attempt loses its subscription write and the link: nothing was sent.
    await air.arm_cut(f"{lock.board.name}-phone", lock.board.name, att_opcode=ATT_WRITE_REQUEST)
    result = await unlock(token, transport=lock.phone, attempts=2)
    assert result.opened and result.attempts == 2
    assert _openings(lock) == [token.token_id]  # one opening, one proof, one challenge each


async def test_a_lost_answer_is_not_retried_and_the_lock_opened_once(
    air: Air, make_board: MakeBoard, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = await _lock_with_time(air, make_board)
    token = _token(lock)
    exchange = session.LockLink.exchange

    async def cut_the_answer(self: session.LockLink, message: bytes) -> bytes:
        # The REQUEST reaches the lock; its RESULT notification is lost with the link.
        await air.arm_cut(f"{lock.board.name}-phone", lock.board.name, att_opcode=ATT_NOTIFICATION)
        return await exchange(self, message)

    monkeypatch.setattr(session.LockLink, "exchange", cut_the_answer)
    with pytest.raises(OutcomeUnknown, match="the door may have opened"):
        await unlock(token, transport=lock.phone, attempts=3)
    assert _openings(lock) == [token.token_id]  # opened once; no second attempt was made
    assert lock.bolt_state() == "unlocked"


async def test_a_lock_that_loses_power_ends_the_wait_at_once(
    air: Air, make_board: MakeBoard, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = await _lock_with_time(air, make_board)
    token = _token(lock)
    exchange = session.LockLink.exchange

    async def power_cut_first(self: session.LockLink, message: bytes) -> bytes:
        lock.board.power_cut(None)  # the lock dies before the REQUEST reaches it
        return await exchange(self, message)

    monkeypatch.setattr(session.LockLink, "exchange", power_cut_first)
    started = time.monotonic()
    with pytest.raises(OutcomeUnknown, match="link dropped"):
        await unlock(token, transport=lock.phone, reply_timeout_s=30.0)
    # The supervision timeout (300 ms on this link) ended it, not the 30 s reply timeout.
    assert time.monotonic() - started < 5.0
    assert lock.bolt_state() == "locked"


async def test_refusals_and_the_local_window(air: Air, make_board: MakeBoard) -> None:
    lock = await _lock_with_time(air, make_board)
    with pytest.raises(NotValidNow, match="token expired at"):
        await unlock(_token(lock, start_s=-7200, end_s=-3600), transport=lock.phone)
    with pytest.raises(NotValidNow, match="token not valid until"):
        await unlock(_token(lock, start_s=3600, end_s=7200), transport=lock.phone)
    # Valid by the phone's clock, but the lock's clock says otherwise: the lock decides.
    late = _token(lock, start_s=-7200, end_s=-3600)
    with pytest.raises(Refused, match="refused by lock 1017: expired") as refused:
        await unlock(late, transport=lock.phone, clock=lambda: late.not_after_s - 1)
    assert refused.value.authenticated and refused.value.exit_code == 1
    assert _openings(lock) == []
