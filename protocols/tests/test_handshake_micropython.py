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
