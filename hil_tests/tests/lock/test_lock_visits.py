"""The edge's lock manager end to end: an emulated lock on the virtual air, `kommune edge
run` in a child (its own BLE device on the air), a real Mosquitto and a backend that
consumes what the agent publishes.

The story: the agent visits the new lock and sets its clock; a care worker opens the
door twice with a phone; the lock loses its power, comes back with its clock behind and
the manager sets it again; the agent is killed (SIGKILL) between visits while the door
is opened again, and started anew; an operator revokes every token of the lock in the
key store, the next visit carries the new epoch to the lock, and the old token is
refused there. Every audit entry the lock wrote reaches the backend exactly once, in
order."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lock_rig import Lock, identity_file, start_lock

from hil_tests.testing.agent import AgentProcess
from hil_tests.testing.fixtures import MakeBoard
from hil_tests.testing.mosquitto import Mosquitto
from hil_tests.testing.mqtt_backend import Backend
from kommune.edge.keystore import KeyStore
from kommune.edge.lock.errors import Refused
from kommune.edge.lock.tokenfile import TokenFile
from kommune.edge.lock.unlock import unlock
from kommune.hil.radio import Air
from kommune.protocols.audit import EVENT_ACCESS, EVENT_BOOT, EVENT_COMMAND
from kommune.protocols.lock_wire import CMD_EPOCH_SET, CMD_TIME_SET, RIGHT_UNLOCK

pytestmark = pytest.mark.micropython

LOCK_ID = 1017
AGENT_ID = "care-edge"
STREAM = f"lock-{LOCK_ID}/audit"


class Agent(AgentProcess):
    """The agent with the rig's BLE transport; its visits, as its log reports them."""

    def __init__(self, site: Path, transport: str) -> None:
        super().__init__(site, env={"KOMMUNE_BLE_TRANSPORT": transport})

    def visits(self) -> list[dict[str, Any]]:
        return [r["fields"] for r in self.records() if _is_visit(r)]

    def wait_visit(
        self, match: Callable[[dict[str, Any]], bool] = lambda _: True, timeout_s: float = 20.0
    ) -> dict[str, Any]:
        """The fields of the first good visit from now on that `match`es."""
        before = len(self.visits())
        count = 0

        def later_and_matching(record: dict[str, Any]) -> bool:
            nonlocal count
            if not _is_visit(record):
                return False
            count += 1
            return count > before and match(record["fields"])

        fields: dict[str, Any] = self.wait_record(later_and_matching, timeout_s)["fields"]
        return fields

    def kill(self) -> None:
        self.close()


def _is_visit(record: dict[str, Any]) -> bool:
    return str(record.get("message", "")).startswith(f"lock {LOCK_ID} visited")


def _site(folder: Path, lock: Lock, keystore: Path, broker_port: int) -> Path:
    path = folder / "site.toml"
    path.write_text(
        f'[agent]\nid = "{AGENT_ID}"\nsite = "care"\n\n'
        f'[broker]\nhost = "127.0.0.1"\ntls = false\nport = {broker_port}\n\n'
        '[outbox]\ndir = "state"\n\n[health]\nbind = "127.0.0.1:0"\n\n'
        "[uplink.audit]\nbatch_age_s = 0.1\n\n"
        f'[[locks]]\nid = {LOCK_ID}\nble = "{lock.address}"\n\n'
        f'[lock_manager]\nkeystore = "{keystore}"\nvisit_interval_s = 2\nmax_clock_drift_s = 3\n'
    )
    return path


def _entries(backend: Backend) -> list[dict[str, Any]]:
    """The lock's audit entries as the backend keeps them (each key once), in order."""
    records = [r for k, r in backend.unique().items() if k[1] == STREAM]
    records.sort(key=lambda r: r.seq)
    return [json.loads(str(r.value)) for r in records]


def _has(backend: Backend, **want: int) -> bool:
    return any(all(e[k] == v for k, v in want.items()) for e in _entries(backend))


async def _open(lock: Lock, keystore: Path, holder_id: int) -> TokenFile:
    """A care worker's phone opens the door with a fresh token (the office issued it)."""
    with KeyStore.open(keystore) as store:
        now = int(time.time())
        issued = store.authority().issue(
            holder_id=holder_id,
            lock_id=LOCK_ID,
            not_before_s=now - 60,
            not_after_s=now + 3600,
            rights=RIGHT_UNLOCK,
        )
        store.record_issued(issued)
    token = TokenFile.from_issued(issued)
    result = await unlock(token, transport=lock.phone)
    assert result.opened
    return token


