"""The lock's side of the handshake in the real MicroPython VM, in a 64 KB heap.

The bench suite `kommune bench lock` holds the script; here only correctness
and fitting in the heap are asserted (timings are the bench's business).
"""

from __future__ import annotations

import json

import pytest

from kommune.bench.lock import ROUNDS, measure_in_vm


@pytest.mark.micropython
def test_lock_side_cost_in_a_64k_heap() -> None:
    numbers = measure_in_vm()
    print("\nlock side on MicroPython (unix port, 64 KB heap):", json.dumps(numbers, indent=1))
    assert numbers["ok"] == numbers["rounds"] == ROUNDS + 1
    # Sanity, not a budget: an honest respond() allocates (its reply, the
    # audit entry), and its garbage fits in what the 64 KB heap has left.
    assert 0 < numbers["respond_alloc_bytes"] < numbers["heap_free"]


# A lock with a full audit log (64 entries) in a 64 KB heap asks for a batch
# of 32: the heap has no block that large left, so the batch must shrink to
# what fits (review: batch(32) raised MemoryError).
_FULL_LOG_SCRIPT = """
import gc, json
from kommune.protocols.audit import AuditLog
from kommune.protocols.lock_verifier import LockVerifier
log = AuditLog(bytes(range(64, 96)), 1017, capacity=64)
lock = LockVerifier(1017, bytes(range(32)), bytes(range(32, 64)), 0, log)
for i in range(64):
    log.append(1000 + i, 1, 1, "ok", holder_id=i + 1, token_id=7)
gc.collect()
free = gc.mem_free()
out = {"free": free}
try:
    batch = log.batch(32)
    out["count"] = batch[1]
except MemoryError:
    out["count"] = -1
print(json.dumps(out))
log = lock = None
gc.collect()
print(batch.hex())
"""


@pytest.mark.micropython
def test_a_full_log_still_gives_a_batch_in_a_64k_heap() -> None:
    import tempfile
    from pathlib import Path

    from kommune.bench.lock import compile_lock_modules
    from kommune.hil import vm
    from kommune.protocols import audit, audit_check
    from kommune.protocols.seal import SealKey

    with tempfile.TemporaryDirectory() as tmp:
        compile_lock_modules(Path(tmp))
        proc = vm.run(["-c", _FULL_LOG_SCRIPT], path=[Path(tmp)], heapsize="64K", timeout_s=60)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    lines = proc.stdout.strip().splitlines()
    out = json.loads(lines[-2])
    assert out["count"] >= 1, out  # not a MemoryError, and not empty
    entries = audit_check.open_batch(bytes.fromhex(lines[-1]), SealKey(bytes(range(64, 96))), 1017)
    assert [audit.seq_of(e) for e in entries] == list(range(1, out["count"] + 1))
