"""A door lock end to end, as a person types it: `kommune emulate lock`, `kommune provision
lock` over its console, `kommune provision time` over BLE, `kommune token issue`, and
`kommune unlock` -- the bolt opens; then `kommune token revoke --all` and the old token
is refused by the lock, and tokens outside their window never reach the radio."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from hil_tests.testing.processes import descendants, running
from kommune.hil.children import spawn_ready, stop

pytestmark = pytest.mark.micropython

KOMMUNE = str(Path(sys.executable).with_name("kommune"))


class Person:
    """A shell: the key store and lock cache in a temporary home, typed commands."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {
            **os.environ,
            "KOMMUNE_KEYSTORE": str(home / "keystore"),
            "KOMMUNE_LOCK_CACHE": str(home / "locks.json"),
        }
        self.env.pop("KOMMUNE_BLE_TRANSPORT", None)

    async def types(self, *args: str, **env: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            KOMMUNE,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.home,
            env={**self.env, **env},
        )
        try:
            async with asyncio.timeout(60):
                out, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()


async def _bolt_event(stdout: asyncio.StreamReader, state: str) -> dict[str, Any]:
    """The emulator's next report that the bolt reached `state`."""
    async with asyncio.timeout(10):
        while True:
            line = await stdout.readline()
            assert line, "kommune emulate ended"
            event = json.loads(line)
            if event.get("event") == "bolt" and event.get("state") == state:
                return event


async def test_a_care_worker_unlocks_an_emulated_lock_and_an_operator_revokes(
    tmp_path: Path,
) -> None:
    me = Person(tmp_path)
    emulator, ready = await spawn_ready(
        [KOMMUNE, "emulate", "lock", "--json"],
        what="kommune emulate lock",
        stderr=asyncio.subprocess.PIPE,
        env=me.env,
        timeout_s=60.0,
    )
    vm_pids: list[int] = []
    try:
        assert emulator.stdout is not None
        vm_pids = descendants(emulator.pid)
        assert ready["board"] == "esp32-lock"
        console, radio = ready["console"], ready["radio"]
        ble = {"KOMMUNE_BLE_TRANSPORT": radio["host"]}

        # The technician provisions the lock over its console, and sets its clock.
        code, out, err = await me.types(
            "provision", "lock", "--port", console, "--lock-id", "1017", "--json"
        )
        assert code == 0, err
        assert json.loads(out)["lock_id"] == 1017 and json.loads(out)["reset"] is True
        assert (tmp_path / "keystore").stat().st_mode & 0o777 == 0o700
        code, _, err = await me.types("provision", "lock", "--port", console, "--lock-id", "7")
        assert code == 2 and "provisioned already (lock id 1017)" in err
        assert err.count("\n") == 1
        code, out, err = await me.types("provision", "time", "--lock", "1017", "--json", **ble)
        assert code == 0, err

        # The office issues a visit token; the care worker opens the door with it.
        code, out, err = await me.types(
            "token", "issue", "--lock", "1017", "--holder", "4242",
            "--from", "now", "--until", "+45m", "--out", "visit.json",
        )  # fmt: skip
        assert code == 0, err
        code, out, err = await me.types("unlock", "1017", "--token", "visit.json", "--json", **ble)
        assert code == 0, err
        opened = json.loads(out)
        assert opened["opened"] is True and opened["address"] == radio["address"]
        print("\nunlock timings (ms, first run):", opened["timings_ms"])
        await _bolt_event(emulator.stdout, "unlocked")
        # Again, by a person who reads: the cached handles spare the discovery.
        code, out, err = await me.types("unlock", "1017", "--token", "visit.json", **ble)
        assert code == 0, err
        assert out.startswith("lock 1017 opened: scan ") and "handshake" in out
        print("unlock (second run):", out.strip())

        # The operator revokes every token of the lock; the next token carries the new
        # epoch to the lock (no edge yet), after which the old one is refused there.
        code, out, err = await me.types("token", "revoke", "--lock", "1017", "--all")
        assert code == 0 and "epoch now 1" in out, err
        code, _, err = await me.types(
            "token", "issue", "--lock", "1017", "--holder", "4243",
            "--from", "now", "--until", "+45m", "--out", "new.json",
        )  # fmt: skip
        assert code == 0, err
        code, out, err = await me.types("unlock", "1017", "--token", "new.json", **ble)
        assert code == 0, err
        code, out, err = await me.types("unlock", "1017", "--token", "visit.json", **ble)
        assert code == 1, (out, err)
        assert err.startswith("kommune unlock: error: refused by lock 1017: revoked")
        assert err.count("\n") == 1

        # Outside their window, tokens are refused before any radio.
        for name, window, message in (
            ("old.json", ("--from=-2h", "--until=-1h"), "token expired at "),
            ("early.json", ("--from=+1h", "--until=+2h"), "token not valid until "),
        ):
            code, _, err = await me.types(
                "token", "issue", "--lock", "1017", "--holder", "4242", *window, "--out", name
            )
            assert code == 0, err
            code, out, err = await me.types("unlock", "1017", "--token", name, **ble)
            assert code == 3, err
            assert err.startswith(f"kommune unlock: error: {message}") and err.count("\n") == 1

        # The lock moves to another door: new identity, new keys, a new audit chain.
        code, out, err = await me.types(
            "provision", "lock", "--port", console, "--lock-id", "1018", "--force", "--json"
        )
        assert code == 0, err
        moved = json.loads(out)
        assert moved["replaced"] is True and moved["previous_lock_id"] == 1017
        assert moved["removed"] == ["/lock/state.bin", "/lock/audit.bin"]
        code, out, err = await me.types("unlock", "1017", "--token", "new.json", "--timeout", "2",
                                        **ble)  # fmt: skip
        assert code == 4 and "lock 1017 not in range" in err, (out, err)
    finally:
        emulator.send_signal(signal.SIGINT)
        await stop(emulator, grace_s=20.0)
    assert emulator.returncode == 0
    assert not [pid for pid in vm_pids if running(pid)], "VMs outlived kommune emulate"


async def test_emulate_lock_tells_a_person_what_to_type_next(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        KOMMUNE,
        "emulate",
        "lock",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=Person(tmp_path).env,
    )
    assert proc.stdout is not None
    try:
        lines: list[str] = []
        async with asyncio.timeout(60):
            while not lines or lines[-1] != "Ctrl-C stops the board.":
                line = await proc.stdout.readline()
                assert line, "kommune emulate lock ended early"
                lines.append(line.decode().rstrip())
    finally:
        proc.send_signal(signal.SIGINT)
        await stop(proc, grace_s=20.0)
    text = "\n".join(lines)
    assert text.startswith("emulated esp32-lock node lock: Door lock")
    console = next(ln.split()[1] for ln in lines if ln.strip().startswith("console"))
    host = next(ln.split()[1] for ln in lines if ln.strip().startswith("host"))
    assert f"kommune provision lock --port {console} --lock-id 1017" in text
    assert f"KOMMUNE_BLE_TRANSPORT={host} kommune provision time --lock 1017" in text
    assert proc.returncode == 0