async def test_audit_reaches_the_backend_once_in_order_across_power_cuts_and_restarts(
    air: Air, make_board: MakeBoard, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    keystore = tmp_path / "keystore"
    with KeyStore.open(keystore) as store:
        lock_keys = store.lock_keys(LOCK_ID)  # the site key is made here, on first use
    identity = identity_file(LOCK_ID, lock_keys)
    lock = await start_lock(air, make_board, extra_files={"/lock/identity.json": identity})
    lock.lock_keys = lock_keys  # provisioned from our key store, not the rig's own
    edge = await air.add_device("edge")
    await air.set_link("edge", lock.board.name, supervision_timeout_ms=300)
    site = _site(tmp_path, lock, keystore, mosquitto.port)

    async with Backend("127.0.0.1", mosquitto.port) as backend:
        agent = Agent(site, edge.transport)
        try:
            # The first visit sets the clock; its entries (boot, time set, the read) go north.
            first = await asyncio.to_thread(agent.wait_visit, lambda v: v["time_set"], 30.0)
            print("\nfirst visit:", first["timings_ms"], "entries", first["entries"])
            async with asyncio.timeout(20):
                await backend.wait_until(lambda b: _has(b, event=EVENT_COMMAND, op=CMD_TIME_SET))
            assert not lock.flash_state().needs_time

            # Two openings by phone; the next visits carry them north.
            old = await _open(lock, keystore, 4242)
            second = await _open(lock, keystore, 4243)
            async with asyncio.timeout(20):
                await backend.wait_until(lambda b: _has(b, token_id=second.token_id, status="ok"))

            # A power cut right after a visit: the lock boots with its clock behind its
            # floor; the manager sets it again, and what the lock logged meanwhile arrives.
            await asyncio.to_thread(agent.wait_visit)
            lock.board.power_cut(0.05)
            again = await asyncio.to_thread(agent.wait_visit, lambda v: v["time_set"], 30.0)
            assert again["entries"] >= 2  # the boot entry and the time set, at least
            assert not lock.flash_state().needs_time

            # SIGKILL between visits; the door opens while the agent is away.
            await asyncio.to_thread(agent.wait_visit)
            agent.kill()
            away = await _open(lock, keystore, 4244)
            agent = Agent(site, edge.transport)
            async with asyncio.timeout(30):
                await backend.wait_until(lambda b: _has(b, token_id=away.token_id, status="ok"))

            # The operator revokes every token of the lock; the next visit raises the
            # lock's epoch, and the old token is refused at the door.
            with KeyStore.open(keystore) as store:
                epoch = store.revoke_all(LOCK_ID)
            raised = await asyncio.to_thread(
                agent.wait_visit, lambda v: v["epoch_set"] == epoch, 30.0
            )
            print("visit with an epoch set:", raised["timings_ms"])
            assert lock.flash_state().epoch == epoch
            with pytest.raises(Refused, match="revoked"):
                await unlock(old, transport=lock.phone)
            await asyncio.to_thread(agent.wait_visit)  # that refusal, collected
            async with asyncio.timeout(20):
                await backend.wait_until(
                    lambda b: (
                        _has(b, event=EVENT_COMMAND, op=CMD_EPOCH_SET, arg=epoch)
                        and _has(b, token_id=old.token_id, status="revoked")
                    )
                )
        finally:
            agent.kill()
        # Every entry once, in the lock's order, nothing missing in between.
        entries = _entries(backend)
        assert not backend.duplicates()
        assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
        boots = [e for e in entries if e["event"] == EVENT_BOOT]
        assert len(boots) == 2  # the first boot and the one after the power cut
        openings = [e["token_id"] for e in entries if e["event"] == EVENT_ACCESS and e["op"] == 1]
        assert openings == [old.token_id, second.token_id, away.token_id, old.token_id]
        # The lock holds nothing the backend has not got (but a last read's own entry).
        state = lock.flash_state()
        assert state.next_seq - 1 - entries[-1]["seq"] <= 2
        print(f"{len(entries)} entries; the last agent's visits (entries, ms connect/total):")
        for v in agent.visits():
            print(" ", v["entries"], v["timings_ms"].get("connect_ms"), v["timings_ms"]["total_ms"])
